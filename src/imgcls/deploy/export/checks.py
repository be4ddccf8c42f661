"""Proving an exported file computes what the eager model does, and the record of it: the
:class:`ExportReport` and the JSON sidecar written beside the file."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import imgcls
from imgcls.config.sizes import saved_size, size_hw
from imgcls.data.transforms import _channels, apply_preset
from imgcls.deploy.export.graph import (
    OUTPUT_NAME,
    VERIFY_BATCHES,
    VERIFY_SEED,
    _InputSpec,
    _random_input,
)
from imgcls.deploy.export.writing import _first_line
from imgcls.deploy.load import LoadedModel
from imgcls.errors import ImgclsError

TOLERANCE = 1e-4  # max |exported - eager| on the logits; float32 reorderings stay far below it


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and how well the file matches the eager model."""

    path: Path
    sidecar: Path
    format: str
    exporter: str
    input_name: str
    input_dtype: str
    input_shape: list[int | str]
    num_classes: int
    mean_std: tuple[list[float], list[float]] | None  # per input channel; None: no normalisation
    include_preprocess: bool
    max_abs_diff: float
    diffs: dict[str, float]  # verification input ("3x3x32x32") -> max abs diff
    tolerance: float = TOLERANCE
    opset: int | None = None
    extra_files: list[Path] = field(default_factory=list)  # ONNX external weights
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output_name: str = OUTPUT_NAME  # PROBABILITIES_NAME for a multi-label model

    @property
    def verified(self) -> bool:
        # Written so that NaN (a broken export) counts as a failure.
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        """A few lines for the terminal: file, sidecar, format, input, verification."""
        how = self.exporter + (f", opset {self.opset}" if self.opset else "")
        lines = [f"exported {self.path} ({self.format}: {how}) in {self.seconds:.1f}s"]
        lines += [f"weights  {p}" for p in self.extra_files]
        lines.append(f"sidecar  {self.sidecar}")
        dims = ", ".join(str(d) for d in self.input_shape)
        if self.include_preprocess:
            prep = "raw pixels 0-255; resize, /255"
            prep += " and normalisation in the graph" if self.mean_std else " in the graph"
        elif self.mean_std is not None:
            mean, std = (", ".join(f"{v:.4g}" for v in vals) for vals in self.mean_std)
            prep = f"pixels /255 then (x - [{mean}]) / [{std}]"
        else:
            prep = "pixels /255, no normalisation"
        lines.append(f"input    {self.input_name}: {self.input_dtype} [{dims}] NCHW ({prep}) -> "
                     f"{self.output_name} [N, {self.num_classes}]")
        status = "ok" if self.verified else "FAILED"
        lines.append(f"verified {status}: max abs diff vs eager {self.max_abs_diff:.3g} "
                     f"(tolerance {self.tolerance:.0e}; inputs {', '.join(self.diffs)})")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)



def _verify(module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], spec: _InputSpec,
            size: tuple[int, int]) -> dict[str, float]:
    """Max |file - eager| per seeded random input at ``size`` (H, W). With the preprocessing in
    the graph, the second input has another shape, so the dynamic H and W are exercised."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    height, width = size
    shapes = [(VERIFY_BATCHES[0], height, width)]
    if spec.dtype == torch.uint8:
        shapes.append((VERIFY_BATCHES[1], 2 * height + 1, width + 5))
    else:
        shapes.append((VERIFY_BATCHES[1], height, width))
    diffs: dict[str, float] = {}
    for batch, height, width in shapes:
        x = _random_input(spec, batch, height, width, generator)
        with torch.inference_mode():
            expected = module(x).float()
        try:
            got = run(x).float()
        except Exception as exc:  # the runtime rejecting the file is a failed verification
            raise ImgclsError(
                f"the exported file fails to run on a {tuple(x.shape)} batch: {_first_line(exc)}"
            ) from None
        key = "x".join(str(d) for d in x.shape)
        if got.shape != expected.shape:
            raise ImgclsError(f"the exported file returns shape {tuple(got.shape)} for a "
                              f"{key} batch; the model returns {tuple(expected.shape)}")
        diff = (got - expected).abs().max().item()
        diffs[key] = diff if math.isfinite(diff) else math.nan
    return diffs



def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _per_channel(mean_std: tuple[list[float], list[float]] | None,
                 channels: int) -> tuple[list[float], list[float]] | None:
    """The statistics as the model's input sees them: a one-channel model's checkpoint holds the
    RGB dataset's three values, which the evaluation transform averages."""
    if mean_std is None:
        return None
    return _channels(mean_std[0], channels), _channels(mean_std[1], channels)


def _sidecar(loaded: LoadedModel, report: ExportReport, versions: dict[str, str]) -> dict:
    mean, std = report.mean_std if report.mean_std is not None else (None, None)
    if report.include_preprocess:
        height, width = size_hw(loaded.input_size)
        preprocess = (f"in the graph: bilinear resize (antialias=False) of any H x W to "
                      f"{height} x {width}, /255, then mean/std")
    else:
        preprocess = ("not in the graph: resize to input_size as training's evaluation does, "
                      "scale to [0, 1], then (x - mean) / std (skip that when mean is null)")
    return {
        "format": report.format,
        "file": report.path.name,
        "classes": loaded.classes,
        "input_size": saved_size(loaded.input_size),  # an int when square, else [H, W]
        "input_name": report.input_name,
        "output_name": report.output_name,
        "input_dtype": report.input_dtype,
        "input_layout": "NCHW",
        "input_shape": report.input_shape,
        "mean": mean,
        "std": std,
        "include_preprocess": report.include_preprocess,
        "preprocess": preprocess,
        "exporter": report.exporter,
        "opset": report.opset,
        "verification": {
            "max_abs_diff": _json_number(report.max_abs_diff),
            "tolerance": report.tolerance,
            "inputs": {k: _json_number(v) for k, v in report.diffs.items()},
            "ok": report.verified,
        },
        **({"output": "sigmoid probability of each class", "multilabel": True,
            "thresholds": loaded.record.decision_thresholds()} if loaded.record.multilabel
           else {}),
        # the evaluation transform's settings, preset applied: imgcls serve MODEL.onnx
        # preprocesses as training's evaluation did
        "eval_transform": _eval_transform(loaded),
        "in_channels": loaded.config.model.in_channels,
        "source_checkpoint": str(loaded.path.resolve()),
        "imgcls_version": imgcls.__version__,
        "torch_version": torch.__version__,
        **versions,
    }


def _eval_transform(loaded: LoadedModel) -> dict:
    resolved = apply_preset(loaded.config.transforms, loaded.input_size, loaded.config.explicit)
    return json.loads(json.dumps(dataclasses.asdict(resolved), default=list))
