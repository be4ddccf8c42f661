"""What a label is, in one place: a class index (single-label data) or a multi-hot row of 0/1
per class (multi-label data, :mod:`imgcls.data.label_csv`).

The loaders and caches hold the labels of a whole set as one tensor: int64 ``[N]`` of class
indices, or uint8 ``[N, K]`` multi-hot rows. The loss and the metrics tell the two apart by that
shape, so a batch's labels say which kind of run it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def is_multilabel(labels: torch.Tensor) -> bool:
    """Multi-hot rows (``[N, K]``) rather than class indices (``[N]``)."""
    return labels.dim() == 2


def stack_labels(labels: Sequence[Any] | torch.Tensor | np.ndarray) -> torch.Tensor:
    """A set's labels as one tensor: int64 ``[N]`` for class indices, uint8 ``[N, K]`` for
    multi-hot rows (tensors, arrays or sequences of 0/1).

    >>> stack_labels([2, 0]).tolist(), stack_labels([[1, 0], [1, 1]]).dtype
    ([2, 0], torch.uint8)
    """
    if isinstance(labels, torch.Tensor | np.ndarray):
        tensor = torch.as_tensor(labels)
        return tensor.to(torch.uint8) if tensor.dim() == 2 else tensor.to(torch.int64)
    items = list(labels)
    if items and not isinstance(items[0], int | np.integer) and np.ndim(items[0]) == 1:
        rows = [torch.as_tensor(np.asarray(y), dtype=torch.uint8) for y in items]
        return torch.stack(rows)
    return torch.as_tensor([int(y) for y in items], dtype=torch.int64)


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images predicted right: the top class is the label, or (multi-hot labels) every class's
    logit is on the side of 0 its label says (probability 0.5: exact match).

    >>> int(correct_count(torch.tensor([[2., -1.], [1., 3.]]), torch.tensor([[1, 0], [1, 0]])))
    1
    """
    if labels.dim() == 2:
        return ((logits > 0) == labels.bool()).all(dim=1).sum()
    return (logits.argmax(dim=1) == labels).sum()


def label_key(label: Any) -> int | list[int]:
    """A label as JSON (cache fingerprints): the class index, or the multi-hot row as a list."""
    if isinstance(label, int | np.integer):
        return int(label)
    if isinstance(label, torch.Tensor | np.ndarray) and np.ndim(label) == 0:
        return int(label)
    return [int(v) for v in np.asarray(label).reshape(-1)]
