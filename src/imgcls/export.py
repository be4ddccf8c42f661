"""Export a checkpoint to ONNX or TorchScript, then prove the file computes what the model does.

The exported graph takes what the evaluation pass of training fed the model:

* default: float32 ``[N, C, S, S]`` images that are already resized, scaled to [0, 1] and
  normalised with the checkpoint's mean/std (``S`` = the checkpoint's input size, ``N`` dynamic);
  it returns logits ``[N, classes]``.
* ``include_preprocess=True``: uint8 ``[N, C, H, W]`` images (RGB, or grey when the model takes
  one channel), any ``H``/``W`` of at least 2 pixels, ``N``, ``H`` and ``W`` dynamic. Inside the
  graph a small wrapper resizes them to ``S x S`` (bilinear, ``antialias=False``), scales to
  [0, 1] and normalises. Training's evaluation resized with antialiasing (and, for
  ImageNet-style presets, resized the shorter side then centre-cropped), which ONNX cannot express
  exactly; at ``H = W = S`` the in-graph resize is the identity, so images prepared at ``S x S``
  the way training's evaluation prepares them give the same logits as the eager model.

Every export is verified: a seeded random batch of 3 and one of 1 (the graph was built with a
batch of 2, so the dynamic batch dimension is really exercised) go through the written file
(ONNX Runtime or ``torch.jit.load``) and through the eager model; a max absolute difference above
1e-4 is an error (the file is kept for inspection). A JSON sidecar ``<file>.json`` beside the file
holds the classes, input size, mean/std, input dtype and layout, and where the file came from.

>>> report = export_checkpoint("runs/NAME/checkpoints/best.pt", fmt="onnx")  # doctest: +SKIP
>>> print(report.describe())                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import imgcls
from imgcls.data.transforms import _channels
from imgcls.errors import ImgclsError, first_line
from imgcls.files import atomic_write_file
from imgcls.inference import LoadedModel, load_model
from imgcls.models.user import CodeConsent

__all__ = ["FORMATS", "TOLERANCE", "ExportReport", "Preprocess", "export_checkpoint",
           "onnx_session"]

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4  # max |exported - eager| on the logits; float32 reorderings stay far below it
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EXPORT_BATCH = 2  # the example batch the graph is built with
VERIFY_BATCHES = (3, 1)  # neither is EXPORT_BATCH, so a baked-in batch size cannot pass
VERIFY_SEED = 0
# One ONNX file is a protobuf, limited to 2 GiB: above this the weights go to <file>.data.
EXTERNAL_DATA_BYTES = 1_800_000_000
INSTALL_HINT = 'pip install "imgcls[export]"'


# --------------------------------------------------------------------------- the graph


class Preprocess(nn.Module):
    """uint8 ``[N, C, H, W]`` images -> resize to ``size`` -> [0, 1] -> normalise -> ``model``.

    The arithmetic mirrors the evaluation transform (``v2.ToDtype(scale=True)`` multiplies by
    1/255, ``v2.Normalize`` subtracts the mean then divides by the std) so that the exported
    graph and training's preprocessing agree to the last bit on images already at ``size``.
    """

    def __init__(
        self, model: nn.Module, size: int, mean_std: tuple[list[float], list[float]] | None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.normalize = mean_std is not None
        mean, std = mean_std if mean_std is not None else ([0.0], [1.0])
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(_channels(mean, in_channels)).view(shape))
        self.register_buffer("std", torch.tensor(_channels(std, in_channels)).view(shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        # Always resize, even to the same size (then it is the identity): a Python branch on the
        # input shape would be frozen into a traced graph at the example's size.
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=False)
        x = x * (1.0 / 255.0)
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)


@dataclass
class _InputSpec:
    dtype: torch.dtype
    shape: list[int | str]  # "N", "H", "W" for dynamic dimensions
    dynamic: dict[int, str]  # dimension index -> name

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        return f"{self.dtype_name} [{', '.join(str(d) for d in self.shape)}]"


def _input_spec(channels: int, size: int, include_preprocess: bool) -> _InputSpec:
    if include_preprocess:
        return _InputSpec(torch.uint8, ["N", channels, "H", "W"],
                          {0: "batch", 2: "height", 3: "width"})
    return _InputSpec(torch.float32, ["N", channels, size, size], {0: "batch"})


def _random_input(spec: _InputSpec, batch: int, height: int, width: int,
                  generator: torch.Generator) -> torch.Tensor:
    channels = int(spec.shape[1])
    if spec.dtype == torch.uint8:
        return torch.randint(0, 256, (batch, channels, height, width), generator=generator,
                             dtype=torch.uint8)
    # Normalised images are roughly zero-mean, unit-variance.
    return torch.randn(batch, channels, height, width, generator=generator)


# --------------------------------------------------------------------------- the report


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
                     f"{OUTPUT_NAME} [N, {self.num_classes}]")
        status = "ok" if self.verified else "FAILED"
        lines.append(f"verified {status}: max abs diff vs eager {self.max_abs_diff:.3g} "
                     f"(tolerance {self.tolerance:.0e}; inputs {', '.join(self.diffs)})")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------- files


def _output_path(checkpoint: Path, fmt: str, output: str | Path | None) -> Path:
    name = checkpoint.stem + SUFFIXES[fmt]
    if output is None:
        path = checkpoint.with_name(name)
    else:
        path = Path(output).expanduser()
        if path.is_dir():
            path = path / name
    if path.resolve() == checkpoint.resolve():
        raise ImgclsError(f"export output {path} is the checkpoint itself; choose another --output")
    return path


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_error(path: Path, exc: BaseException) -> ImgclsError:
    lines = str(exc).splitlines()
    reason = getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)
    return ImgclsError(f"cannot write {path}: {reason}")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """An interrupted export never leaves half a model file under the final name."""
    try:
        atomic_write_file(path, write)
    except OSError as exc:
        raise _write_error(path, exc) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    # torch.onnx wraps the error that stopped it ("Failed to export the model with
    # torch.export. This is step 1/3 ..."): the innermost cause says what it was.
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {_ANSI.sub('', first_line(exc))}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation chatter (``torch.jit`` is deprecated in favour of
    ``torch.export``, the TorchScript-based ONNX exporter likewise), tracer warnings, and the
    log records of torch.export, dynamo and onnxscript (a failed capture logs dozens of lines of
    traceback before it raises): whether the file is right is decided by the verification, and
    a failure is one line, made from the exception."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _stdout_muted() -> Iterator[None]:
    """File descriptor 1 goes to the null device: the TorchScript-based ONNX exporter turns
    torch's C++ ONNX log on for every export, and a failed export dumps its whole graph there."""
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:  # no standard output: nothing to keep clean
        saved = None
    try:
        if saved is not None:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _require_onnx() -> dict[str, str]:
    """Import the ONNX stack up front: a missing package is the user's to install, named."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        missing = exc.name or "onnx/onnxruntime"
        raise ImgclsError(
            f"ONNX export needs onnx and onnxruntime ({missing} is not installed): "
            f"{INSTALL_HINT}"
        ) from None
    return {"onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__}


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` for ``path``, logging errors only.

    ``threads`` sets the intra-op thread count (None: ONNX Runtime's default).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's graph-optimiser notes are not for users
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _export_onnx(module: nn.Module, example: torch.Tensor, spec: _InputSpec,
                 path: Path) -> tuple[str, int | None, list[Path], list[str]]:
    """Write ``path``; returns (exporter, opset, extra files, notes).

    The dynamo-based exporter (``torch.export``) comes first; a model it cannot capture falls
    back to the TorchScript-based one (``dynamo=False``), which the report says.
    """
    try:
        with _quiet():
            dims = {i: torch.export.Dim(name, min=1 if i == 0 else 2)
                    for i, name in spec.dynamic.items()}
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=(dims,),
            )
    except Exception as exc:  # torch.export fails in many ways on unusual Python code
        reason = _first_line(exc)
        return _export_onnx_legacy(module, example, spec, path, reason)
    opset = program.model.opset_imports.get("")
    if _state_bytes(module) > EXTERNAL_DATA_BYTES:
        # Too big for one protobuf: the weights go to <file>.data, written in place.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            program.save(str(path), external_data=True)
        except OSError as exc:
            raise _write_error(path, exc) from None
        data = path.with_name(path.name + ".data")
        return "torch.onnx dynamo exporter", opset, [data] if data.exists() else [], []
    _write_atomic(path, lambda tmp: program.save(str(tmp), external_data=False))
    return "torch.onnx dynamo exporter", opset, [], []


def _export_onnx_legacy(module: nn.Module, example: torch.Tensor, spec: _InputSpec, path: Path,
                        dynamo_reason: str) -> tuple[str, int | None, list[Path], list[str]]:
    import onnx

    axes = {INPUT_NAME: dict(spec.dynamic), OUTPUT_NAME: {0: "batch"}}
    buffer = io.BytesIO()
    try:
        with _quiet(), _stdout_muted():
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=axes,
            )
    except Exception as exc:
        raise ImgclsError(
            f"cannot export to ONNX: the dynamo exporter failed ({dynamo_reason}) and so did "
            f"the TorchScript-based one ({_first_line(exc)})"
        ) from None
    data = buffer.getvalue()
    opset = next((o.version for o in onnx.load_from_string(data).opset_import if not o.domain),
                 None)
    _write_atomic(path, lambda tmp: tmp.write_bytes(data))
    note = (f"the dynamo-based ONNX exporter failed ({dynamo_reason}); the TorchScript-based "
            "exporter (dynamo=False, dynamic_axes) wrote this file")
    return "torch.onnx TorchScript-based exporter (dynamo=False)", opset, [], [note]


def _run_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    session = onnx_session(path)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


# --------------------------------------------------------------------------- TorchScript


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> str:
    try:
        with _quiet():
            # check_trace re-runs the model only to compare; the verification below does that
            # on other batch sizes, which is the check that matters.
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception as exc:
        raise ImgclsError(f"cannot trace the model for TorchScript: {_first_line(exc)}") from None

    def write(tmp: Path) -> None:
        with _quiet():
            torch.jit.save(traced, str(tmp))

    _write_atomic(path, write)
    return "torch.jit.trace"


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return loaded(x)

    return run


# --------------------------------------------------------------------------- verification


def _verify(module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], spec: _InputSpec,
            size: int) -> dict[str, float]:
    """Max |file - eager| per seeded random input. With the preprocessing in the graph, the
    second input is also a different, non-square size, so the dynamic H and W are exercised."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    shapes = [(VERIFY_BATCHES[0], size, size)]
    if spec.dtype == torch.uint8:
        shapes.append((VERIFY_BATCHES[1], 2 * size + 1, size + 5))
    else:
        shapes.append((VERIFY_BATCHES[1], size, size))
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


