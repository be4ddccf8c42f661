"""TorchScript: the traced export and ``torch.jit.load`` running the written file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from imgcls.deploy.export.writing import _first_line, _quiet, _write_atomic
from imgcls.errors import ImgclsError


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
