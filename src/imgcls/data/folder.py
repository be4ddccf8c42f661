"""Image files on disk: a folder of class folders, decoded to RGB on access.

The folder is scanned once; datasets hold a plain ``samples`` list, so ``__getitem__`` only
opens, converts and returns one file (no per-item or per-epoch filesystem scans).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import has_file_allowed_extension

from imgcls.config import DataConfig
from imgcls.errors import ImgclsError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_PIXELS = DataConfig.max_image_pixels  # data.max_image_pixels's default: PIL's own limit

Sample = tuple[str, int]

_pil_lock = threading.Lock()
_pil_openers = 0  # threads inside own_pixel_check
_pil_limit: int | None = None  # Image.MAX_IMAGE_PIXELS as it was before the first of them


@contextmanager
def own_pixel_check() -> Iterator[None]:
    """Turn PIL's decompression-bomb check off while imgcls opens images: ours (see
    :func:`pixel_limit_error`) reads the header first and makes one line naming the file, where
    PIL's prints a two-line warning per image, or raises above twice its limit. PIL's global is
    put back when the last thread decoding under this leaves, so other code keeps PIL's check."""
    global _pil_openers, _pil_limit
    with _pil_lock:
        if _pil_openers == 0:
            _pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _pil_openers += 1
    try:
        yield
    finally:
        with _pil_lock:
            _pil_openers -= 1
            if _pil_openers == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit


def _fresh_pil_lock() -> None:
    # A DataLoader worker forked while another thread held the lock would wait on it forever.
    global _pil_lock, _pil_openers
    _pil_lock, _pil_openers = threading.Lock(), 0


os.register_at_fork(after_in_child=_fresh_pil_lock)


def pixel_limit_error(size: tuple[int, int], limit: int) -> str | None:
    """Why an image whose header says ``size`` (width, height) is not decoded, or None when it
    is within ``limit`` pixels (data.max_image_pixels; 0: no limit).

    >>> pixel_limit_error((64, 64), 0) is None
    True
    >>> pixel_limit_error((12000, 12000), 89478485)[:36]
    '12000x12000 = 144.0 megapixels, abov'
    """
    width, height = size
    pixels = width * height
    if limit == 0 or pixels <= limit:
        return None
    count = f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"
    whose = " (PIL's decompression-bomb limit)" if limit == MAX_PIXELS else ""
    return (f"{width}x{height} = {count}, above data.max_image_pixels={limit}{whose}; raise it "
            "or set 0 for no limit")


def load_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS,
             draft: int | None = None) -> Image.Image:
    """Open an image file fully decoded, in RGB mode; an unreadable file, or one whose header
    says more than ``max_pixels`` pixels (0: no limit; it is then not decoded), is an
    ImgclsError. ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (its DCT scaling,
    several times faster) as long as both sides stay at least ``draft`` pixels."""
    try:
        with open(path, "rb") as f:
            return decode_rgb(f, path, max_pixels, draft)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImgclsError(
                f"image file {path} is a broken symlink (to {os.readlink(path)})"
            ) from None
        raise ImgclsError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ImgclsError(f"cannot read image {path}: {first_line(exc)}") from None


