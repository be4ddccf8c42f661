"""The whole (small) dataset as one uint8 tensor on the training device, augmented in bulk.

Small datasets (CIFAR: 150 MB as uint8) fit in device memory many times over, and then a
DataLoader's per-image Python (decode, crop, flip, to-tensor) is the bottleneck, not the model.
:func:`decode_to_tensor` decodes a dataset once (cached on disk); :class:`MemoryLoader` then
draws a whole epoch's augmentation at once and applies it with a few tensor ops per chunk of
images, as airbench does per epoch: random crop with padding (zero, reflect or edge),
horizontal flip (random or alternating per epoch), then per batch float conversion and
normalisation as :func:`imgcls.data.transforms.build_transform` does them (fused: equal up to
float32 rounding), and cutout.

Every random number comes from generators seeded with ``(seed, epoch)`` (plus the rank for
augmentation), so a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from imgcls.config import TransformConfig
from imgcls.data.sampling import SAMPLERS, balanced_indices, shard_order, shard_size
from imgcls.data.transforms import _channels, apply_preset
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write
from imgcls.runtime import stream_seed

FLIP_MODES = ("random", "alternate")
FLIP_COIN_STREAM = 12_345  # airbench's per-image flip coin: a stream no epoch reaches

# transforms.crop_padding_mode (torchvision's padding_mode names) -> torch.nn.functional.pad's
PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
# In the fingerprint of decoded image files: caches from before EXIF orientation was applied
# (version 1) hold phone photos sideways and are rebuilt, not reused.
FILES_DECODE_VERSION = 2


def padding_ltrb(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """``transforms.crop_padding`` (1, 2 or 4 ints) as torchvision's (left, top, right, bottom).

    >>> padding_ltrb([4]), padding_ltrb([1, 2]), padding_ltrb([0, 2, 3, 4])
    ((4, 4, 4, 4), (1, 2, 1, 2), (0, 2, 3, 4))
    """
    values = [int(padding)] if isinstance(padding, int) else [int(p) for p in padding]
    if len(values) == 1:
        return (values[0],) * 4  # type: ignore[return-value]
    if len(values) == 2:
        return values[0], values[1], values[0], values[1]
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise ValueError(f"padding must be 1, 2 or 4 ints, got {values}")


def unsupported_transforms(
    cfg: TransformConfig, image_size: int, in_channels: int = 3,
    explicit: Collection[str] | None = None,
) -> list[str]:
    """The config keys (after the preset is applied; ``explicit`` as :func:`apply_preset`'s)
    :class:`MemoryLoader` cannot reproduce; empty when it makes the same batches as
    :func:`build_transform` would.

    >>> unsupported_transforms(TransformConfig(preset="cifar"), 32)
    []
    >>> unsupported_transforms(TransformConfig(preset="imagenet"), 224)
    ['transforms.random_resized_crop', 'transforms.center_crop']
    """
    cfg = apply_preset(cfg, image_size, explicit)
    checks = [
        ("transforms.random_resized_crop", cfg.random_resized_crop),
        ("transforms.resize", cfg.resize is not None),
        ("transforms.center_crop", cfg.center_crop),
        ("transforms.rotation", cfg.rotation > 0),
        ("transforms.affine_degrees", cfg.affine_degrees > 0),
        ("transforms.affine_translate", cfg.affine_translate > 0),
        ("transforms.affine_scale", bool(cfg.affine_scale)),
        ("transforms.color_jitter", bool(cfg.color_jitter)),
        ("transforms.grayscale", cfg.grayscale > 0),
        ("model.in_channels", in_channels != 3),
    ]
    return [key for key, bad in checks if bad]


# --------------------------------------------------------------------------- batch augmentations


def pad_images(images: torch.Tensor, padding: tuple[int, int, int, int],
               mode: str = "constant") -> torch.Tensor:
    """Pad ``[N, C, H, W]`` images by ``(left, top, right, bottom)`` the way torchvision's
    ``RandomCrop(padding_mode=mode)`` pads one image: ``constant`` (zeros), ``reflect`` (mirror
    without repeating the edge pixel; each pad must be smaller than the image) or ``edge``.

    >>> pad_images(torch.tensor([[[[1, 2, 3]]]]), (2, 0, 1, 0), "reflect").tolist()
    [[[[3, 2, 1, 2, 3, 2]]]]
    """
    left, top, right, bottom = padding
    return torch.nn.functional.pad(images, (left, right, top, bottom), mode=PAD_MODES[mode])


def _windows(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Every ``h`` x ``w`` window of every image of a contiguous ``[N, C, Hp, Wp]`` tensor, as one
    overlapping (strided, copy-free) view ``[K, C, h, w]``: window ``(i, y, x)`` is entry
    ``i * C * Hp * Wp + y * Wp + x``."""
    n, c, hp, wp = padded.shape
    last = (n - 1) * c * hp * wp + (hp - h) * wp + (wp - w)
    return padded.as_strided((last + 1, c, h, w), (1, hp * wp, wp, 1))


def _crop_padded(padded: torch.Tensor, offsets: torch.Tensor, h: int, w: int,
                 slots: torch.Tensor | None = None) -> torch.Tensor:
    """Image ``slots[i]`` (default ``i``) of ``padded`` cropped at flat offset ``offsets[i]``
    (``dy * Wp + dx``): one ``index_select`` of whole windows (row copies), not a gather of
    single pixels."""
    n, c, hp, wp = padded.shape
    if len(offsets) == 0:
        return padded.new_empty((0, c, h, w))
    if slots is None:
        slots = torch.arange(len(offsets), device=padded.device)
    return _windows(padded.contiguous(), h, w).index_select(0, slots * (c * hp * wp) + offsets)


def batch_crop(
    images: torch.Tensor, padding: tuple[int, int, int, int], generator: torch.Generator,
    mode: str = "constant",
) -> torch.Tensor:
    """RandomCrop(H x W, padding, padding_mode=mode) for every image of a batch, each with its
    own offset.

    Padding as :func:`pad_images`, then offsets drawn uniformly from ``[0, top + bottom]`` x
    ``[0, left + right]``, the positions torchvision's ``RandomCrop`` can pick.
    """
    left, top, right, bottom = padding
    if left + top + right + bottom == 0:
        return images
    n, _, h, w = images.shape
    dev = images.device
    dy = torch.randint(0, top + bottom + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, left + right + 1, (n,), generator=generator, device=dev)
    padded = pad_images(images, padding, mode)
    return _crop_padded(padded, dy * (w + left + right) + dx, h, w)


def batch_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose entry of the bool vector ``flip`` is true."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _cutout_mask(shape: torch.Size, size: int, top: torch.Tensor,
                 left: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` bool, true on the ``size`` x ``size`` square at ``(top, left)``."""
    _, _, h, w = shape
    dev = top.device
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a random position (inside the image) per sample."""
    n, _, h, w = images.shape
    size = min(size, h, w)
    dev = images.device
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=dev)
    return images.masked_fill(_cutout_mask(images.shape, size, top, left), 0)


# --------------------------------------------------------------------------- the loader

CPU_CHUNK = 256  # images augmented together on the CPU: uint8 working set within L2
DEVICE_CHUNK = 8192  # elsewhere: few kernel launches per epoch


def _check_arguments(images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                     train: bool, shuffle: bool, flip_mode: str, crop_padding_mode: str,
                     num_replicas: int, rank: int, chunk_size: int | None,
                     sampler: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if flip_mode not in FLIP_MODES:
        raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {flip_mode!r}")
    if batch_size < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"bad batch_size={batch_size} or rank={rank}/{num_replicas}")
    if crop_padding_mode not in PAD_MODES:
        raise ValueError(f"crop_padding_mode must be one of {tuple(PAD_MODES)}, got "
                         f"{crop_padding_mode!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if sampler not in SAMPLERS or (sampler == "balanced" and train and not shuffle):
        raise ValueError(f"sampler must be one of {SAMPLERS} (balanced with shuffle=True), "
                         f"got {sampler!r}")


def _train_padding(crop_padding: int | Sequence[int] | None, mode: str, size: Sequence[int],
                   train: bool) -> tuple[int, int, int, int] | None:
    """The random crop's padding (left, top, right, bottom), or None: no crop."""
    if crop_padding is None or not train:
        return None
    padding = padding_ltrb(crop_padding)
    if sum(padding) == 0:
        return None  # RandomCrop to the same size without padding: the identity
    if mode == "reflect" and max(padding) >= min(size):
        raise ValueError(f"reflect padding {padding} needs images larger than each pad, "
                         f"got {tuple(size)}")
    return padding


def _fused_normalize(mean: list[float], std: list[float],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``ToDtype(scale=True)`` then ``Normalize`` as one multiply-add: [C, 1, 1] scale, shift."""
    if not all(std):
        raise ValueError("std evaluated to zero, leading to division by zero.")
    # Normalize's float32 statistics, combined in float64 and rounded once.
    mean64 = torch.tensor(mean, dtype=torch.float32).double().view(-1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float32).double().view(-1, 1, 1)
    return ((1.0 / (255.0 * std64)).float().to(device),
            (-mean64 / std64).float().to(device))


class MemoryLoader:
    """A :class:`~imgcls.data.loaders.BatchLoader` over a uint8 ``[N, C, H, W]`` tensor.

    Training (``train=True``): each epoch is a permutation seeded with ``(seed, epoch)`` only
    (the same on every rank, and the same one :class:`EpochLoader`'s sampler draws), of which
    rank ``rank`` takes every ``num_replicas``-th index, padded with repeats to equal shares
    like ``DistributedSampler`` (``sampler="balanced"``: the order is
    :func:`~imgcls.data.sampling.balanced_indices`, every class equally often, sharded the
    same way). The augmentation of the whole epoch is drawn when iteration
    starts (crop offsets, flips, cutout squares: one vector each, from a generator seeded with
    ``(seed, rank, epoch)``), then applied to ``chunk_size`` images at a time (gathered into a
    zero-bordered buffer, then cropped and flipped by one copy of whole windows on the CPU, one
    gather of pixels elsewhere); each batch is a slice of such a chunk converted to float,
    normalised and cut out. No float copy of the data is kept. ``flip_mode="alternate"``
    (airbench) flips each image on odd epochs exactly when it was not flipped on even ones, from
    a per-image coin seeded with ``seed``. Evaluation (``train=False``): fixed order, no
    augmentation, a strided share without repeats (like :func:`imgcls.data.loaders.shard`).

    Float conversion and normalisation are :func:`build_transform`'s ``ToDtype(scale=True)`` and
    ``Normalize`` fused into one multiply-add per channel (equal up to float32 rounding, within
    1e-6). Cutout zeroes the square after normalisation (the mean colour when normalised, black
    with ``mean_std=None``).
    ``chunk_size`` (default: 256 images on the CPU, to stay in cache; 8192 elsewhere, rounded up
    to whole batches) changes speed and memory only, never the batches. Batches are contiguous
    NCHW: on the CPU, normalising in channels_last layout costs more than converting afterwards
    (which ``train.channels_last`` does).

    >>> images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    >>> loader = MemoryLoader(images, torch.arange(10), batch_size=4, train=True, hflip=0.5)
    >>> [tuple(x.shape) for x, _ in loader]
    [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
        crop_padding: int | Sequence[int] | None = None,
        crop_padding_mode: str = "constant",
        hflip: float = 0.0,
        flip_mode: str = "random",
        cutout: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        chunk_size: int | None = None,
        sampler: str = "random",
    ) -> None:
        _check_arguments(images, labels, batch_size=batch_size, train=train, shuffle=shuffle,
                         flip_mode=flip_mode, crop_padding_mode=crop_padding_mode,
                         num_replicas=num_replicas, rank=rank, chunk_size=chunk_size,
                         sampler=sampler)
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.shuffle = shuffle and train
        # balanced: the epoch's order comes from the labels (kept on the CPU, where it is drawn)
        self.balanced_labels = (torch.as_tensor(labels, dtype=torch.int64).cpu()
                                if sampler == "balanced" and train else None)
        self.drop_last = drop_last and train
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self.padding = _train_padding(crop_padding, crop_padding_mode, images.shape[2:], train)
        self.padding_mode = crop_padding_mode
        self.hflip = hflip if train else 0.0
        self.flip_mode = flip_mode
        self.cutout = cutout if train else 0
        target = chunk_size or (CPU_CHUNK if self.device.type == "cpu" else DEVICE_CHUNK)
        self.chunk_size = batch_size * math.ceil(target / batch_size)
        # Crop by copying windows of an overlapping strided view on the CPU (fastest there);
        # elsewhere one gather per chunk. Both make the same batches.
        self._window_crop = self.device.type == "cpu"
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.scale: torch.Tensor | None = None  # [C, 1, 1] float32: x * scale + shift
        self.shift: torch.Tensor | None = None
        if mean_std is not None:
            channels = self.images.shape[1]
            self.mean = _channels(list(mean_std[0]), channels)
            self.std = _channels(list(mean_std[1]), channels)
            self.scale, self.shift = _fused_normalize(self.mean, self.std, self.device)
        # airbench's alternating flip: a fixed coin per image, inverted on odd epochs.
        coin = torch.Generator().manual_seed(stream_seed(seed, FLIP_COIN_STREAM))
        self.flip_base = (torch.rand(len(images), generator=coin) < 0.5).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.epoch = 0
        self.first_batch = 0  # see start_at
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, batch: int) -> None:
        """The next pass begins at batch ``batch`` of the epoch (a run resumed mid-epoch): the
        epoch's order and augmentation are drawn whole, so the batches are those an
        uninterrupted pass yields, and the ones before it are never assembled."""
        self.first_batch = batch

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (repeats included)."""
        n = len(self.images)
        if not self.train:
            return len(range(self.rank, n, self.num_replicas))
        return shard_size(n, self.num_replicas, self.drop_last)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in order (CPU int64)."""
        n = len(self.images)
        if not self.train:
            return torch.arange(self.rank, n, self.num_replicas)
        if self.balanced_labels is not None:  # the order EpochLoader's BalancedSampler draws
            order = balanced_indices(self.balanced_labels, self.seed, self.epoch)
        elif self.shuffle:
            # The seed DistributedSampler (EpochLoader) uses: the same order as the DataLoader.
            g = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return shard_order(order, self.num_replicas, self.rank, self.drop_last)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _draw(self, n: int) -> dict[str, torch.Tensor]:
        """The epoch's augmentation, one entry per image of the epoch, in a fixed draw order."""
        # Augmentations differ per rank (seed + rank), as the DataLoader's worker seeds do.
        g = self.generator
        g.manual_seed(stream_seed(self.seed + self.rank, self.epoch) * 7 + 3)  # not the shuffle's
        dev = self.device
        draws: dict[str, torch.Tensor] = {}
        if self.padding is not None:
            left, top, right, bottom = self.padding
            draws["dy"] = torch.randint(0, top + bottom + 1, (n,), generator=g, device=dev)
            draws["dx"] = torch.randint(0, left + right + 1, (n,), generator=g, device=dev)
        if self.hflip > 0 and self.flip_mode == "random":
            draws["flip"] = torch.rand(n, generator=g, device=dev) < self.hflip
        if self.cutout > 0:
            _, _, h, w = self.images.shape
            size = min(self.cutout, h, w)
            draws["cut_top"] = torch.randint(0, h - size + 1, (n,), generator=g, device=dev)
            draws["cut_left"] = torch.randint(0, w - size + 1, (n,), generator=g, device=dev)
        return draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        draws = self._draw(len(order))
        if self.hflip > 0 and self.flip_mode == "alternate":
            draws["flip"] = self.flip_base[order] ^ bool(self.epoch % 2)
        labels = self.labels[order]
        used = min(len(order), len(self) * self.batch_size)  # drop_last leaves a tail
        chunk = min(self.chunk_size, used)
        if self.padding is None and "flip" not in draws:
            augment = self._gather_only
        elif self._window_crop:
            augment = self._window_augment(draws, len(order), chunk)
        else:
            augment = self._gather_augment(draws, len(order), chunk)
        first, self.first_batch = self.first_batch * self.batch_size, 0
        # chunk_size is a whole number of batches, so batches never straddle chunks
        for start in range(first, used, self.chunk_size):
            stop = min(start + self.chunk_size, used)
            block = augment(order[start:stop], start, stop)  # uint8, cropped and flipped
            for b in range(start, stop, self.batch_size):
                e = min(b + self.batch_size, stop)
                x = self.normalize(block[b - start : e - start])
                if self.cutout > 0:
                    size = min(self.cutout, *x.shape[2:])
                    x.masked_fill_(_cutout_mask(x.shape, size, draws["cut_top"][b:e],
                                                draws["cut_left"][b:e]), 0)
                yield x, labels[b:e]

    def _gather_only(self, idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.images.index_select(0, idx)

    def _window_augment(self, draws: dict[str, torch.Tensor], n: int,
                        chunk: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """Crop and flip by copying windows (the CPU's way): a chunk's images go into the interior
        of slots ``[0, k)`` of a zero-bordered buffer, their mirror images into slots ``[k, 2k)``,
        then one ``index_select`` of whole windows crops and flips them all. The buffer's left and
        right borders are both ``max(left, right)`` wide, since mirroring swaps them:
        ``flip(crop(pad(x), dy, dx)) = crop(pad(flip(x)), dy, left + right - dx)`` with the mirror
        image's left border being the original's right one. Reflect and edge padding fill the
        whole slot with the padded image instead (their borders are mirror-symmetric, so the same
        identity holds)."""
        left, top, right, bottom = self.padding or (0, 0, 0, 0)
        side = max(left, right)
        filled = self.padding is not None and self.padding_mode != "constant"
        _, c, h, w = self.images.shape
        row = w + 2 * side
        zero = torch.zeros(n, dtype=torch.int64, device=self.device)
        shift = draws["dy"] * row if "dy" in draws else zero
        col = draws.get("dx", zero)
        offsets = shift + (side - left) + col
        flip = draws.get("flip")
        if flip is not None:
            offsets = torch.where(flip, shift + (side + left) - col, offsets)
        buffer = self.images.new_zeros(
            (chunk * (2 if flip is not None else 1), c, h + top + bottom, row))

        def augment(idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            k = len(idx)
            slots = buffer[: 2 * k if flip is not None else k]
            interior = slots[:, :, top : top + h, side : side + w]
            # Gathering into a contiguous tensor and copying that is faster than
            # index_select(out=interior); mirroring it is faster than mirroring the interior.
            images = self.images.index_select(0, idx)
            if filled:
                images = pad_images(images, (side, top, side, bottom), self.padding_mode)
                interior = slots
            interior[:k].copy_(images)
            slot = torch.arange(k, device=idx.device)
            if flip is not None:
                interior[k:].copy_(images.flip(-1))
                slot = slot + k * flip[start:stop]
            return _crop_padded(slots, offsets[start:stop], h, w, slot)

        return augment

    def _gather_augment(self, draws: dict[str, torch.Tensor], n: int,
                        chunk: int) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """Crop and flip with one gather of single pixels from a padded chunk (the GPU's way: one
        kernel, and no overlapping views, which not every backend copies lazily)."""
        left, top, right, bottom = self.padding or (0, 0, 0, 0)
        _, c, h, w = self.images.shape
        dev = self.device
        buffer = self.images.new_zeros((chunk, c, h + top + bottom, w + left + right))
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        channels = torch.arange(c, device=dev)[None, :, None, None]
        zero = torch.zeros(n, dtype=torch.int64, device=dev)
        dy, dx = draws.get("dy", zero), draws.get("dx", zero)
        flip = draws.get("flip")

        def augment(idx: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            k = len(idx)
            padded = buffer[:k]
            if self.padding is not None and self.padding_mode != "constant":
                padded.copy_(pad_images(self.images.index_select(0, idx), self.padding,
                                        self.padding_mode))
            else:
                padded[:, :, top : top + h, left : left + w] = self.images.index_select(0, idx)
            ys = (dy[start:stop, None] + rows)[:, None, :, None]
            xs = cols[None, :].expand(k, w)
            if flip is not None:  # column j of a mirrored crop is column w - 1 - j of the crop
                xs = torch.where(flip[start:stop, None], w - 1 - xs, xs)
            xs = (dx[start:stop, None] + xs)[:, None, None, :]
            picked = torch.arange(k, device=dev)[:, None, None, None]
            return padded[picked, channels, ys, xs]

        return augment

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images (on the loader's device) as float32 batches are made of,
        without augmentation: e.g. ``loader.normalize(loader.images[:5000])`` for a
        data-dependent initialisation.

        ``ToDtype(float32, scale=True)`` then ``Normalize`` as one multiply-add per channel,
        ``x * (1 / (255 std)) - mean / std``: equal to build_transform's ``(x / 255 - mean) /
        std`` up to float32 rounding (a few ulps, under 1e-6 for image statistics), and 15-20%
        faster on the CPU than the three separate steps."""
        out = images.to(torch.float32)
        if self.scale is not None and self.shift is not None:
            return out.mul_(self.scale).add_(self.shift)
        return out.mul_(1.0 / 255)  # exactly ToDtype(float32, scale=True)


# --------------------------------------------------------------------------- decode + disk cache


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _source_key(dataset: Any) -> tuple[Any, Any] | None:
    """(identity, fingerprint) of where ``dataset``'s images come from; None: not cacheable.

    The identity names the cache file; the fingerprint (sizes, mtimes, content checksums)
    decides whether that file is still valid.
    """
    if isinstance(dataset, Subset):
        inner = _source_key(dataset.dataset)
        if inner is None:
            return None
        picked = _digest([int(i) for i in dataset.indices])
        return ["subset", picked, inner[0]], ["subset", picked, inner[1]]
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        paths = [(str(p), int(y)) for p, y in samples]
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
        targets = _digest([int(t) for t in getattr(dataset, "targets", [])])
        ident = ["array", type(dataset).__name__, root, list(data.shape)]
        return ident, ident + [checksum, targets]
    return None


def _decode(dataset: Dataset, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset)  # type: ignore[arg-type]
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    mode = "L" if channels == 1 else "RGB"
    for i in range(n):
        image, label = dataset[i]
        if hasattr(image, "convert") and image.mode != mode:
            image = image.convert(mode)
        # The same resize as build_transform's ResizeIfNeeded (on the PIL image), so the
        # decoded pixels equal what the DataLoader path would crop from.
        if tuple(v2.functional.get_size(image)) != (size, size):
            image = v2.functional.resize(image, [size, size], antialias=True)
        tensor = v2.functional.to_image(image)
        if tensor.dtype != torch.uint8 or tensor.shape[0] != channels:
            raise ImgclsError(
                f"data.loader=memory needs PIL images or uint8 [{channels}, H, W] tensors; item "
                f"{i} is {tensor.dtype} {tuple(tensor.shape)} (use data.loader=dataloader)"
            )
        images[i] = tensor
        labels[i] = int(label)
    return images, labels


def decode_to_tensor(
    dataset: Dataset,
    size: int,
    *,
    channels: int = 3,
    cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a map-style dataset of ``(PIL image, label)`` into ``(uint8 [N, C, size, size],
    int64 [N])``, resizing (antialiased bilinear) images that are not ``size`` x ``size``.

    With ``cache_dir`` the result is saved there (atomically) as ``<key>.pt`` and reused while
    the sources are unchanged: file paths, sizes and mtimes for datasets with ``samples``, the
    array's shape and checksum for CIFAR-like datasets with ``data``; changed sources rebuild it.
    Datasets of neither kind are decoded every time.
    """
    key = _source_key(dataset) if cache_dir is not None else None
    if key is None or cache_dir is None:
        return _decode(dataset, size, channels)
    identity, fingerprint = _digest([key[0], size, channels]), _digest([key[1], size, channels])
    path = Path(cache_dir) / f"decoded-{identity[:24]}.pt"
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                return cached["images"], cached["labels"]
        except Exception:  # a corrupt or foreign file: rebuild it
            pass
    images, labels = _decode(dataset, size, channels)
    record = {"fingerprint": fingerprint, "images": images, "labels": labels}
    atomic_write(path, lambda handle: torch.save(record, handle))
    return images, labels
