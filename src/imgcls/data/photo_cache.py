"""Photos decoded once: each image resized so its shorter side is ``side`` pixels (never
enlarged), its uint8 HWC pixels appended to one file that training memory-maps.

Decoding a photo costs far more than a training step's share of it at 128-224 px (a phone's
12-megapixel JPEG: about 0.1 s); decoded once at a little above the training size, every later
epoch reads a few hundred KB per image from the page cache instead, and a folder larger than
RAM still works (the OS keeps what fits). JPEGs are decoded at a reduced DCT scale where that
still leaves ``side`` pixels (Pillow's ``draft``), several times faster than a full decode.

The cache lives in ``<cache_dir>/photos-<key>/`` (``pixels.u8`` and ``index.pt``), named by
where the images come from and reused while their fingerprint (paths, sizes, mtimes) holds;
``index.pt`` is written last, so a build that stops part-way (a full disk, Ctrl-C) leaves no
cache that looks valid.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from imgcls.data.decode_cache import _digest, source_key
from imgcls.data.folder import MAX_PIXELS, load_rgb
from imgcls.data.targets import stack_labels
from imgcls.errors import ImgclsError, first_line
from imgcls.files import atomic_write

CACHE_VERSION = 1
HEADER_SAMPLE = 256  # image headers read to estimate a cache's size


class CacheWriteError(ImgclsError):
    """The photo cache could not be written (a full disk, no permission): the run may fall back
    to reading the files."""


@dataclass
class PhotoStore:
    """Decoded photos: image ``k`` is ``pixels[offsets[k]:]`` as ``heights[k]`` x ``widths[k]``
    x ``channels`` uint8 (HWC, as Pillow gives them)."""

    pixels: np.ndarray  # flat uint8: a read-only memory map, or read into memory
    offsets: np.ndarray  # int64 [N]
    heights: torch.Tensor  # int64 [N]
    widths: torch.Tensor  # int64 [N]
    labels: torch.Tensor  # int64 [N] class indices, or uint8 [N, K] multi-hot rows
    channels: int
    folder: Path | None  # where the cache files are (None: built in memory)
    memory_mapped: bool
    skipped: list[str]  # unreadable files left out (data.skip_bad_images)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def crop(self, k: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """A view of image ``k``'s pixels ``[top:top + height, left:left + width]`` (HWC)."""
        h, w = int(self.heights[k]), int(self.widths[k])
        start = int(self.offsets[k])
        image = self.pixels[start : start + h * w * self.channels].reshape(h, w, self.channels)
        return image[top : top + height, left : left + width]