def decode_rgb(handle: BinaryIO, path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS,
               draft: int | None = None) -> Image.Image:
    """:func:`load_rgb` of an open binary file (an upload's bytes: ``io.BytesIO``); ``path``
    names it in the errors."""
    try:
        with own_pixel_check(), Image.open(handle) as img:
            too_big = pixel_limit_error(img.size, max_pixels)
            if too_big is None:
                if draft is not None:
                    img.draft("RGB", (draft, draft))
                return to_rgb(img)
    except UnidentifiedImageError:
        # Pillow's own message names the file object, not the path; ours names the path.
        raise ImgclsError(f"cannot read image {path}: not a recognised image file") from None
    except ImgclsError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        reason = first_line(exc)
        raise ImgclsError(f"cannot read image {path}: {reason}") from None
    raise ImgclsError(f"cannot read image {path}: {too_big}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, L, LA, RGBA, CMYK, 16-bit, ...) to a new, loaded RGB
    image (alpha is dropped, as torchvision's loader does), turned upright by its EXIF
    orientation (``img`` itself is turned in place)."""
    # Phones save photos sideways plus an EXIF Orientation tag that viewers obey; without this,
    # training and prediction would see them rotated. In place: no copy for the usual upright.
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode == "P" and "transparency" in img.info:
        # Pillow warns when a palette with byte transparency goes straight to RGB.
        img = img.convert("RGBA")
    elif img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greyscale (e.g. 16-bit PNG) would clip to white; scale to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode != "F" else 1.0
        img = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


class ImageFileDataset(Dataset):
    """Map-style dataset over ``(path, label)`` samples, like torchvision's ``ImageFolder``.

    Yields ``(PIL.Image in RGB mode, int label)``; ``samples``, ``targets`` and ``classes`` let
    callers read labels without decoding images. ``max_pixels`` (data.max_image_pixels) travels
    with the dataset into DataLoader worker processes.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], root: str = "",
                 max_pixels: int = MAX_PIXELS):
        self.samples: list[Sample] = list(samples)
        self.targets: list[int] = [label for _, label in self.samples]
        self.classes: list[str] = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.root = root
        self.skipped: list[str] = []  # bad files left out (data.skip_bad_images), for reports
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path, self.max_pixels), label

    def __repr__(self) -> str:
        name, n, k = type(self).__name__, len(self), len(self.classes)
        return f"{name}({n} images, {k} classes, {self.root})"


class MultiLabelFileDataset(ImageFileDataset):
    """An :class:`ImageFileDataset` whose labels are multi-hot rows (a tuple of 0/1 per class,
    from :mod:`imgcls.data.label_csv`); yields ``(PIL.Image in RGB mode, uint8 [K] tensor)``."""

    multilabel = True

    def __getitem__(self, index: int) -> tuple[Image.Image, torch.Tensor]:  # type: ignore[override]
        path, row = self.samples[index]
        return load_rgb(path, self.max_pixels), torch.tensor(row, dtype=torch.uint8)


def _is_visible_image(path: str) -> bool:
    # Hidden files are skipped: macOS "._x.jpg" resource forks are not images.
    return has_file_allowed_extension(path, IMAGE_EXTENSIONS) and not os.path.basename(
        path
    ).startswith(".")


