"""Batches for the loop. The loop only needs an iterable of ``(images, labels)`` with ``len`` and
``set_epoch``; :class:`EpochLoader` is the DataLoader-backed one, and a faster loader can stand in
for it without the loop changing.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from imgcls.config import LoaderConfig
from imgcls.data.sampling import BalancedSampler
from imgcls.runtime import stream_seed


class BatchLoader(Protocol):
    """What the training loop consumes."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class TransformedDataset(Dataset):
    """Applies a transform to the images of a dataset that yields ``(image, label)``."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image, label = self.dataset[index]
        # a class index as an int; a multi-hot row stays a tensor (collated to [N, K])
        return self.transform(image), label if isinstance(label, torch.Tensor) and (
            label.dim() == 1) else int(label)


def shard(dataset: Dataset, num_replicas: int, rank: int) -> Dataset:
    """Rank ``rank``'s share of ``dataset`` for exact evaluation: every ``num_replicas``-th item
    from ``rank`` on, no item twice and none padded in (unlike DistributedSampler).

    >>> [shard(list(range(5)), 2, 1)[i] for i in range(2)]
    [1, 3]
    """
    if num_replicas == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker's torch RNG; NumPy and `random` need the same treatment so that
    # augmentations written with them are not identical across workers.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochLoader:
    """A DataLoader whose shuffling and worker seeds are a pure function of ``(seed, epoch)``.

    That makes a resumed run see exactly the batches an uninterrupted run would have seen.
    Persistent workers are seeded once, when they start, so ``deterministic=True`` turns them
    off: exact resume is worth a worker start per epoch. ``num_replicas``/``rank`` shard the
    training data for distributed training (DistributedSampler: every rank gets the same number
    of batches, padded with repeats); evaluation sets are sharded by the caller, without
    repeats (:func:`shard`). ``loader.sampler=balanced`` draws every class equally often
    (:class:`~imgcls.data.sampling.BalancedSampler`, sharded the same way), from ``labels``.
    """

    def __init__(
        self,
        dataset: Dataset,
        cfg: LoaderConfig,
        *,
        train: bool,
        seed: int = 0,
        pin_memory: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        deterministic: bool = False,
        labels: Sequence[int] | None = None,
    ) -> None:
        self.seed = seed
        # Worker seeds differ per rank (seed + rank): ranks must not augment alike. The
        # sampler's shuffle seed does not: every rank draws its shard of one permutation.
        self.worker_seed = seed + rank
        self.sampler: DistributedSampler | BalancedSampler | None = None
        self.generator = torch.Generator()
        shuffle = train and cfg.shuffle
        if train and cfg.sampler == "balanced":
            if labels is None or len(labels) != len(dataset):  # type: ignore[arg-type]
                raise ValueError("loader.sampler=balanced needs the labels of every image")
            self.sampler = BalancedSampler(labels, seed=seed, num_replicas=num_replicas,
                                           rank=rank, drop_last=cfg.drop_last)
        elif train:
            self.sampler = DistributedSampler(
                dataset,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=shuffle,
                # DistributedSampler seeds epoch e with seed + e: stream e of stream_seed's
                seed=stream_seed(seed, 0),
                drop_last=cfg.drop_last,
            )
        batch_size = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
        workers = cfg.num_workers
        self.dataset, self.deterministic, self.first_batch = dataset, deterministic, 0
        self.options: dict[str, Any] = dict(
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin_memory,
            drop_last=train and cfg.drop_last,
            persistent_workers=cfg.persistent_workers and workers > 0 and not deterministic,
            worker_init_fn=_seed_worker if workers > 0 else None,
            generator=self.generator,
        )
        self.dataloader = DataLoader(dataset, sampler=self.sampler, **self.options)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(stream_seed(self.worker_seed, epoch))

    def start_at(self, batch: int) -> None:
        """The next pass begins at batch ``batch`` of the epoch (a run resumed mid-epoch)."""
        self.first_batch = batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, self.first_batch = self.first_batch, 0
        if first == 0 or self.sampler is None:
            return iter(self.dataloader)
        if self.deterministic and self.dataloader.num_workers > 0:
            # Workers augment with their own RNG streams, which skipped batches would leave
            # unadvanced: load and drop those batches, so the rest are bit-identical.
            return itertools.islice(iter(self.dataloader), first, None)
        # Skip in the sampler: the batches before `first` are never loaded. Without workers the
        # augmentation draws from the RNG state the checkpoint restored, so this is exact too.
        skipped = list(self.sampler)[first * self.options["batch_size"]:]
        return iter(DataLoader(self.dataset, sampler=skipped, **self.options))

    def __len__(self) -> int:
        return len(self.dataloader)

    @property
    def num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataloader.dataset)
