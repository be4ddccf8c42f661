"""Which training images an epoch draws: ``loader.sampler=balanced``, and the class counts
``optim.class_weights=auto`` weighs by.

:func:`balanced_indices` is the one definition of a balanced epoch; :class:`BalancedSampler`
(the DataLoader path) and :class:`~imgcls.data.memory.MemoryLoader` both take their order from
it, so the two loaders draw the same images, and a resumed run the same ones as an
uninterrupted run (it is a pure function of the labels, the seed and the epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from imgcls.config import choices

SAMPLERS = choices("loader.sampler")
_TAG = 0xBA1A  # keeps these streams apart from the other seeded draws of a run
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Images per class, for classes ``0 .. num_classes - 1``; multi-hot rows (``[N, K]``)
    count each image in every class it has.

    >>> class_counts([0, 2, 2], 4), class_counts(np.array([[1, 1], [0, 1]]), 2)
    ([1, 0, 2, 0], [1, 2])
    """
    if np.ndim(labels) == 2:
        return [int(c) for c in np.asarray(labels, dtype=np.int64).sum(axis=0)[:num_classes]]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [int(c) for c in counts[:num_classes]]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays: a counter-based hash, so a pass's order needs no
    generator state and the passes of one epoch hash in one vectorised call."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _pass_orders(seed: int, label: int, first: int, passes: int, n: int) -> np.ndarray:
    """``[passes, n]``: row ``p`` is the order of pass ``first + p`` over a class's ``n`` images,
    the same whichever epoch asks for it."""
    key = np.array([_TAG], dtype=np.uint64)
    for part in (seed, label):
        key = _mix(key ^ np.uint64(part))
    passes_keys = _mix(key ^ np.arange(first, first + passes, dtype=np.uint64))
    keys = _mix(passes_keys[:, None] ^ np.arange(n, dtype=np.uint64))
    return np.argsort(keys, axis=1, kind="stable")


def balanced_indices(labels: Sequence[int] | np.ndarray | torch.Tensor, seed: int,
                     epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s order of ``len(labels)`` dataset indices with every class equally often.

    Each of the K classes present gets N // K draws (the N % K left over go to classes in turn,
    a different few each epoch). A class's draws continue, epoch after epoch, one stream of
    passes over its images, each pass in its own seeded random order: a small class repeats
    its images within an epoch, a large one is subsampled, a different part each epoch, and
    has shown every image once after ceil(n_c / (N // K)) epochs. The epoch's draws are then
    shuffled together. Int64 CPU tensor; a pure function of (labels, seed, epoch).

    >>> order = balanced_indices([0] * 9 + [1], seed=0, epoch=0)
    >>> len(order), int((order == 9).sum())
    (10, 5)
    """
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.astype(np.int64, copy=False)
    n = len(y)
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    by_class = np.argsort(y, kind="stable")  # the members of each class, in dataset order
    present, starts, sizes = np.unique(y[by_class], return_index=True, return_counts=True)
    k = len(present)
    # Global draw slots t = epoch * n ... : slot t goes to class t % k as that class's draw
    # t // k, so every class's draws are consecutive across epochs.
    first_slot = epoch * n
    out = np.empty(n, dtype=np.int64)
    for c, (label, start, size) in enumerate(zip(present, starts, sizes, strict=True)):
        t0 = first_slot + (c - first_slot) % k
        slots = np.arange(t0, first_slot + n, k)
        if len(slots) == 0:
            continue
        j0, j1 = int(slots[0]) // k, int(slots[-1]) // k + 1  # the class's draws this epoch
        p0, p1 = j0 // size, (j1 - 1) // size + 1  # the passes they fall in
        members = by_class[start : start + size]
        stream = members[_pass_orders(seed, int(label), p0, p1 - p0, int(size))].ravel()
        out[slots - first_slot] = stream[j0 - p0 * size : j1 - p0 * size]
    shuffle = np.random.default_rng([_TAG, 1, seed, epoch]).permutation(n)
    return torch.from_numpy(out[shuffle])


def shard_size(n: int, num_replicas: int, drop_last: bool = False) -> int:
    """Each rank's share of ``n`` items, as DistributedSampler counts it: rounded up (padded
    with repeats), or down with ``drop_last`` (the remainder left out).

    >>> shard_size(5, 2), shard_size(5, 2, drop_last=True), shard_size(4, 2, drop_last=True)
    (3, 2, 2)
    """
    if drop_last and n % num_replicas:
        return n // num_replicas
    return math.ceil(n / num_replicas)


def shard_order(order: torch.Tensor, num_replicas: int, rank: int,
                drop_last: bool = False) -> torch.Tensor:
    """Rank ``rank``'s strided share of an epoch's ``order``, as DistributedSampler shards: the
    same length on every rank, padded with repeats from the start (or cut, with ``drop_last``).

    >>> shard_order(torch.arange(5), 2, 1).tolist()
    [1, 3, 0]
    """
    n = len(order)
    total = shard_size(n, num_replicas, drop_last) * num_replicas
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil(total / n))[: total - n]])
    return order[:total][rank::num_replicas]


class BalancedSampler(Sampler[int]):
    """A torch Sampler over :func:`balanced_indices`, sharded like DistributedSampler (call
    :meth:`set_epoch` before each epoch)."""

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, *, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        self.labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels,
                                 dtype=np.int64)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch."""
        order = balanced_indices(self.labels, self.seed, self.epoch)
        return shard_order(order, self.num_replicas, self.rank, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return shard_size(len(self.labels), self.num_replicas, self.drop_last)