def find_class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder`` (hidden ones such as
    ``.ipynb_checkpoints`` are not classes)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def scan_folder(
    folder: Path, classes: Sequence[str] | None = None, dropped: list[str] | None = None
) -> tuple[list[Sample], list[str]]:
    """Scan ``folder/<class>/**/*`` once; returns (samples, classes), classes sorted.

    Given ``classes``, the class folders must be exactly those (e.g. ``val`` matching ``train``);
    without, there must be two or more. Symlinks are followed as :func:`walk_images` says; the
    links it leaves out are appended to ``dropped``.
    """
    if not folder.is_dir():
        raise ImgclsError(f"data folder not found: {folder}")
    found = find_class_folders(folder)
    if not found:
        loose = [p.name for p in folder.iterdir() if _is_visible_image(str(p))]
        hint = "; put each class's images in its own sub-folder" if loose else ""
        raise ImgclsError(f"no class folders in {folder} (expected {folder}/<class>/<image>){hint}")
    if classes is None and len(found) < 2:
        # One class "trains" to 100% and predicts that class for everything.
        raise ImgclsError(f"{folder} has one class folder ({found[0]}); a classifier needs two "
                          f"or more, one folder of images each")
    if classes is not None and list(classes) != found:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ImgclsError(
            f"class folders of {folder} differ from the training classes: "
            f"missing {missing or 'none'}, extra {extra or 'none'}"
        )
    samples, links = walk_images(folder, found)
    if dropped is not None:
        dropped += links
    counts = np.bincount([label for _, label in samples], minlength=len(found))
    empty = [found[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ImgclsError(
            f"class folder(s) with no images in {folder}: {', '.join(empty)} "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return samples, found


def walk_images(folder: Path, subfolders: Sequence[str]) -> tuple[list[Sample], list[str]]:
    """Every visible image under each ``folder/<sub>/``, labelled with the sub-folder's index, in
    ``sorted(os.walk)`` order; returns (samples, dropped links, relative to ``folder``).

    Symlinks are followed, but each real folder is entered once and each real file listed once:
    a link loop, a link to ``folder`` or above it, a link into another sub-folder, or a second
    path to a file already found adds nothing and is named in ``dropped`` instead (one copy of a
    photo must not land in both train and validation). A file kept through a link takes the
    label of the sub-folder it really lies in; the path without links wins over a linked one.
    A broken link is kept: loading it fails, or data.skip_bad_images skips it.
    """
    top = os.path.realpath(folder)
    reals = [os.path.realpath(os.path.join(folder, sub)) for sub in subfolders]
    owner = {real: k for k, real in enumerate(reals)}
    entered = set(reals)  # never walked into twice, whichever link leads there
    found: list[tuple[str, int, str, bool]] = []  # (path, label, real path, no link on the way)
    dropped: list[str] = []
    for k, sub in enumerate(subfolders):
        files: list[tuple[str, int, str, bool]] = []
        stack = [(os.path.join(folder, sub), reals[k], True)]
        while stack:
            path, real, direct = stack.pop()
            try:
                entries = list(os.scandir(path))
            except OSError:  # unreadable folder: skipped, as os.walk does
                continue
            for entry in entries:
                if entry.name.startswith("."):  # .ipynb_checkpoints, macOS "._x.jpg" forks
                    continue
                link = entry.is_symlink()
                # realpath (a syscall per path part) only where a link makes it differ.
                target = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
                try:
                    is_dir = entry.is_dir()
                except OSError:  # a link to itself (ELOOP): a file that will not load
                    is_dir = False
                if is_dir:
                    if target in entered or os.path.commonpath([target, top]) == target:
                        dropped.append(relative_key(entry.path, folder))
                    else:
                        entered.add(target)
                        stack.append((entry.path, target, direct and not link))
                elif has_file_allowed_extension(entry.name, IMAGE_EXTENSIONS):
                    label = k if direct and not link else _owner(target, owner, k)
                    files.append((entry.path, label, target, direct and not link))
        found += sorted(files, key=lambda f: os.path.split(f[0]))
    kept: dict[str, int] = {}  # real path -> index in found
    for i, (_, _, target, direct) in enumerate(found):
        j = kept.setdefault(target, i)
        if j != i:
            if direct and not found[j][3]:
                kept[target], i = i, j
            dropped.append(relative_key(found[i][0], folder))
    return [found[i][:2] for i in sorted(kept.values())], dropped


def _owner(real: str, owner: dict[str, int], default: int) -> int:
    """The index of the sub-folder ``real`` lies in (its nearest listed ancestor), else
    ``default``."""
    parent = os.path.dirname(real)
    while parent not in owner and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return owner.get(parent, default)


def relative_key(path: str, base: Path) -> str:
    """``path`` relative to ``base`` in POSIX style: the form split.json records files in."""
    prefix = os.path.join(str(base), "")
    rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, base)
    return rel.replace(os.sep, "/")


def verify_samples(
    samples: Sequence[Sample], max_pixels: int = MAX_PIXELS
) -> tuple[list[Sample], list[str]]:
    """Decode every image once; returns (good samples, paths of the bad ones). An image above
    ``max_pixels`` is bad, found from its header alone."""
    def ok(sample: Sample) -> bool:
        try:
            load_rgb(sample[0], max_pixels)
        except ImgclsError:
            return False
        return True

    # Pillow releases the GIL while decoding, so threads speed up a 50k-image check.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        flags = list(pool.map(ok, samples, chunksize=64))
    good = [s for s, keep in zip(samples, flags, strict=True) if keep]
    bad = [s[0] for s, keep in zip(samples, flags, strict=True) if not keep]
    return good, bad
