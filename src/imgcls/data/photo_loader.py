"""The photo loader: training batches of photos from the decoded cache, augmented as whole
batches with tensor ops.

Per epoch it draws every image's augmentation at once (random-resized-crop boxes, flips,
colour factors and orders, greyscale coins, erasing rectangles: one generator seeded with
``(seed, rank, epoch)``, like :class:`~imgcls.data.memory.MemoryLoader`), so a run resumed
part-way sees exactly the batches an uninterrupted one would. Per batch: each image's box is
cut from the memory-mapped cache (a view, no decode), the crops are resampled to the training
size in one ``roi_align``, then flipped, colour-jittered, greyed, normalised and erased as
torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``,
``RandomGrayscale``, ``Normalize`` and ``RandomErasing`` would, per image. Evaluation does not
come through here: validation images are decoded once with the evaluation's exact resize and
central crop (:func:`~imgcls.data.decode_cache.decode_to_tensor`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from imgcls.config import KEYS, PHOTO_TRANSFORM_KEYS, TransformConfig
from imgcls.config.sizes import ImageSize, size_hw
from imgcls.data.batch_ops import apply_cutout, apply_erasing, draw_cutout, draw_erasing, draw_flips
from imgcls.data.batch_policies import apply_policy, draw_policy
from imgcls.data.epoch_batches import EpochBatches
from imgcls.data.memory import FLIP_COIN_STREAM, _policy_draws
from imgcls.data.photo_cache import PhotoStore
from imgcls.data.photo_ops import (
    apply_color_jitter,
    apply_grayscale,
    draw_color_jitter,
    draw_resized_crops,
    resample_crops,
)
from imgcls.data.transforms import apply_preset
from imgcls.runtime import augmentation_seed, stream_seed


def photo_unsupported(cfg: TransformConfig, image_size: ImageSize, in_channels: int = 3,
                      explicit: Collection[str] | None = None) -> list[str]:
    """The config keys (after the preset is applied) :class:`PhotoLoader` cannot reproduce;
    empty when it can train this run. An allow-list, as the memory loader's: it needs the
    random resized crop, and every transforms key in use must be marked ``photo=True``."""
    cfg = apply_preset(cfg, image_size, explicit)
    unsupported = [f"transforms.{f.name}" for f in dataclasses.fields(cfg)
                   if f"transforms.{f.name}" not in PHOTO_TRANSFORM_KEYS
                   and getattr(cfg, f.name) != KEYS[f"transforms.{f.name}"].default]
    if not cfg.random_resized_crop:
        unsupported.insert(0, "transforms.random_resized_crop=false")
    return unsupported + (["model.in_channels"] if in_channels != 3 else [])


@dataclass(frozen=True)
class PhotoAugmentation:
    """What :class:`PhotoLoader` does to a training photo, in this order: a random resized
    crop, a horizontal flip (``flip_mode`` random or alternate), colour jitter ``[brightness,
    contrast, saturation, hue]`` (empty: none), greyscale with probability ``grayscale``, the
    ``auto_augment`` policy, then after normalisation a ``cutout`` square and random erasing
    with probability ``random_erasing``."""

    hflip: float = 0.0
    flip_mode: str = "random"
    color_jitter: tuple[float, ...] = ()
    grayscale: float = 0.0
    cutout: int = 0
    random_erasing: float = 0.0
    auto_augment: str = "none"

    @classmethod
    def from_transforms(cls, cfg: TransformConfig) -> PhotoAugmentation:
        """The augmentation of a TransformConfig (with its preset applied)."""
        return cls(hflip=cfg.hflip, flip_mode=cfg.flip_mode,
                   color_jitter=tuple(cfg.color_jitter), grayscale=cfg.grayscale,
                   cutout=cfg.cutout, random_erasing=cfg.random_erasing,
                   auto_augment=cfg.auto_augment)


class PhotoLoader(EpochBatches):
    """Training batches of ``image_size`` crops (an int: square; or ``(H, W)``) of a
    :class:`PhotoStore`, on
    ``device``, normalised by ``mean_std``; order and sharding as :class:`EpochBatches`.

    >>> import numpy as np
    >>> store = PhotoStore(np.zeros(4 * 30 * 40 * 3, np.uint8), np.arange(4) * 3600,
    ...     torch.full((4,), 30), torch.full((4,), 40), torch.arange(4), 3, None, False, [])
    >>> [tuple(x.shape) for x, _ in PhotoLoader(store, image_size=16, batch_size=3)]
    [(3, 3, 16, 16), (1, 3, 16, 16)]
    """

    def __init__(self, store: PhotoStore, *, image_size: ImageSize, batch_size: int,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu",
                 mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
                 augment: PhotoAugmentation | None = None, num_replicas: int = 1,
                 rank: int = 0, sampler: str = "random") -> None:
        super().__init__(len(store), store.labels, batch_size=batch_size, train=True,
                         shuffle=shuffle, drop_last=drop_last, seed=seed,
                         num_replicas=num_replicas, rank=rank, sampler=sampler,
                         device=torch.device(device))
        self.store = store
        self.image_size = size_hw(image_size)
        self.augment = augment or PhotoAugmentation()
        self.labels = store.labels
        self._set_normalization(mean_std, store.channels)
        self.generator = torch.Generator()
        coin = torch.Generator().manual_seed(stream_seed(seed, FLIP_COIN_STREAM))
        self.flip_base = torch.rand(len(store), generator=coin) < 0.5

    def _draw(self, order: torch.Tensor) -> dict[str, torch.Tensor]:
        """The epoch's augmentation for the images ``order``, in a fixed draw order (CPU)."""
        g, aug, n = self.generator, self.augment, len(order)
        g.manual_seed(augmentation_seed(self.seed, self.rank, self.epoch))
        draws = {"boxes": draw_resized_crops(self.store.heights[order],
                                             self.store.widths[order], g)}
        cpu = torch.device("cpu")
        if aug.hflip > 0 and aug.flip_mode == "random":
            draws["flip"] = draw_flips(n, aug.hflip, g, cpu)
        elif aug.hflip > 0:  # airbench's alternate flip: a fixed coin, inverted on odd epochs
            draws["flip"] = self.flip_base[order] ^ bool(self.epoch % 2)
        if aug.color_jitter and any(aug.color_jitter):
            draws["jitter"], draws["jitter_order"] = draw_color_jitter(n, aug.color_jitter, g)
        if aug.grayscale > 0:
            draws["gray"] = torch.rand(n, generator=g) < aug.grayscale
        h, w = self.image_size
        if aug.cutout > 0:
            draws["cut_top"], draws["cut_left"] = draw_cutout(n, aug.cutout, h, w, g, cpu)
        if aug.random_erasing > 0:
            draws["erase"] = torch.stack(draw_erasing(n, aug.random_erasing, h, w, g, cpu))
        if aug.auto_augment != "none":
            draws.update({f"policy_{k}": v for k, v in draw_policy(
                aug.auto_augment, n, self.image_size, g, cpu).items()})
        return draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        draws = self._draw(order)
        used = min(len(order), len(self) * self.batch_size)  # drop_last leaves a tail
        for start in range(self._take_first_batch(), used, self.batch_size):
            stop = min(start + self.batch_size, used)
            # made when asked for: with a thread preparing the next batch beside the model's two
            # intra-op threads, resnet18 at 128 px in bf16 ran about 10% slower on 2 cores
            yield self._batch(order[start:stop], draws, start, stop)

    def _batch(self, idx: torch.Tensor, draws: dict[str, torch.Tensor], start: int,
               stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` (entries ``start:stop`` of the epoch's draws), augmented."""
        boxes = draws["boxes"][start:stop].tolist()
        crops = [self.store.crop(k, *box) for k, box in zip(idx.tolist(), boxes, strict=True)]
        x = resample_crops(crops, self.image_size, self.device)  # float32 in [0, 255]
        if "flip" in draws:
            flip = draws["flip"][start:stop].to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if "jitter" in draws:
            apply_color_jitter(x, self.augment.color_jitter, draws["jitter"][start:stop],
                               draws["jitter_order"][start:stop])
        if "gray" in draws:
            apply_grayscale(x, draws["gray"][start:stop])
        # PIL hands the DataLoader's transforms whole pixel values: round as it does
        x = x.round_()
        if self.augment.auto_augment != "none":  # the policies' ops work on uint8, as theirs
            policy = _policy_draws(draws, slice(start, stop))
            x = apply_policy(x.to(torch.uint8), {k: v.to(self.device) for k, v in policy.items()})
        x = self.normalize(x)
        dev = self.device
        if "cut_top" in draws:
            apply_cutout(x, self.augment.cutout, draws["cut_top"][start:stop].to(dev),
                         draws["cut_left"][start:stop].to(dev), inplace=True)
        if "erase" in draws:
            apply_erasing(x, *draws["erase"][:, start:stop].to(dev))
        return x, self.labels[idx].to(dev)
