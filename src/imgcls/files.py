"""Files written so that a crash, Ctrl-C or full disk at any moment leaves the old file or the new
one, never half of one: write a temporary file in the same folder, fsync it, rename it over the
target, fsync the folder. A full disk is one line naming the file (:class:`DiskFullError`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from imgcls.errors import DiskFullError, disk_full_errno


def printable(name: str) -> str:
    """``name`` as valid UTF-8 text: a file name's undecodable bytes (Python keeps them as lone
    surrogates, ``b"\\xff.png"`` -> ``"\\udcff.png"``) become U+FFFD, which a terminal, a UTF-8
    CSV or JSON can hold; the surrogates themselves make ``print`` and ``encode`` raise.

    >>> printable(os.fsdecode(b"\\xff.png")) == "\\ufffd.png"
    True
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system byte became: replace it too
        raw = name.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened: Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_file(path: Path, write_file: Callable[[Path], object]) -> None:
    """Call ``write_file(tmp)`` to create a temporary file beside ``path`` (for writers that
    want a path, such as ``torch.onnx.export``), fsync it, then rename it onto ``path``."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write_file(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; give it a file's usual mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C included: never leave the temporary file behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        code = disk_full_errno(exc) if isinstance(exc, Exception) else None
        if code is not None:  # else a 40-line torch traceback that names neither disk nor file
            raise DiskFullError(path, code) from None
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(handle)`` on a temporary file, then put it at ``path`` atomically.

    >>> atomic_write(Path("out.txt"), lambda handle: handle.write(b"done"))  # doctest: +SKIP
    """
    def write_file(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            write(handle)

    atomic_write_file(path, write_file)


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically. Undecodable bytes of file names in
    ``text`` are written as U+FFFD (:func:`printable`): strict UTF-8 would raise on them."""
    data = printable(text).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
