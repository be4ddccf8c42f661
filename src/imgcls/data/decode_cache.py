"""Decoding a dataset once into a uint8 ``[N, C, H, W]`` tensor, and the on-disk cache of it.

:func:`decode_to_tensor` resizes as :func:`imgcls.data.transforms.build_transform` does, so the
pixels equal what the DataLoader path would crop from; with a cache folder the result is saved
under a name from where the images come from and reused while their fingerprint (paths, sizes,
mtimes or an array checksum) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from imgcls.config.sizes import ImageSize, saved_size, size_hw
from imgcls.data.targets import label_key, stack_labels
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write

# In the fingerprint of decoded image files: caches from before EXIF orientation was applied
# (version 1) hold phone photos sideways and are rebuilt, not reused.
FILES_DECODE_VERSION = 2


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def source_key(dataset: Any) -> tuple[Any, Any] | None:
    """(identity, fingerprint) of where ``dataset``'s images come from; None: not cacheable.

    The identity names the cache file; the fingerprint (sizes, mtimes, content checksums)
    decides whether that file is still valid.
    """
    if isinstance(dataset, Subset):
        inner = source_key(dataset.dataset)
        if inner is None:
            return None
        picked = _digest([int(i) for i in dataset.indices])
        return ["subset", picked, inner[0]], ["subset", picked, inner[1]]
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        paths = [(str(p), label_key(y)) for p, y in samples]
        stats = []
        for path, _ in paths:
            try:
                st = os.stat(path)
            except OSError:  # gone or a broken link: no cache; decoding names the file
                return None
            stats.append((st.st_size, st.st_mtime_ns))
        fingerprint = ["files", FILES_DECODE_VERSION, _digest(paths), _digest(stats)]
        return ["files", _digest(paths)], fingerprint
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray):
        root = str(getattr(dataset, "root", ""))
        checksum = hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=16).hexdigest()
        targets = _digest([label_key(t) for t in getattr(dataset, "targets", [])])
        ident = ["array", type(dataset).__name__, root, list(data.shape)]
        return ident, ident + [checksum, targets]
    return None


def _decode(dataset: Dataset, size: ImageSize, channels: int,
            resize: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset)  # type: ignore[arg-type]
    height, width = size_hw(size)
    images = torch.empty(n, channels, height, width, dtype=torch.uint8)
    labels: list[Any] = []
    mode = "L" if channels == 1 else "RGB"
    for i in range(n):
        image, label = dataset[i]
        if hasattr(image, "convert") and image.mode != mode:
            image = image.convert(mode)
        # The same resize as build_transform's (on the PIL image), so the decoded pixels equal
        # what the DataLoader path would crop from: ResizeIfNeeded, or the evaluation's resize
        # of the shorter side and central crop.
        if resize is not None:
            image = v2.functional.resize(image, resize, antialias=True)
            image = v2.functional.center_crop(image, [height, width])
        elif tuple(v2.functional.get_size(image)) != (height, width):
            image = v2.functional.resize(image, [height, width], antialias=True)
        tensor = v2.functional.to_image(image)
        if tensor.dtype != torch.uint8 or tensor.shape[0] != channels:
            raise ImgclsError(
                f"data.loader=memory needs PIL images or uint8 [{channels}, H, W] tensors; item "
                f"{i} is {tensor.dtype} {tuple(tensor.shape)} (use data.loader=dataloader)"
            )
        images[i] = tensor
        labels.append(label)
    return images, stack_labels(labels)


def decode_to_tensor(
    dataset: Dataset,
    size: ImageSize,
    *,
    channels: int = 3,
    cache_dir: str | Path | None = None,
    resize: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a map-style dataset of ``(PIL image, label)`` into ``(uint8 [N, C, H, W], int64
    [N])`` at ``size`` (an int: square; or ``(H, W)``), resizing (antialiased bilinear) images
    of another size; with ``resize``, the evaluation's geometry instead: the shorter side
    resized to ``resize``, then the central H x W crop.

    With ``cache_dir`` the result is saved there (atomically) as ``<key>.pt`` and reused while
    the sources are unchanged: file paths, sizes and mtimes for datasets with ``samples``, the
    array's shape and checksum for CIFAR-like datasets with ``data``; changed sources rebuild it.
    Datasets of neither kind are decoded every time.
    """
    key = source_key(dataset) if cache_dir is not None else None
    if key is None or cache_dir is None:
        return _decode(dataset, size, channels, resize)
    # old names still hit: a square size stays the int it was
    shape = [saved_size(size), channels] + ([resize] if resize is not None else [])
    identity, fingerprint = _digest([key[0], *shape]), _digest([key[1], *shape])
    path = Path(cache_dir) / f"decoded-{identity[:24]}.pt"
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                return cached["images"], cached["labels"]
        except Exception:  # a corrupt or foreign file: rebuild it
            pass
    images, labels = _decode(dataset, size, channels, resize)
    record = {"fingerprint": fingerprint, "images": images, "labels": labels}
    atomic_write(path, lambda handle: torch.save(record, handle))
    return images, labels
