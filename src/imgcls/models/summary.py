"""``imgcls models NAME``: a model's layer tree with output shapes, parameters and FLOPs.

What the tutorials do with ``print(net)`` and a loop over ``named_parameters()``, done fully (as
torchinfo's ``summary`` does), but written here so that imgcls needs no extra dependency. Rows are
named by their module path (``model.0``, ``layer1.0.conv1``): the names ``model.freeze=[...]``
patterns and state_dict keys use.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix
products, a multiply-add counted as 2. Normalisation, activations and pooling are not counted
(they are a small share of the arithmetic and limited by memory, not compute).

>>> from imgcls.config import ModelConfig
>>> from imgcls.models import create_model
>>> s = summarize(create_model(ModelConfig(name="lenet"), 10), (1, 3, 32, 32))
>>> s.params, s.row("conv1").output_shape
(62006, [1, 6, 28, 28])
>>> print(format_summary(s, depth=1))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls.errors import ImgclsError, first_line

__all__ = ["LayerRow", "ModelSummary", "format_summary", "summarize"]


@dataclass(frozen=True)
class LayerRow:
    name: str  # module path ("model.0"); "" for the model itself
    type: str  # class name ("Conv2d")
    depth: int  # 0: the model, 1: its children, ...
    # One shape per call: a module used twice (LeNet's pool) has two; () when never called.
    output_shapes: tuple[tuple[int, ...] | None, ...]
    params: int  # the module's parameters and its children's (shared ones counted once)
    trainable: int  # of which requires_grad
    flops: int  # the module and its children, one forward of the summary's input

    @property
    def output_shape(self) -> list[int] | None:
        """The first call's output shape (the first tensor of a tuple output)."""
        first = self.output_shapes[0] if self.output_shapes else None
        return list(first) if first is not None else None


@dataclass(frozen=True)
class ModelSummary:
    model: str  # the model's class name
    input_shape: tuple[int, ...]  # (N, C, H, W) of the forward the numbers are for
    output_shape: tuple[int, ...] | None
    rows: tuple[LayerRow, ...]  # the model first, then every module in registration order
    params: int
    trainable: int
    param_bytes: int
    flops: int  # for the whole input batch

    @property
    def flops_per_image(self) -> int:
        return self.flops // max(self.input_shape[0], 1)

    def row(self, name: str) -> LayerRow:
        """The row of the module at path ``name`` (``""``: the model)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    if isinstance(values, (list, tuple)) or isinstance(out, dict):
        for value in values:
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


def _module_flops(counter: FlopCounterMode, root: str) -> dict[str, int]:
    """FlopCounterMode's per-module totals keyed by module path: it names them
    ``<ModelClass>.<path>`` and the model itself ``<ModelClass>``."""
    out: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root:
            out[""] = sum(ops.values())
        elif key.startswith(root + "."):
            out[key[len(root) + 1:]] = sum(ops.values())
    return out


def _zeros_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros on the model's device, in its floating dtype (float32 for a model without one)."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


def _layer_row(name: str, module: nn.Module, calls: list[tuple[int, ...] | None],
               flops: dict[str, int]) -> LayerRow:
    params = list(module.parameters())
    return LayerRow(
        name=name,
        type=type(module).__name__,
        depth=name.count(".") + 1 if name else 0,
        output_shapes=tuple(calls),
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        flops=flops.get(name, 0),
    )


def summarize(model: nn.Module, input_shape: Sequence[int]) -> ModelSummary:
    """Run one forward of zeros shaped ``input_shape`` (N, C, H, W) in eval mode, no grad, and
    record every module's output shape, parameter count and FLOPs.

    Eval mode because BatchNorm cannot train on one image and dropout should not count; the
    model's own mode is put back afterwards. A forward that fails (an input size the model does
    not take) is an ImgclsError.
    """
    shape = tuple(int(s) for s in input_shape)
    x = _zeros_input(model, shape)
    modules = list(model.named_modules())
    calls: dict[int, list[tuple[int, ...] | None]] = {id(m): [] for _, m in modules}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = _first_tensor(output)
        calls[id(module)].append(tuple(tensor.shape) if tensor is not None else None)

    handles = [m.register_forward_hook(hook) for _, m in modules]
    was_training = model.training
    model.eval()
    root = type(model).__name__
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = model(x)
    except Exception as exc:  # shape mismatches raise RuntimeError, ValueError, AssertionError
        raise ImgclsError(
            f"cannot run {root} on an input of shape {list(shape)}: {first_line(exc)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    flops = _module_flops(counter, root)
    rows = [_layer_row(name, module, calls[id(module)], flops) for name, module in modules]
    out = _first_tensor(output)
    return ModelSummary(
        model=root,
        input_shape=shape,
        output_shape=tuple(out.shape) if out is not None else None,
        rows=tuple(rows),
        params=rows[0].params,
        trainable=rows[0].trainable,
        param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        flops=counter.get_total_flops(),
    )


def _shapes_text(row: LayerRow) -> str:
    if not row.output_shapes:
        return "-"  # not called in this forward (an unused or eval-disabled branch)
    return "; ".join(str(list(s)) if s is not None else "?" for s in row.output_shapes)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


def format_summary(summary: ModelSummary, depth: int = 3) -> str:
    """The layer tree down to ``depth`` (0: the model alone) as a table, then the totals.

    A row's parameters and FLOPs include its children's, so the rows shown always add up to
    the model's whatever the depth.
    """
    shown = [r for r in summary.rows if r.depth <= depth]
    hidden = len(summary.rows) - len(shown)
    cells = [
        ("  " * r.depth + (f"{r.name} ({r.type})" if r.name else r.type), _shapes_text(r),
         f"{r.params:,}", f"{r.flops:,}")
        for r in shown
    ]
    header = ("layer (type)", "output shape", "parameters", "FLOPs")
    widths = [max(len(c[i]) for c in (header, *cells)) for i in range(4)]

    def line(c: tuple[str, str, str, str]) -> str:
        return (f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}  "
                f"{c[3]:>{widths[3]}}").rstrip()

    rule = "-" * len(line(header))
    lines = [line(header), rule, *(line(c) for c in cells), rule]
    if hidden:
        lines.append(f"({hidden} deeper modules counted in their parents; --depth to show them)")
    frozen = summary.params - summary.trainable
    out = list(summary.output_shape) if summary.output_shape is not None else "-"
    per_image = summary.flops_per_image
    lines += [
        f"input shape:        {list(summary.input_shape)}",
        f"output shape:       {out}",
        f"parameters:         {summary.params:,} ({summary.param_bytes / 2**20:.2f} MiB)",
        f"trainable:          {summary.trainable:,}" + (f" (frozen {frozen:,})" if frozen else ""),
        f"FLOPs per image:    {per_image:,} ({_si(per_image)}FLOPs; conv and matmul, "
        "multiply-add = 2)",
    ]
    return "\n".join(lines)
