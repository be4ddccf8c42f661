"""One epoch of training and one pass of evaluation, each returning plain metric dicts.

Counts are accumulated as sums on the device (no ``.item()`` per batch, which would stall a GPU)
and divided once at the end, so the numbers are exact sums over samples, never averages of
averages. The speed switches (:class:`Speed`) apply to both: channels-last inputs, autocast
(with a grad scaler for fp16) and, in evaluation, flip test-time augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from imgcls.errors import ImgclsError
from imgcls.models import set_train_mode
from imgcls.runtime import unwrap_model


@dataclass(frozen=True)
class Speed:
    """How batches run: memory format and autocast dtype (``None``: fp32)."""

    channels_last: bool = False
    amp_dtype: torch.dtype | None = None

    def inputs(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.to(device, non_blocking=True, memory_format=torch.channels_last)
        return images.to(device, non_blocking=True)

    def autocast(self, device: torch.device) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


@dataclass
class TrainState:
    """What the loop reads and advances; checkpoints save exactly this plus the config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # imgcls.optim.Scheduler: step_batch() / step_epoch(metrics)
    loss_fn: nn.Module
    device: torch.device
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best_metric: float | None = None
    best_epoch: int | None = None
    grad_clip: float = 0.0
    accumulate: int = 1  # micro-batches per optimizer step
    speed: Speed = field(default_factory=Speed)
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast: loss scaling
    ema: torch.optim.swa_utils.AveragedModel | None = None  # updated every ema_every steps
    ema_every: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # validation's loss when it differs from training's (None: loss_fn): class-weighted training
    # still reports the plain cross-entropy as val_loss
    eval_loss_fn: nn.Module | None = None
    skip_nonfinite: int = 0  # train.skip_nonfinite: bad batches the run may skip
    nonfinite_skipped: int = 0  # skipped so far (in this process)

    def optimizer_step(self) -> None:
        """Clip (if asked), step the optimizer (through the grad scaler under fp16), advance
        the schedule and the EMA."""
        if self.scaler is not None:
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        self.scheduler.step_batch()
        self.step += 1
        if self.ema is not None and self.step % self.ema_every == 0:
            self.ema.update_parameters(unwrap_model(self.model))


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Any:
    return tqdm(
        iterable, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True
    )


