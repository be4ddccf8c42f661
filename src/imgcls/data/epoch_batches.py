"""What the batched loaders share: an epoch's order of images (shuffled, balanced, sharded per
rank), resuming part-way through it, and the fused float conversion and normalisation.

:class:`~imgcls.data.memory.MemoryLoader` (small images as one tensor) and
:class:`~imgcls.data.photo_loader.PhotoLoader` (photos from a decoded cache) differ only in how
they assemble and augment a batch; the order here is the one :class:`EpochLoader`'s sampler
draws, so the three loaders visit the same images in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from imgcls.data.sampling import SAMPLERS, balanced_indices, shard_order, shard_size
from imgcls.data.transforms import _channels
from imgcls.runtime import stream_seed


def fused_normalize(mean: list[float], std: list[float],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``ToDtype(scale=True)`` then ``Normalize`` as one multiply-add: [C, 1, 1] scale, shift."""
    if not all(std):
        raise ValueError("std evaluated to zero, leading to division by zero.")
    # Normalize's float32 statistics, combined in float64 and rounded once.
    mean64 = torch.tensor(mean, dtype=torch.float32).double().view(-1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float32).double().view(-1, 1, 1)
    return ((1.0 / (255.0 * std64)).float().to(device),
            (-mean64 / std64).float().to(device))


class EpochBatches:
    """The order and normalisation half of a batched loader over ``size`` images.

    Training: each epoch is a permutation seeded with ``(seed, epoch)`` only (the same on every
    rank, and the one :class:`EpochLoader`'s sampler draws), of which rank ``rank`` takes every
    ``num_replicas``-th index, padded with repeats to equal shares like ``DistributedSampler``
    (``sampler="balanced"``: :func:`~imgcls.data.sampling.balanced_indices`). Evaluation: fixed
    order, a strided share without repeats.
    """

    def __init__(self, size: int, labels: torch.Tensor, *, batch_size: int, train: bool,
                 shuffle: bool, drop_last: bool, seed: int, num_replicas: int, rank: int,
                 sampler: str, device: torch.device) -> None:
        if batch_size < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad batch_size={batch_size} or rank={rank}/{num_replicas}")
        if sampler not in SAMPLERS or (sampler == "balanced" and train and not shuffle):
            raise ValueError(f"sampler must be one of {SAMPLERS} (balanced with shuffle=True), "
                             f"got {sampler!r}")
        self.size = size
        self.device = device
        self.batch_size, self.train = batch_size, train
        self.shuffle = shuffle and train
        # balanced: the epoch's order comes from the labels (kept on the CPU, where it is drawn)
        self.balanced_labels = (torch.as_tensor(labels, dtype=torch.int64).cpu()
                                if sampler == "balanced" and train else None)
        self.drop_last = drop_last and train
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.first_batch = 0  # see start_at

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
        if not self.train:
            return len(range(self.rank, self.size, self.num_replicas))
        return shard_size(self.size, self.num_replicas, self.drop_last)

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in order (CPU int64)."""
        n = self.size
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

    def _take_first_batch(self) -> int:
        """Where in the epoch this pass starts (:meth:`start_at`); the next pass starts at 0."""
        first, self.first_batch = self.first_batch * self.batch_size, 0
        return first

    def _set_normalization(self, mean_std: tuple[Sequence[float], Sequence[float]] | None,
                           channels: int) -> None:
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.scale: torch.Tensor | None = None  # [C, 1, 1] float32: x * scale + shift
        self.shift: torch.Tensor | None = None
        if mean_std is not None:
            self.mean = _channels(list(mean_std[0]), channels)
            self.std = _channels(list(mean_std[1]), channels)
            self.scale, self.shift = fused_normalize(self.mean, self.std, self.device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images (on the loader's device; or float32 in [0, 255], which
        are normalised in place) as float32 batches are made of, without augmentation: e.g.
        ``loader.normalize(loader.images[:5000])`` for a data-dependent initialisation.

        ``ToDtype(float32, scale=True)`` then ``Normalize`` as one multiply-add per channel,
        ``x * (1 / (255 std)) - mean / std``: equal to build_transform's ``(x / 255 - mean) /
        std`` up to float32 rounding (a few ulps, under 1e-6 for image statistics), and 15-20%
        faster on the CPU than the three separate steps."""
        out = images.to(torch.float32)
        if self.scale is not None and self.shift is not None:
            return out.mul_(self.scale).add_(self.shift)
        return out.mul_(1.0 / 255)  # exactly ToDtype(float32, scale=True)
