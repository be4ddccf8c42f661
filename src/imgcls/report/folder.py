"""Where a page's files go: every page (a run's, the comparison, an experiment's) writes its
HTML, PNGs and CSVs through :class:`Folder`, atomically, and names them in its file notes."""

from __future__ import annotations

from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.files import atomic_write, atomic_write_text


class Folder:
    """A page's folder, created on the spot; ``text`` and ``png`` return the name written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImgclsError(f"cannot create the report folder {path}: "
                              f"{exc.strerror or exc}") from None

    def text(self, name: str, text: str) -> str:
        atomic_write_text(self.path / name, text)
        return name

    def png(self, name: str, data: bytes) -> str:
        atomic_write(self.path / name, lambda handle: handle.write(data))
        return name