def stored_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) of an image after its shorter side is resized to ``side`` (never up)."""
    short = min(width, height)
    if short <= side:
        return width, height
    return max(1, round(width * side / short)), max(1, round(height * side / short))


def _base_and_index(dataset: Any, index: int) -> tuple[Any, int]:
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def image_paths(dataset: Dataset) -> list[str] | None:
    """The file of each item of a dataset of image files (through Subsets), or None."""
    n = len(dataset)  # type: ignore[arg-type]
    paths = []
    for i in range(n):
        base, j = _base_and_index(dataset, i)
        samples = getattr(base, "samples", None)
        if samples is None:
            return None
        paths.append(str(samples[j][0]))
    return paths


def estimate_bytes(dataset: Dataset, side: int, channels: int = 3) -> int | None:
    """About how large the cache of ``dataset`` at ``side`` would be, from the headers of a
    seeded sample of its files (None: not a dataset of image files, or unreadable headers)."""
    paths = image_paths(dataset)
    if not paths:
        return None
    pick = np.random.default_rng(0).permutation(len(paths))[:HEADER_SAMPLE]
    total, read = 0, 0
    for i in pick:
        try:
            with Image.open(paths[i]) as img:
                w, h = stored_size(*img.size, side)
        except Exception:  # an unreadable file: decoding names it later
            continue
        total, read = total + w * h * channels, read + 1
    return None if read == 0 else total * len(paths) // read


def _decoder(dataset: Dataset, side: int) -> Callable[[int], tuple[np.ndarray, Any]]:
    """Item ``i`` as (uint8 HWC pixels at ``side``, label)."""

    def decode(i: int) -> tuple[np.ndarray, Any]:
        base, j = _base_and_index(dataset, i)
        samples = getattr(base, "samples", None)
        if samples is not None:
            path, label = samples[j]
            image = load_rgb(path, getattr(base, "max_pixels", MAX_PIXELS), draft=side)
        else:
            image, label = base[j]
            image = image.convert("RGB")
        size = stored_size(*image.size, side)
        if size != image.size:  # Pillow's antialiased bilinear, as torchvision's Resize on PIL
            image = image.resize(size, Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8), label

    return decode


def _decoded(dataset: Dataset, side: int, skip_bad: bool,
             skipped: list[str]) -> Iterator[tuple[np.ndarray, Any]]:
    """Every image decoded, in order, by a thread per core (Pillow releases the GIL)."""
    decode = _decoder(dataset, side)

    def safe(i: int) -> tuple[np.ndarray, Any] | str:
        try:
            return decode(i)
        except ImgclsError as exc:
            if not skip_bad:
                raise
            return str(exc)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for item in pool.map(safe, range(len(dataset))):  # type: ignore[arg-type]
            if isinstance(item, str):
                skipped.append(item)
            else:
                yield item


def _write(folder: Path, dataset: Dataset, side: int, fingerprint: str,
           skip_bad: bool) -> None:
    """Decode into ``folder/pixels.u8``, then write the index that makes it valid; a write that
    fails (a full disk) removes both and raises :class:`CacheWriteError`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.pt").unlink(missing_ok=True)
    tmp = folder / f"pixels.u8.tmp-{os.getpid()}"
    shapes, labels, skipped = [], [], []
    try:
        with open(tmp, "wb") as out:
            for pixels, label in _decoded(dataset, side, skip_bad, skipped):
                out.write(pixels.tobytes())
                shapes.append(pixels.shape[:2])
                labels.append(label)
        os.replace(tmp, folder / "pixels.u8")
        sizes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        record = {"fingerprint": fingerprint, "heights": torch.from_numpy(sizes[:, 0].copy()),
                  "widths": torch.from_numpy(sizes[:, 1].copy()),
                  "labels": stack_labels(labels), "skipped": skipped}
        atomic_write(folder / "index.pt", lambda handle: torch.save(record, handle))
    except OSError as exc:
        (folder / "pixels.u8").unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free / 2**20
        raise CacheWriteError(f"cannot write the photo cache in {folder}: {first_line(exc)} "
                              f"({free:.0f} MB free)") from None
    finally:
        tmp.unlink(missing_ok=True)


def _open(folder: Path, fingerprint: str, in_memory: bool) -> PhotoStore | None:
    """The cache in ``folder`` when it is complete and its fingerprint matches, else None."""
    try:
        index = torch.load(folder / "index.pt", map_location="cpu", weights_only=True)
        if index.get("fingerprint") != fingerprint:
            return None
        heights, widths = index["heights"], index["widths"]
        sizes = (heights * widths * 3).numpy()
        path = folder / "pixels.u8"
        if path.stat().st_size != int(sizes.sum()):
            return None
        pixels = (np.fromfile(path, dtype=np.uint8) if in_memory or sizes.sum() == 0
                  else np.memmap(path, dtype=np.uint8, mode="r"))
    except (OSError, KeyError, RuntimeError, ValueError, AttributeError):
        return None  # missing, partial or foreign: rebuilt
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return PhotoStore(pixels, offsets, heights, widths, index["labels"], 3, folder,
                      not in_memory, list(index.get("skipped", [])))


def photo_store(dataset: Dataset, side: int, cache_dir: Path, *, in_memory: bool = False,
                skip_bad: bool = False, say: Callable[[str], None] | None = None) -> PhotoStore:
    """The photo cache of ``dataset`` at ``side`` pixels, built when missing or stale.

    ``in_memory``: read the pixels into memory rather than memory-mapping them. ``skip_bad``:
    unreadable images are left out (and listed in ``skipped``) instead of stopping the build.
    A cache that cannot be written raises :class:`CacheWriteError` and leaves nothing behind.
    """
    key = source_key(dataset)
    if key is None:
        raise ImgclsError("the photo cache needs a folder or list file of images")
    identity = _digest([key[0], side, "photos", CACHE_VERSION])
    fingerprint = _digest([key[1], side, "photos", CACHE_VERSION])
    folder = Path(cache_dir) / f"photos-{identity[:24]}"
    store = _open(folder, fingerprint, in_memory)
    if store is None:
        if say is not None:
            say(f"decoding {len(dataset)} photos once into {folder} (shorter side {side} px)")  # type: ignore[arg-type]
        _write(folder, dataset, side, fingerprint, skip_bad)
        store = _open(folder, fingerprint, in_memory)
        if store is None:
            raise CacheWriteError(f"the photo cache in {folder} did not read back")
    if not len(store):
        raise ImgclsError(f"no readable images to cache ({len(store.skipped)} skipped)")
    return store
