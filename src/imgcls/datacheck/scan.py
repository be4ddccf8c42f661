"""Find the images of a data source (a folder of class folders, with or without train/ val/
test/ parts, a list file or a multi-label CSV) and decode each once, in threads, into what the
check needs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgcls.data.folder import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    find_class_folders,
    own_pixel_check,
    pixel_limit_error,
    to_rgb,
    walk_images,
)
from imgcls.data.label_csv import is_label_csv, read_label_csv
from imgcls.data.listfile import read_list_file
from imgcls.datacheck.hashing import FLAT_RANGE, THUMB_SIDE, grey_thumbnail, pixel_hash
from imgcls.errors import ImgclsError, first_line

PARTS = ("train", "val", "test")
WHOLE = "all"  # the one part of a single folder, a list file or a label CSV
LIST_ROOT = "./data"  # data.root's default: list-file and CSV paths also resolve against it
LABEL_JOIN = ";"  # a CSV entry's ``label``: its labels joined, as a tags cell may write them


@dataclass(frozen=True)
class Entry:
    """One image file: its part, class and key (the path relative to the source, as
    split.json records it). A label CSV's image has any number of ``labels`` (class order);
    its ``label`` joins them, so code comparing one label per image compares label sets."""

    part: str
    label: str
    key: str
    path: str
    labels: tuple[str, ...] | None = None  # None: one class, ``label``

    @property
    def label_set(self) -> tuple[str, ...]:
        """Every class the image counts in."""
        return (self.label,) if self.labels is None else self.labels


@dataclass
class Source:
    path: Path
    kind: str  # "folder" | "parts" (train/ val/ test/ folders) | "list" | "csv"
    parts: list[str]
    classes: list[str]
    entries: list[Entry]
    links_dropped: list[str] = field(default_factory=list)  # symlinks not followed, as keys


@dataclass
class Decoded:
    """What the check keeps of one decoded image (``error`` set when it could not be read)."""

    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    pixels: str = ""  # pixel_hash
    thumb: np.ndarray | None = None
    flat: bool = False
    error: str | None = None


def find_source(data: str | os.PathLike[str]) -> Source:
    """Every image file of ``data``; a path that is missing or holds no images is an
    ImgclsError naming it."""
    path = Path(data).expanduser().absolute()
    if not path.exists():
        raise ImgclsError(f"data not found: {data} (expected a folder of class folders, a .txt "
                          "list file or a .csv label file)")
    if path.is_file():
        if is_label_csv(path):
            return _csv_source(path)
        if path.suffix.lower() != ".txt":
            raise ImgclsError(f"data {data} is a file, not a folder, a .txt list file or a .csv "
                              "label file")
        return _list_source(path)
    links: list[str] = []
    if (path / "train").is_dir():
        parts = [p for p in PARTS if (path / p).is_dir()]
        entries = [e for p in parts for e in _scan(path / p, path, p, links)]
        classes = sorted({e.label for e in entries} | set(find_class_folders(path / "train")))
        kind = "parts"
    else:
        parts, entries, kind = [WHOLE], _scan(path, path, WHOLE, links), "folder"
        classes = find_class_folders(path)
    if not entries:
        raise ImgclsError(f"no images in {data} (looked for {', '.join(IMAGE_EXTENSIONS)} in "
                          f"{data}/{'train/' if kind == 'parts' else ''}<class>/)")
    return Source(path, kind, parts, classes, entries, links)


def _scan(folder: Path, base: Path, part: str, links: list[str]) -> list[Entry]:
    """The images of one part, found as training finds them (each real file once, symlink
    loops not followed); adds the links not followed to ``links``, relative to ``base``."""
    classes = find_class_folders(folder)
    if not classes:
        raise ImgclsError(f"no class folders in {folder} (expected {folder}/<class>/<image>)")
    samples, dropped = walk_images(folder, classes)
    links += [os.path.relpath(folder / key, base).replace(os.sep, "/") for key in dropped]
    return [Entry(part, classes[label], os.path.relpath(path, base).replace(os.sep, "/"), path)
            for path, label in samples]


def _list_source(path: Path) -> Source:
    keys, samples, classes, missing = read_list_file(path, Path(LIST_ROOT).absolute(), True)
    by_key = dict(zip(keys, samples, strict=True))
    entries = [Entry(WHOLE, classes[y], k, p) for k, (p, y) in by_key.items()]
    # A listed file that is gone is reported with the unreadable ones; its class is unknown here.
    entries += [Entry(WHOLE, "?", key, str(path.parent / key)) for key in missing]
    return Source(path, "list", [WHOLE], classes, entries)


def _csv_source(path: Path) -> Source:
    """A label CSV read as training reads it (a malformed file is its one-line error)."""
    table = read_label_csv(path, Path(LIST_ROOT).absolute(), skip_missing=True)
    entries = []
    for key, file, row in zip(table.keys, table.paths, table.targets, strict=True):
        labels = tuple(table.classes[k] for k in np.flatnonzero(row))
        entries.append(Entry(WHOLE, LABEL_JOIN.join(labels), key, file, labels))
    # As in a list file, a missing image is reported as unreadable; its labels count nowhere.
    entries += [Entry(WHOLE, "?", key, str(path.parent / key), ()) for key in table.missing]
    return Source(path, "csv", [WHOLE], table.classes, entries)


def decode(path: str, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Open ``path`` fully decoded; an unreadable file comes back with the reason, not raised.
    An image whose header says more than ``max_pixels`` pixels is unreadable and never decoded:
    a 140 KB PNG can claim 12000x12000 and take gigabytes."""
    try:
        with open(path, "rb") as handle, own_pixel_check(), Image.open(handle) as img:
            too_big = pixel_limit_error(img.size, max_pixels)
            if too_big is not None:
                return Decoded(error=too_big)
            img.load()
            mode, fmt = img.mode, img.format or ""
            rgb = to_rgb(img)
    except FileNotFoundError:
        return Decoded(error="broken symlink" if os.path.islink(path) else "file not found")
    except UnidentifiedImageError:
        return Decoded(error="not a recognised image file")
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        return Decoded(error=first_line(exc))
    thumb = grey_thumbnail(rgb)
    flat = int(thumb.max()) - int(thumb.min()) <= FLAT_RANGE
    return Decoded(rgb.width, rgb.height, mode, fmt, pixel_hash(rgb), thumb, flat)


def decode_all(paths: list[str], workers: int | None = None,
               max_pixels: int = MAX_PIXELS) -> list[Decoded]:
    """``decode`` every path; threads, as Pillow releases the GIL while it decodes. Paths go
    to the pool in chunks: a future per image would cost more than a CIFAR image's decode."""
    workers = workers or min(8, os.cpu_count() or 1)
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = pool.map(lambda c: [decode(p, max_pixels) for p in c], chunks)
        return [d for chunk in decoded for d in chunk]


def thumbs_of(decoded: list[Decoded]) -> np.ndarray:
    """The thumbnails stacked (unreadable files get zeros; they are not searched)."""
    blank = np.zeros((THUMB_SIDE, THUMB_SIDE), np.uint8)
    return np.stack([d.thumb if d.thumb is not None else blank for d in decoded])
