"""One training per run folder: an exclusive OS lock on ``RUN/.lock`` held by the process that
trains it (rank 0 under torchrun) for the whole run.

The kernel drops a ``flock`` when its process ends, however it ends: there is never a stale lock
to remove, and "is this run still training?" (``imgcls tune`` finding its lost trials) is
answered by trying the lock. Readers (``report``, ``evaluate``) take none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from imgcls.errors import ImgclsError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded against a second writer
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` with the holder's PID written in it.

    The kernel drops the lock when the holder's process ends, however it ends: there is never a
    stale lock to remove, and "is this run still training?" is answered by trying the lock.
    Within its process the lock is re-entrant (``imgcls tune`` holds a trial's folder around
    the training that locks it again).
    """

    _held: dict[Path, tuple[IO[str], int]] = {}  # this process's locks: handle, depth

    def __init__(self, run_dir: Path, key: Path | None) -> None:
        self.run_dir, self._key = run_dir, key

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """The lock, or a one-line error naming the folder and the PID that holds it."""
        if fcntl is None:
            return cls(run_dir, None)
        key = run_dir.resolve()
        if key in cls._held:
            handle, depth = cls._held[key]
            cls._held[key] = (handle, depth + 1)
            return cls(run_dir, key)
        handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ImgclsError(f"run folder {run_dir} is in use by another training (PID "
                              f"{_holder_pid(run_dir)}); wait for it to end or stop it") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        cls._held[key] = (handle, 1)
        return cls(run_dir, key)

    def release(self) -> None:
        if self._key is None:
            return
        handle, depth = self._held[self._key]
        if depth > 1:
            self._held[self._key] = (handle, depth - 1)
        else:
            del self._held[self._key]
            handle.close()  # drops the lock
        self._key = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _holder_pid(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK_FILE).read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def in_use(run_dir: Path) -> str | None:
    """The PID of another live process training ``run_dir`` (as text), or None when none is."""
    if fcntl is None or not (run_dir / LOCK_FILE).is_file() or \
            run_dir.resolve() in RunLock._held:
        return None
    try:
        with open(run_dir / LOCK_FILE, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder_pid(run_dir)
            return None  # closing the file drops the lock just taken
    except OSError:
        return None


def require_free(run_dir: Path) -> None:
    """A one-line error when another process is training ``run_dir`` (checked before a resume
    reads or repairs anything)."""
    pid = in_use(run_dir)
    if pid is not None:
        raise ImgclsError(f"run folder {run_dir} is in use by another training (PID {pid}); "
                          "wait for it to end or stop it")