def train_one_epoch(
    state: TrainState,
    loader: Any,
    *,
    progress: bool = False,
    on_first_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train ``state.model`` on every batch of ``loader`` once.

    With ``state.accumulate = N`` the optimizer steps every N batches (and after the last one),
    on the mean loss of the window; a DistributedDataParallel model skips its gradient
    all-reduce (``no_sync``) on all but the window's last batch. ``reduce`` sums the metric
    counts over ranks (``runtime.all_reduce_sum``), so the numbers are those of the global data.

    Returns ``{"train_loss", "train_acc", "train_time_s", "train_samples"}``.
    """
    model, device = state.model, state.device
    set_train_mode(getattr(model, "module", model))
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    watch = _NonFiniteWatch(state, device)
    seen = 0
    start = time.perf_counter()
    total = len(loader)
    accumulate = max(1, state.accumulate)
    no_sync = getattr(model, "no_sync", None)
    bar = _progress(loader, total, f"epoch {state.epoch + 1} train", progress)
    for i, (images, labels) in enumerate(bar):
        if on_first_batch is not None:
            on_first_batch(images, labels)
            on_first_batch = None
        window_start = i - i % accumulate
        window = min(accumulate, total - window_start)  # the last window may be shorter
        last_in_window = i + 1 == window_start + window
        if i == window_start:
            state.optimizer.zero_grad(set_to_none=True)
        images = state.speed.inputs(images, device)
        labels = labels.to(device, non_blocking=True)
        sync = nullcontext() if last_in_window or no_sync is None else no_sync()
        with sync:
            with state.speed.autocast(device):
                logits = model(images)
                loss = state.loss_fn(logits, labels)
            if watch.keep(loss, i, total):
                scaled = loss / window if window > 1 else loss
                (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        if last_in_window:
            state.optimizer_step()
        if watch.skipping:
            continue  # a skipped batch counts in no metric
        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        if progress and (i + 1) % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if seen == 0:
        raise RuntimeError("the training loader yielded no batches")
    if reduce is not None:
        counts = reduce(torch.stack([loss_sum, correct.double(),
                                     torch.tensor(float(seen), device=device,
                                                  dtype=torch.float64),
                                     watch.bad.double()]))
        loss_sum, correct, seen = counts[0], counts[1].round().long(), int(counts[2].item())
        watch.bad = counts[3].round().long()
    watch.check(total)
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "train_time_s": time.perf_counter() - start,
        "train_samples": seen,
    }


class NonFiniteLoss(ImgclsError):
    """The training loss became NaN or infinite: the run stops before it saves such weights."""


class _NonFiniteWatch:
    """Non-finite training losses. By default they are counted on the device (no sync per
    step) and the epoch fails at its end, before any checkpoint is written; with
    ``train.skip_nonfinite=N`` each loss is checked as it comes (a sync per step) and up to N bad
    batches of the run are skipped (no backward, no metrics)."""

    def __init__(self, state: TrainState, device: torch.device) -> None:
        self.state = state
        self.bad = torch.zeros((), device=device, dtype=torch.int64)
        self.first = torch.full((), -1, device=device, dtype=torch.int64)
        self.skipping = False

    def keep(self, loss: torch.Tensor, i: int, total: int) -> bool:
        """Whether this batch's loss goes into backward."""
        state = self.state
        if state.skip_nonfinite <= 0:
            finite = torch.isfinite(loss.detach())
            self.bad += (~finite).long()
            self.first = torch.where((self.first < 0) & ~finite, i, self.first)
            return True
        self.skipping = not bool(torch.isfinite(loss.detach()))
        if self.skipping:
            state.nonfinite_skipped += 1
            if state.nonfinite_skipped > state.skip_nonfinite:
                raise NonFiniteLoss(
                    f"the training loss was non-finite (nan or inf) on more than "
                    f"train.skip_nonfinite={state.skip_nonfinite} batches, the last in epoch "
                    f"{state.epoch + 1} at batch {i + 1} of {total}; the last checkpoint is "
                    "kept: lower optim.lr or set train.grad_clip")
        return not self.skipping

    def check(self, total: int) -> None:
        if int(self.bad.item()) == 0:
            return
        epoch = self.state.epoch + 1
        where = f", first at batch {int(self.first.item()) + 1} of {total}" if int(
            self.first.item()) >= 0 else ""
        raise NonFiniteLoss(
            f"the training loss became non-finite (nan or inf) in epoch {epoch}{where}: the run "
            f"stops and keeps its last checkpoint (epoch {epoch - 1}); lower optim.lr, set "
            "train.grad_clip, or skip up to N bad batches with train.skip_nonfinite=N")


TTA_MODES = ("none", "flip")


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits for ``images`` under test-time augmentation: ``none``, or ``flip``:
    the mean of the logits of each image and of its mirror image (as airbench does). evaluate
    and predict both call this, so they score every image the same way; predict's
    probabilities are the softmax of these logits."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    logits = model(images)
    if tta == "flip":
        logits = (logits + model(images.flip(-1))) / 2
    return logits


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    n: int
    confusion: torch.Tensor  # [true class, predicted class] counts

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diag().double() / totals).tolist()


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
    """Loss, top-1, top-5 (top-k with k = min(5, classes)) and the confusion matrix.

    ``reduce`` sums the per-rank sums over ranks (``runtime.all_reduce_sum``): each rank
    evaluates its own disjoint shard of the data, so the result is exact over the whole set.
    ``tta="flip"`` scores each image by :func:`tta_logits`.
    """
    speed = speed or Speed()
    model.eval()
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    topk = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    seen = 0
    total = len(loader) if hasattr(loader, "__len__") else None
    for images, labels in _progress(loader, total, desc, progress):
        images = speed.inputs(images, device)
        labels = labels.to(device, non_blocking=True)
        with speed.autocast(device):
            logits = tta_logits(model, images, tta)
        logits = logits.float()
        loss_sum += loss_fn(logits, labels).double() * labels.shape[0]
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == labels).sum()
        topk += (best == labels[:, None]).any(dim=1).sum()
        confusion += torch.bincount(
            labels * num_classes + best[:, 0], minlength=num_classes * num_classes
        )
        seen += labels.shape[0]
    if reduce is not None:
        sums = reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=device,
                                                          dtype=torch.float64)]))
        loss_sum, seen = sums[0], int(sums[1].item())
        # top-1 and top-k counts travel with the confusion matrix: one int64 all-reduce
        packed = reduce(torch.cat([confusion, torch.stack([top1, topk])]))
        confusion, top1, topk = packed[:-2], packed[-2], packed[-1]
    n = max(seen, 1)
    return EvalResult(
        loss=loss_sum.item() / n,
        top1=top1.item() / n,
        top5=topk.item() / n,
        n=seen,
        confusion=confusion.view(num_classes, num_classes).cpu(),
    )
