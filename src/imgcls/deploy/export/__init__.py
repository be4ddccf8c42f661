"""Export a checkpoint to ONNX or TorchScript, then prove the file computes what the model does.

The exported graph takes what the evaluation pass of training fed the model:

* default: float32 ``[N, C, S, S]`` images that are already resized, scaled to [0, 1] and
  normalised with the checkpoint's mean/std (``S`` = the checkpoint's input size, ``N`` dynamic;
  a non-square input size ``[H, W]`` gives ``[N, C, H, W]``); it returns logits ``[N, classes]``,
  or for a multi-label model each class's sigmoid probability, which the sidecar's
  ``thresholds`` (one per class) turn into labels.
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

The package front and entry point (:func:`export_checkpoint`); ``graph.py`` is the graph's
input, ``onnx_format.py`` and ``torchscript.py`` write and run each format, ``checks.py``
verifies the file and makes the report and sidecar, ``writing.py`` writes files quietly.

>>> report = export_checkpoint("runs/NAME/checkpoints/best.pt", fmt="onnx")  # doctest: +SKIP
>>> print(report.describe())                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from imgcls.config.sizes import size_hw
from imgcls.deploy.export.checks import TOLERANCE, ExportReport, _per_channel, _sidecar, _verify
from imgcls.deploy.export.graph import (
    EXPORT_BATCH,
    INPUT_NAME,
    OUTPUT_NAME,
    PROBABILITIES_NAME,
    VERIFY_BATCHES,
    VERIFY_SEED,
    Preprocess,
    SigmoidScores,
    _input_spec,
    _random_input,
)
from imgcls.deploy.export.onnx_format import (
    EXTERNAL_DATA_BYTES,
    INSTALL_HINT,
    _export_onnx,
    _require_onnx,
    _run_onnx,
    onnx_session,
)
from imgcls.deploy.export.torchscript import _export_torchscript, _run_torchscript
from imgcls.deploy.export.writing import (
    FORMATS,
    SUFFIXES,
    _output_path,
    _sidecar_path,
    _write_atomic,
)
from imgcls.deploy.load import LoadedModel, load_model
from imgcls.errors import ImgclsError
from imgcls.models.user import CodeConsent

__all__ = ["EXPORT_BATCH", "EXTERNAL_DATA_BYTES", "FORMATS", "INPUT_NAME", "INSTALL_HINT",
           "OUTPUT_NAME", "SUFFIXES", "TOLERANCE", "VERIFY_BATCHES", "VERIFY_SEED",
           "ExportReport", "Preprocess", "export_checkpoint", "onnx_session"]
# export_checkpoint calls the format functions through this module's names (_export_onnx,
# _run_torchscript...), so that a test can patch them on the package.


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
    report = _export_and_verify(loaded, fmt, path, include_preprocess)
    text = json.dumps(_sidecar(loaded, report, versions), indent=2) + "\n"
    _write_atomic(report.sidecar, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    report.seconds = time.perf_counter() - start
    if not report.verified:
        raise ImgclsError(
            f"exported {path} but it failed verification: max abs diff vs the eager model "
            f"{report.max_abs_diff:.3g} exceeds {TOLERANCE:.0e} (file kept for inspection)"
        )
    return report


def _export_and_verify(loaded: LoadedModel, fmt: str, path: Path,
                       include_preprocess: bool) -> ExportReport:
    """Write ``path`` in ``fmt`` from the loaded model and compare the file with the model."""
    height, width = size = size_hw(loaded.input_size)
    channels = loaded.config.model.in_channels
    spec = _input_spec(channels, size, include_preprocess)
    module: nn.Module = loaded.model
    if include_preprocess:
        module = Preprocess(loaded.model, size, loaded.mean_std, channels).eval()
    output_name = OUTPUT_NAME
    if loaded.record.multilabel:
        module, output_name = SigmoidScores(module).eval(), PROBABILITIES_NAME
    # Another shape for the preprocessing graph, so that H and W stay two separate dimensions.
    example = _random_input(spec, EXPORT_BATCH, height, width + 1 if include_preprocess else width,
                            torch.Generator().manual_seed(VERIFY_SEED + 1))

    extra: list[Path] = []
    notes: list[str] = []
    opset = None
    if fmt == "onnx":
        exporter, opset, extra, notes = _export_onnx(module, example, spec, path, output_name)
        run = _run_onnx(path)
    else:
        exporter = _export_torchscript(module, example, path)
        run = _run_torchscript(path)
    diffs = _verify(module, run, spec, size)
    if include_preprocess:
        notes.append(
            f"images at {height} x {width} match training's evaluation; other sizes are resized "
            "in the graph without antialiasing (training's resize was antialiased)"
        )
    return ExportReport(
        path=path, sidecar=_sidecar_path(path), format=fmt, exporter=exporter,
        input_name=INPUT_NAME, input_dtype=spec.dtype_name, input_shape=spec.shape,
        num_classes=len(loaded.classes), mean_std=_per_channel(loaded.mean_std, channels),
        include_preprocess=include_preprocess, output_name=output_name,
        max_abs_diff=max(diffs.values(), key=lambda d: math.inf if math.isnan(d) else d),
        diffs=diffs, opset=opset, extra_files=extra, notes=notes,
    )
