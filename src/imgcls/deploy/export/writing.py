"""Where the exported files go and how they are written: output paths, atomic writes, one-line
errors, and the exporters' warnings, logs and C++ output kept off the terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from imgcls.errors import ImgclsError, first_line
from imgcls.files import atomic_write_file

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


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
