"""ONNX: the export (dynamo exporter first, the TorchScript-based one as the fallback) and an
ONNX Runtime session that runs the written file for the verification."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.deploy.export.graph import INPUT_NAME, OUTPUT_NAME, _InputSpec
from imgcls.deploy.export.writing import (
    _first_line,
    _quiet,
    _stdout_muted,
    _write_atomic,
    _write_error,
)
from imgcls.errors import ImgclsError

# One ONNX file is a protobuf, limited to 2 GiB: above this the weights go to <file>.data.
EXTERNAL_DATA_BYTES = 1_800_000_000
INSTALL_HINT = 'pip install "imgcls[export]"'


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


def _export_onnx(module: nn.Module, example: torch.Tensor, spec: _InputSpec, path: Path,
                 output_name: str = OUTPUT_NAME) -> tuple[str, int | None, list[Path], list[str]]:
    """Write ``path``, its output named ``output_name``; returns (exporter, opset, extra files,
    notes).

    The dynamo-based exporter (``torch.export``) comes first; a model it cannot capture falls
    back to the TorchScript-based one (``dynamo=False``), which the report says.
    """
    try:
        with _quiet():
            dims = {i: torch.export.Dim(name, min=1 if i == 0 else 2)
                    for i, name in spec.dynamic.items()}
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, verbose=False,
                input_names=[INPUT_NAME], output_names=[output_name], dynamic_shapes=(dims,),
            )
    except Exception as exc:  # torch.export fails in many ways on unusual Python code
        reason = _first_line(exc)
        return _export_onnx_legacy(module, example, spec, path, reason, output_name)
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
                        dynamo_reason: str, output_name: str = OUTPUT_NAME,
                        ) -> tuple[str, int | None, list[Path], list[str]]:
    import onnx

    axes = {INPUT_NAME: dict(spec.dynamic), output_name: {0: "batch"}}
    buffer = io.BytesIO()
    try:
        with _quiet(), _stdout_muted():
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                output_names=[output_name], dynamic_axes=axes,
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