# --------------------------------------------------------------------------- entry point


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
        preprocess = (f"in the graph: bilinear resize (antialias=False) of any H x W to "
                      f"{loaded.input_size} x {loaded.input_size}, /255, then mean/std")
    else:
        preprocess = ("not in the graph: resize to input_size as training's evaluation does, "
                      "scale to [0, 1], then (x - mean) / std (skip that when mean is null)")
    return {
        "format": report.format,
        "file": report.path.name,
        "classes": loaded.classes,
        "input_size": loaded.input_size,
        "input_name": report.input_name,
        "output_name": OUTPUT_NAME,
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
        "source_checkpoint": str(loaded.path.resolve()),
        "imgcls_version": imgcls.__version__,
        "torch_version": torch.__version__,
        **versions,
    }


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    include_preprocess: bool = False,
    trust_pickle: bool = False,
    code: CodeConsent | None = None,
) -> ExportReport:
    """Export ``checkpoint`` to ``fmt`` ("onnx" or "torchscript"), write the JSON sidecar, and
    verify the written file against the eager model.

    ``output`` defaults to ``<stem>.onnx`` / ``<stem>.torchscript.pt`` beside the checkpoint (a
    folder puts that name inside it). Raises :class:`ImgclsError` for an unreadable checkpoint, a
    path that cannot be written, a model that cannot be exported, missing ONNX packages, or a
    file whose logits differ from the eager model's by more than ``TOLERANCE`` (the file and its
    sidecar are kept then, for inspection).

    >>> export_checkpoint("best.pt", fmt="torchscript").max_abs_diff < 1e-4  # doctest: +SKIP
    True
    """
    if fmt not in FORMATS:
        raise ImgclsError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    versions = _require_onnx() if fmt == "onnx" else {}
    start = time.perf_counter()
    loaded = load_model(checkpoint, device="cpu", trust_pickle=trust_pickle, code=code)
    path = _output_path(loaded.path, fmt, output)
    size = loaded.input_size
    channels = loaded.config.model.in_channels
    spec = _input_spec(channels, size, include_preprocess)
    module: nn.Module = loaded.model
    if include_preprocess:
        module = Preprocess(loaded.model, size, loaded.mean_std, channels).eval()
    # Non-square for the preprocessing graph, so that H and W stay two separate dimensions.
    example = _random_input(spec, EXPORT_BATCH, size, size + 1 if include_preprocess else size,
                            torch.Generator().manual_seed(VERIFY_SEED + 1))

    extra: list[Path] = []
    notes: list[str] = []
    opset = None
    if fmt == "onnx":
        exporter, opset, extra, notes = _export_onnx(module, example, spec, path)
        run = _run_onnx(path)
    else:
        exporter = _export_torchscript(module, example, path)
        run = _run_torchscript(path)
    diffs = _verify(module, run, spec, size)
    if include_preprocess:
        notes.append(
            f"images at {size} x {size} match training's evaluation; other sizes are resized "
            "in the graph without antialiasing (training's resize was antialiased)"
        )
    report = ExportReport(
        path=path, sidecar=_sidecar_path(path), format=fmt, exporter=exporter,
        input_name=INPUT_NAME, input_dtype=spec.dtype_name, input_shape=spec.shape,
        num_classes=len(loaded.classes), mean_std=_per_channel(loaded.mean_std, channels),
        include_preprocess=include_preprocess,
        max_abs_diff=max(diffs.values(), key=lambda d: math.inf if math.isnan(d) else d),
        diffs=diffs, opset=opset, extra_files=extra, notes=notes,
    )
    text = json.dumps(_sidecar(loaded, report, versions), indent=2) + "\n"
    _write_atomic(report.sidecar, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    report.seconds = time.perf_counter() - start
    if not report.verified:
        raise ImgclsError(
            f"exported {path} but it failed verification: max abs diff vs the eager model "
            f"{report.max_abs_diff:.3g} exceeds {TOLERANCE:.0e} (file kept for inspection)"
        )
    return report
