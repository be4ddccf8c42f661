"""Scoring a model: its logits for each batch under the one test-time augmentation
(:func:`tta_logits`) and the speed switches, and the metrics of those logits.

Every evaluation in imgcls goes through :func:`batch_logits`: the validation pass of training
(:func:`evaluate`), ``imgcls evaluate``, ``imgcls report``, an experiment's evaluation and
``imgcls predict`` (the last four through :func:`imgcls.deploy.scoring.score`), so they score
an image alike. Counts are accumulated as sums on the device (no ``.item()`` per batch) and
divided once at the end, so the metrics are exact sums over samples, never averages of averages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.config import choices
from imgcls.data.targets import correct_count
from imgcls.engine.batches import Speed, progress_bar
from imgcls.runtime import all_gather_rows

TTA_MODES = choices("train.tta")

# A batch as scored: fp32 logits and, where known, the true labels (on the same device).
Scored = tuple[torch.Tensor, torch.Tensor | None]


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits for ``images`` under test-time augmentation: ``none``; ``flip``: the
    mean of the logits of each image and of its mirror image; ``flip_translate`` (airbench94's
    ``tta_level=2``): half the flip score plus half the mean flip score of the image shifted by
    one pixel down-right and up-left (reflect-padded), six forward passes. evaluate and predict
    both call this, so they score every image the same way; predict's probabilities are the
    softmax of these logits."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")

    def flip_mean(x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(-1))) / 2

    if tta == "none":
        return model(images)
    logits = flip_mean(images)
    if tta == "flip_translate":
        h, w = images.shape[-2:]
        padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
        shifted = (flip_mean(padded[..., :h, :w]) + flip_mean(padded[..., 2:, 2:])) / 2
        logits = (logits + shifted) / 2
    return logits


@torch.inference_mode()
def batch_logits(model: nn.Module, images: torch.Tensor, device: torch.device, *,
                 speed: Speed | None = None, tta: str = "none") -> torch.Tensor:
    """The fp32 logits of one batch (on ``device``), as every evaluation scores it: the inputs
    in ``speed``'s memory format, the forward passes of ``tta`` under its autocast."""
    speed = speed or Speed()
    images = speed.inputs(images, device)
    with speed.autocast(device):
        logits = tta_logits(model, images, tta)
    return logits.float()


def iter_logits(model: nn.Module, loader: Iterable, device: torch.device, *,
                speed: Speed | None = None, tta: str = "none", progress: bool = False,
                desc: str = "eval") -> Iterator[Scored]:
    """``(logits, labels)`` of each batch of ``loader`` (``(images, labels)`` batches, labels
    None where unknown), the model in eval mode; both on ``device``."""
    model.eval()
    total = len(loader) if hasattr(loader, "__len__") else None
    for images, labels in progress_bar(loader, total, desc, progress):
        logits = batch_logits(model, images, device, speed=speed, tta=tta)
        yield logits, None if labels is None else labels.to(device, non_blocking=True)


@dataclass
class EvalResult:
    loss: float
    top1: float  # multi-label: exact-match (subset) accuracy at probability 0.5
    top5: float
    n: int
    confusion: torch.Tensor  # [true class, predicted class] counts (multi-label: empty)
    # multi-label (multi-hot labels): every image's sigmoid scores and labels, [n, K] on the CPU,
    # in the loader's order (rank by rank in a distributed run); the metrics need them all
    scores: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def multilabel(self) -> bool:
        return self.scores is not None

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diag().double() / totals).tolist()


class _EvalSums:
    """Loss, top-1 and top-k counts and the confusion matrix, summed on the device."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes, self.device = num_classes, device
        self.k = min(5, num_classes)
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.top1 = torch.zeros((), device=device, dtype=torch.int64)
        self.topk = torch.zeros((), device=device, dtype=torch.int64)
        self.confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
        self.seen = 0
        self.scores: list[torch.Tensor] = []  # multi-label batches' sigmoid scores and labels
        self.targets: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module) -> None:
        k = self.num_classes
        self.loss_sum += loss_fn(logits, labels).double() * labels.shape[0]
        if labels.dim() == 2:  # multi-hot: the scores are kept; the metrics rank them
            self.scores.append(torch.sigmoid(logits).float().cpu())
            self.targets.append(labels.to(torch.uint8).cpu())
            self.top1 += correct_count(logits, labels)
            self.seen += labels.shape[0]
            return
        best = logits.topk(self.k, dim=1).indices
        self.top1 += (best[:, 0] == labels).sum()
        self.topk += (best == labels[:, None]).any(dim=1).sum()
        self.confusion += torch.bincount(labels * k + best[:, 0], minlength=k * k)
        self.seen += labels.shape[0]

    def result(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> EvalResult:
        loss_sum, top1, topk, confusion, seen = (self.loss_sum, self.top1, self.topk,
                                                 self.confusion, self.seen)
        if reduce is not None:
            sums = reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=self.device,
                                                              dtype=torch.float64)]))
            loss_sum, seen = sums[0], int(sums[1].item())
            # top-1 and top-k counts travel with the confusion matrix: one int64 all-reduce
            packed = reduce(torch.cat([confusion, torch.stack([top1, topk])]))
            confusion, top1, topk = packed[:-2], packed[-2], packed[-1]
        n = max(seen, 1)
        result = EvalResult(
            loss=loss_sum.item() / n,
            top1=top1.item() / n,
            top5=topk.item() / n,
            n=seen,
            confusion=confusion.view(self.num_classes, self.num_classes).cpu(),
        )
        if self.scores:
            scores, targets = torch.cat(self.scores), torch.cat(self.targets)
            if reduce is not None:  # every rank's images, for metrics over the whole set
                scores, targets = all_gather_rows(scores), all_gather_rows(targets)
            result.scores, result.targets = scores, targets
            result.top5, result.confusion = float("nan"), torch.zeros(0, 0, dtype=torch.int64)
        return result


@torch.inference_mode()
def eval_result(batches: Iterable[Scored], loss_fn: nn.Module, num_classes: int,
                device: torch.device, *,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> EvalResult:
    """Loss, top-1, top-5 (top-k with k = min(5, classes)) and the confusion matrix of scored
    batches (:func:`iter_logits`), summed batch by batch.

    ``reduce`` sums the per-rank sums over ranks (``runtime.all_reduce_sum``): each rank
    evaluates its own disjoint shard of the data, so the result is exact over the whole set.
    """
    sums = _EvalSums(num_classes, device)
    for logits, labels in batches:
        assert labels is not None, "metrics need the true labels"
        sums.add(logits, labels, loss_fn)
    return sums.result(reduce)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    device: torch.device,
    num_classes: int,
    *,
    progress: bool = False,
    desc: str = "eval",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    speed: Speed | None = None,
    tta: str = "none",
) -> EvalResult:
    """:func:`eval_result` of ``model`` on every batch of ``loader``, each scored by
    :func:`batch_logits` (``tta="flip"``: by :func:`tta_logits`)."""
    batches = iter_logits(model, loader, device, speed=speed, tta=tta, progress=progress,
                          desc=desc)
    return eval_result(batches, loss_fn, num_classes, device, reduce=reduce)
