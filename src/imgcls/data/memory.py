"""The device-resident loader: the whole (small) dataset as one uint8 tensor on the training
device, augmented in bulk.

Small datasets (CIFAR: 150 MB as uint8) fit in device memory many times over, and then a
DataLoader's per-image Python (decode, crop, flip, to-tensor) is the bottleneck, not the model.
:func:`~imgcls.data.decode_cache.decode_to_tensor` decodes a dataset once (cached on disk);
:class:`MemoryLoader` then draws a whole epoch's augmentation at once and applies it with the
tensor ops of :mod:`imgcls.data.batch_ops` per chunk of images, as airbench does per epoch:
random crop with padding (zero, reflect or edge), horizontal flip (random or alternating per
epoch), then per batch float conversion and normalisation as
:func:`imgcls.data.transforms.build_transform` does them (fused: equal up to float32 rounding),
and cutout. :func:`unsupported_transforms` says which configured transforms it cannot make.

Every random number comes from generators seeded with ``(seed, epoch)`` (plus the rank for
augmentation), so a resumed run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from imgcls.config import KEYS, MEMORY_TRANSFORM_KEYS, TransformConfig, choices
from imgcls.config.sizes import ImageSize
from imgcls.data.batch_ops import (
    PAD_MODES,
    Cropper,
    Padding,
    apply_cutout,
    apply_erasing,
    draw_crop_offsets,
    draw_cutout,
    draw_erasing,
    draw_flips,
    gather_crop_flip,
    padding_ltrb,
    window_crop_flip,
)
from imgcls.data.batch_policies import apply_policy, draw_policy, select_draws
from imgcls.data.epoch_batches import EpochBatches
from imgcls.data.targets import stack_labels
from imgcls.data.transforms import apply_preset
from imgcls.runtime import augmentation_seed, stream_seed

FLIP_MODES = choices("transforms.flip_mode")
FLIP_COIN_STREAM = 12_345  # airbench's per-image flip coin: a stream no epoch reaches
CPU_CHUNK = 256  # images augmented together on the CPU: uint8 working set within L2
DEVICE_CHUNK = 8192  # elsewhere: few kernel launches per epoch


def unsupported_transforms(
    cfg: TransformConfig, image_size: ImageSize, in_channels: int = 3,
    explicit: Collection[str] | None = None,
) -> list[str]:
    """The config keys (after the preset is applied; ``explicit`` as :func:`apply_preset`'s)
    :class:`MemoryLoader` cannot reproduce; empty when it makes the same batches as
    :func:`build_transform` would.

    >>> unsupported_transforms(TransformConfig(preset="cifar"), 32)
    []
    >>> unsupported_transforms(TransformConfig(preset="imagenet"), 224)
    ['transforms.center_crop', 'transforms.random_resized_crop']

    An allow-list: a transforms key the schema does not mark ``memory=True`` is unsupported
    whenever it differs from its default, so a new key can never be silently dropped.
    """
    cfg = apply_preset(cfg, image_size, explicit)
    unsupported = [f"transforms.{f.name}" for f in dataclasses.fields(cfg)
                   if f"transforms.{f.name}" not in MEMORY_TRANSFORM_KEYS
                   and getattr(cfg, f.name) != KEYS[f"transforms.{f.name}"].default]
    return unsupported + (["model.in_channels"] if in_channels != 3 else [])


@dataclass(frozen=True)
class Augmentation:
    """What :class:`MemoryLoader` does to training images: a random crop after padding by
    ``crop_padding`` (as ``transforms.crop_padding``; None: no crop) in ``crop_padding_mode``,
    a horizontal flip with probability ``hflip`` (``flip_mode``: random or alternate), a
    ``cutout`` x ``cutout`` square zeroed (0: none), and a rectangle erased with probability
    ``random_erasing`` (torchvision's ``RandomErasing``).

    >>> augment = Augmentation.from_transforms(apply_preset(TransformConfig(preset="cifar"), 32))
    >>> augment.crop_padding, augment.hflip, augment.cutout
    ((4,), 0.5, 0)
    """

    crop_padding: int | Sequence[int] | None = None
    crop_padding_mode: str = "constant"
    hflip: float = 0.0
    flip_mode: str = "random"
    cutout: int = 0
    random_erasing: float = 0.0
    auto_augment: str = "none"

    @classmethod
    def from_transforms(cls, cfg: TransformConfig) -> Augmentation:
        """The augmentation of a TransformConfig (with its preset applied: :func:`apply_preset`)."""
        return cls(crop_padding=tuple(cfg.crop_padding) if cfg.random_crop else None,
                   crop_padding_mode=cfg.crop_padding_mode, hflip=cfg.hflip,
                   flip_mode=cfg.flip_mode, cutout=cfg.cutout,
                   random_erasing=cfg.random_erasing, auto_augment=cfg.auto_augment)


def _check_arguments(images: torch.Tensor, labels: torch.Tensor, augment: Augmentation,
                     chunk_size: int | None) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if augment.flip_mode not in FLIP_MODES:
        raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {augment.flip_mode!r}")
    if augment.crop_padding_mode not in PAD_MODES:
        raise ValueError(f"crop_padding_mode must be one of {tuple(PAD_MODES)}, got "
                         f"{augment.crop_padding_mode!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


def _policy_draws(draws: dict[str, torch.Tensor], index: slice) -> dict[str, torch.Tensor]:
    """The ``transforms.auto_augment`` draws (stored with a ``policy_`` prefix) of ``index``."""
    mine = {k.removeprefix("policy_"): v for k, v in draws.items() if k.startswith("policy_")}
    return select_draws(mine, index)


def _train_padding(crop_padding: int | Sequence[int] | None, mode: str, size: Sequence[int],
                   train: bool) -> Padding | None:
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


class MemoryLoader(EpochBatches):
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

    The augmentation is ``augment`` (an :class:`Augmentation`; in a run, the config's
    ``transforms``), or its fields by name (``crop_padding=[4], hflip=0.5``, ...).

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
        augment: Augmentation | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        chunk_size: int | None = None,
        sampler: str = "random",
        **augment_fields: Any,
    ) -> None:
        if augment is None:
            augment = Augmentation(**augment_fields)
        elif augment_fields:
            raise TypeError(f"pass augment or {', '.join(augment_fields)}, not both")
        _check_arguments(images, labels, augment, chunk_size)
        device = torch.device(device) if device is not None else images.device
        super().__init__(len(images), labels, batch_size=batch_size, train=train,
                         shuffle=shuffle, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank, sampler=sampler, device=device)
        self.images = images.to(self.device).contiguous()
        self.labels = stack_labels(labels).to(self.device)
        self._set_augmentation(augment)
        target = chunk_size or (CPU_CHUNK if self.device.type == "cpu" else DEVICE_CHUNK)
        self.chunk_size = batch_size * math.ceil(target / batch_size)
        # Crop by copying windows of an overlapping strided view on the CPU (fastest there);
        # elsewhere one gather per chunk. Both make the same batches.
        self._window_crop = self.device.type == "cpu"
        self._set_normalization(mean_std, self.images.shape[1])
        self.generator = torch.Generator(device=self.device)

    def _set_augmentation(self, augment: Augmentation) -> None:
        """The training augmentation (none for evaluation) and the alternating flip's coins."""
        self.padding = _train_padding(augment.crop_padding, augment.crop_padding_mode,
                                      self.images.shape[2:], self.train)
        self.padding_mode = augment.crop_padding_mode
        self.hflip = augment.hflip if self.train else 0.0
        self.flip_mode = augment.flip_mode
        self.cutout = augment.cutout if self.train else 0
        self.erasing = augment.random_erasing if self.train else 0.0
        self.policy = augment.auto_augment if self.train else "none"
        # airbench's alternating flip: a fixed coin per image, inverted on odd epochs.
        coin = torch.Generator().manual_seed(stream_seed(self.seed, FLIP_COIN_STREAM))
        self.flip_base = (torch.rand(len(self.images), generator=coin) < 0.5).to(self.device)

    def _draw(self, n: int) -> dict[str, torch.Tensor]:
        """The epoch's augmentation, one entry per image of the epoch, in a fixed draw order."""
        # Augmentations differ per rank, as the DataLoader's worker seeds do.
        g = self.generator
        g.manual_seed(augmentation_seed(self.seed, self.rank, self.epoch))
        dev = self.device
        draws: dict[str, torch.Tensor] = {}
        if self.padding is not None:
            draws["dy"], draws["dx"] = draw_crop_offsets(n, self.padding, g, dev)
        if self.hflip > 0 and self.flip_mode == "random":
            draws["flip"] = draw_flips(n, self.hflip, g, dev)
        if self.cutout > 0:
            _, _, h, w = self.images.shape
            draws["cut_top"], draws["cut_left"] = draw_cutout(n, self.cutout, h, w, g, dev)
        if self.erasing > 0:  # drawn last: the other draws stay those of a run without it
            _, _, h, w = self.images.shape
            draws["erase"] = torch.stack(draw_erasing(n, self.erasing, h, w, g, dev))
        if self.policy != "none":  # likewise drawn after the others
            draws.update({f"policy_{k}": v for k, v in draw_policy(
                self.policy, n, tuple(self.images.shape[2:]), g, dev).items()})
        return draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        draws = self._draw(len(order))
        if self.hflip > 0 and self.flip_mode == "alternate":
            draws["flip"] = self.flip_base[order] ^ bool(self.epoch % 2)
        labels = self.labels[order]
        used = min(len(order), len(self) * self.batch_size)  # drop_last leaves a tail
        crop = self._cropper(draws, len(order), min(self.chunk_size, used))
        first = self._take_first_batch()
        # chunk_size is a whole number of batches, so batches never straddle chunks
        for start in range(first, used, self.chunk_size):
            stop = min(start + self.chunk_size, used)
            block = crop(order[start:stop], start, stop)  # uint8, cropped and flipped
            if self.policy != "none":
                block = apply_policy(block, _policy_draws(draws, slice(start, stop)))
            for b in range(start, stop, self.batch_size):
                e = min(b + self.batch_size, stop)
                x = self.normalize(block[b - start : e - start])
                if self.cutout > 0:
                    apply_cutout(x, self.cutout, draws["cut_top"][b:e], draws["cut_left"][b:e],
                                 inplace=True)
                if self.erasing > 0:
                    apply_erasing(x, *draws["erase"][:, b:e])
                yield x, labels[b:e]

    def _cropper(self, draws: dict[str, torch.Tensor], n: int, chunk: int) -> Cropper:
        """Crops and flips the epoch's images ``start:stop`` as drawn: by copying windows on the
        CPU, by a gather of pixels elsewhere (:mod:`imgcls.data.batch_ops`)."""
        if self.padding is None and "flip" not in draws:
            return lambda idx, start, stop: self.images.index_select(0, idx)
        zero = torch.zeros(n, dtype=torch.int64, device=self.device)
        crop_flip = window_crop_flip if self._window_crop else gather_crop_flip
        return crop_flip(self.images, self.padding or (0, 0, 0, 0), self.padding_mode,
                         draws.get("dy", zero), draws.get("dx", zero), draws.get("flip"), chunk)
