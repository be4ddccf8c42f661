"""Checkpoints: one self-sufficient dict, written atomically, read without running any code.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one: a crash or Ctrl-C at any moment leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import ImgclsError, first_line
from imgcls.files import atomic_write

FORMAT = "imgcls-checkpoint"
VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    record = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(Path(path), lambda handle: torch.save(record, handle))


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Atomically copy a checkpoint file (``last.pt`` -> ``best.pt``) without re-serialising."""
    def write(handle: Any) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, handle, length=16 * 1024 * 1024)

    atomic_write(Path(dst), write)


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a pickle would import, read without running it."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip file at all
        return []


def _truncated(path: Path) -> bool:
    """A zip archive's start without its end: what a write or copy that was cut short leaves
    (imgcls never writes one, but ``cp`` or ``rsync`` to a full disk or a killed download do)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
        return bool(head) and ZIP_MAGIC.startswith(head) and not zipfile.is_zipfile(path)
    except OSError:  # unreadable: torch.load's own error says why
        return False


def _try_other(path: Path) -> str:
    """``"; try <the run's other checkpoint>"`` (last.pt <-> best.pt) when that one is whole."""
    name = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
    other = path.with_name(name) if name else None
    if other is None or not other.is_file() or not zipfile.is_zipfile(other):
        return ""
    return f"; try {other}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an imgcls checkpoint with ``weights_only=True``: a file that would need to run code
    to load (a pickled model, say) is refused with a one-line error, and nothing in it runs."""
    path = Path(path)
    if path.is_dir():
        raise ImgclsError(f"{path} is a folder, not a checkpoint file")
    if not path.exists():
        raise ImgclsError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ImgclsError(f"{path} is empty (0 bytes){_try_other(path)}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign files; each is a user error
        if _truncated(path):
            raise ImgclsError(
                f"{path} is truncated ({path.stat().st_size} bytes, the end of its zip archive is "
                f"missing: a copy or write cut short){_try_other(path)}"
            ) from None
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise ImgclsError(
                f"{path} is not a safe imgcls checkpoint: it holds Python objects "
                f"({', '.join(unsafe[:3])}) that would run code when loaded; imgcls refuses it "
                f"(if you trust it: --trust-pickle, or `imgcls convert --trust-pickle`)"
            ) from None
        raise ImgclsError(
            f"{path} is not an imgcls checkpoint ({first_line(exc, limit=160)})"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ImgclsError(
            f"{path} is not an imgcls checkpoint (no '{FORMAT}' marker); a plain state_dict "
            f"becomes one with `imgcls convert {path}`"
        )
    if record.get("version", 0) > VERSION:
        raise ImgclsError(
            f"{path} was written by a newer imgcls (checkpoint version {record['version']})"
        )
    return record


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict`` with a one-line error when the checkpoint does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise ImgclsError(
            f"checkpoint {path} does not fit the model (architecture or class count): "
            f"{detail[:300]}"
        ) from None
