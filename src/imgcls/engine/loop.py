"""One epoch of training, returning a plain metric dict; evaluation is
:mod:`imgcls.engine.evaluation` (re-exported here).

Counts are accumulated as sums on the device (no ``.item()`` per batch, which would stall a GPU)
and divided once at the end, so the numbers are exact sums over samples, never averages of
averages. The speed switches (:class:`Speed`) apply to training and evaluation alike:
channels-last inputs and autocast (with a grad scaler for fp16).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from imgcls.data.label_mixing import LabelMixing
from imgcls.data.targets import correct_count
from imgcls.engine.batches import Speed as Speed
from imgcls.engine.batches import progress_bar
from imgcls.engine.evaluation import TTA_MODES as TTA_MODES
from imgcls.engine.evaluation import EvalResult as EvalResult
from imgcls.engine.evaluation import evaluate as evaluate
from imgcls.engine.evaluation import tta_logits as tta_logits
from imgcls.errors import ImgclsError
from imgcls.models import set_train_mode
from imgcls.runtime import unwrap_model


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
    # changes to the weights after each step (engine/weight_hooks.py: Lookahead, FreezeAfter)
    weight_hooks: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # validation's loss when it differs from training's (None: loss_fn): class-weighted training
    # still reports the plain cross-entropy as val_loss
    eval_loss_fn: nn.Module | None = None
    skip_nonfinite: int = 0  # train.skip_nonfinite: bad batches the run may skip
    # transforms.mixup / cutmix (data/label_mixing.py): the batch and its labels mixed before
    # the forward pass; the loss then takes label probabilities
    label_mixing: LabelMixing | None = None
    nonfinite_skipped: int = 0  # skipped so far (in this process)

    def optimizer_step(self) -> None:
        """Clip (if asked), step the optimizer (through the grad scaler under fp16), advance
        the schedule, then the weight hooks and the EMA."""
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
        for hook in self.weight_hooks:
            hook.after_step(unwrap_model(self.model), self.step)
        if self.ema is not None and self.step % self.ema_every == 0:
            self.ema.update_parameters(unwrap_model(self.model))


@dataclass
class EpochProgress:
    """How far the epoch in progress has come: the batches done and the running sums of its
    metrics. A mid-epoch checkpoint saves it, so ``--resume`` continues at the next batch and
    the epoch's metrics row comes out as if the run had never stopped."""

    batches: int = 0  # batches of this epoch already trained on
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_time_s: float = 0.0
    lr: float = 0.0  # the learning rate the epoch started with (its metrics row's "lr")

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


# What the loop calls after each optimizer step: ``after_step(snapshot)``, where ``snapshot()``
# returns the epoch's progress so far (it syncs the device, so only call it to save).
AfterStep = Callable[[Callable[[], EpochProgress]], None]


def _skip_batches(loader: Any, batches: int) -> Iterable:
    """``loader`` from batch ``batches`` on: through the loader's own ``start_at`` (which skips
    without loading), else by drawing and dropping the batches before it."""
    if batches <= 0:
        return loader
    start_at = getattr(loader, "start_at", None)
    if start_at is not None:
        start_at(batches)
        return loader
    return itertools.islice(loader, batches, None)


def train_one_epoch(
    state: TrainState,
    loader: Any,
    *,
    progress: bool = False,
    on_first_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    start: EpochProgress | None = None,
    after_step: AfterStep | None = None,
) -> dict[str, float]:
    """Train ``state.model`` on every batch of ``loader`` once.

    With ``state.accumulate = N`` the optimizer steps every N batches (and after the last one),
    on the mean loss of the window; a DistributedDataParallel model skips its gradient
    all-reduce (``no_sync``) on all but the window's last batch. ``reduce`` sums the metric
    counts over ranks (``runtime.all_reduce_sum``), so the numbers are those of the global data.
    ``start`` continues an epoch saved part-way (:class:`EpochProgress`); ``after_step`` is
    called after every optimizer step (the trainer's mid-epoch checkpoints and graceful stops).

    Returns ``{"train_loss", "train_acc", "train_time_s", "train_samples", "lr"}`` (``lr``: the
    learning rate the epoch started with).
    """
    set_train_mode(getattr(state.model, "module", state.model))
    start = start or EpochProgress(lr=state.optimizer.param_groups[0]["lr"])
    counts, watch = _EpochCounts(start, state.device), _NonFiniteWatch(state, state.device)
    clock, total, accumulate = time.perf_counter(), len(loader), max(1, state.accumulate)

    def snapshot() -> EpochProgress:
        watch.check(total)  # non-finite weights are never saved
        return counts.progress(i + 1, time.perf_counter() - clock)

    bar = progress_bar(_skip_batches(loader, start.batches), total,
                       f"epoch {state.epoch + 1} train", progress)
    bar.update(start.batches)
    i = start.batches - 1
    for i, (images, labels) in enumerate(bar, start=start.batches):
        if on_first_batch is not None:
            on_first_batch(images, labels)
            on_first_batch = None
        window, first_in_window, last_in_window = _window(i, accumulate, total)
        if first_in_window:
            state.optimizer.zero_grad(set_to_none=True)
        labels = labels.to(state.device, non_blocking=True)
        loss, logits = _forward_backward(state, images, labels, window, last_in_window,
                                         functools.partial(watch.keep, i=i, total=total))
        if last_in_window:
            state.optimizer_step()
        if not watch.skipping:  # a skipped batch counts in no metric
            counts.add(loss, logits, labels)
            if progress and (i + 1) % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if last_in_window and after_step is not None and i + 1 < total:
            after_step(snapshot)
    return counts.finish(watch, reduce, total, clock)


def _window(i: int, accumulate: int, total: int) -> tuple[int, bool, bool]:
    """Batch ``i``'s accumulation window: its length (the last window may be shorter), and
    whether ``i`` is the window's first and its last batch."""
    window_start = i - i % accumulate
    window = min(accumulate, total - window_start)
    return window, i == window_start, i + 1 == window_start + window


def _forward_backward(state: TrainState, images: torch.Tensor, labels: torch.Tensor,
                      window: int, last_in_window: bool,
                      keep: Callable[[torch.Tensor], bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss, and (when ``keep(loss)``) backward of its share of the
    window's mean loss; a DDP model syncs gradients on the window's last batch only."""
    model = state.model
    no_sync = getattr(model, "no_sync", None)
    sync = nullcontext() if last_in_window or no_sync is None else no_sync()
    images = state.speed.inputs(images, state.device)
    targets = labels
    if state.label_mixing is not None:  # train_acc stays against each image's own label
        # multi-hot rows mix as label probabilities
        images, targets = state.label_mixing(images, labels.float() if labels.dim() == 2
                                             else labels)
    with sync:
        with state.speed.autocast(state.device):
            logits = model(images)
            loss = state.loss_fn(logits, targets)
        if keep(loss):
            scaled = loss / window if window > 1 else loss
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
    return loss, logits


class _EpochCounts:
    """The epoch's running sums, kept on the device (no sync per step) and continued from a
    mid-epoch checkpoint's :class:`EpochProgress`."""

    def __init__(self, start: EpochProgress, device: torch.device) -> None:
        self.start = start
        self.loss_sum = torch.full((), start.loss_sum, device=device, dtype=torch.float64)
        self.correct = torch.full((), start.correct, device=device, dtype=torch.int64)
        self.seen = start.seen

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.seen += n
        self.loss_sum += loss.detach().double() * n
        self.correct += correct_count(logits.detach(), labels)

    def progress(self, batches: int, seconds: float) -> EpochProgress:
        return EpochProgress(batches, self.loss_sum.item(), int(self.correct.item()), self.seen,
                             self.start.train_time_s + seconds, self.start.lr)

    def finish(self, watch: _NonFiniteWatch,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None, total: int,
               clock: float) -> dict[str, float]:
        """The epoch's metrics (summed over ranks with ``reduce``), once ``watch`` found every
        loss finite; ``clock``: when this process's part of the epoch started."""
        if self.seen == 0:
            raise RuntimeError("the training loader yielded no batches")
        if reduce is not None:
            watch.bad = self.all_reduce(reduce, watch.bad)
        watch.check(total)
        return {
            "train_loss": self.loss_sum.item() / self.seen,
            "train_acc": self.correct.item() / self.seen,
            "train_time_s": self.start.train_time_s + time.perf_counter() - clock,
            "train_samples": self.seen,
            "lr": self.start.lr,
        }

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor],
                   bad: torch.Tensor) -> torch.Tensor:
        """Sum the counts (and ``bad``, the non-finite count, returned) over ranks."""
        device = self.loss_sum.device
        total = reduce(torch.stack([self.loss_sum, self.correct.double(),
                                    torch.tensor(float(self.seen), device=device,
                                                 dtype=torch.float64), bad.double()]))
        self.loss_sum, self.correct = total[0], total[1].round().long()
        self.seen = int(total[2].item())
        return total[3].round().long()


class NonFiniteLoss(ImgclsError):
    """The training loss became NaN or infinite: the run stops before it saves such weights.

    Made by :meth:`of` from what happened (``cause``) and what to do (``advice``); the trainer,
    which knows what its checkpoints hold, says so in the message with :meth:`saying`."""

    cause: str = ""
    advice: str = ""

    @classmethod
    def of(cls, cause: str, advice: str,
           saved: str = "the run stops before it saves such weights") -> NonFiniteLoss:
        exc = cls(f"{cause}: {saved}; {advice}")
        exc.cause, exc.advice = cause, advice
        return exc

    def saying(self, saved: str) -> NonFiniteLoss:
        """The same error, its message saying ``saved`` (what the run folder holds)."""
        return self.of(self.cause, self.advice, saved) if self.cause else self


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
                raise NonFiniteLoss.of(
                    f"the training loss was non-finite (nan or inf) on more than "
                    f"train.skip_nonfinite={state.skip_nonfinite} batches, the last in epoch "
                    f"{state.epoch + 1} at batch {i + 1} of {total}",
                    "lower optim.lr or set train.grad_clip")
        return not self.skipping

    def check(self, total: int) -> None:
        if int(self.bad.item()) == 0:
            return
        epoch = self.state.epoch + 1
        where = f", first at batch {int(self.first.item()) + 1} of {total}" if int(
            self.first.item()) >= 0 else ""
        raise NonFiniteLoss.of(
            f"the training loss became non-finite (nan or inf) in epoch {epoch}{where}",
            "lower optim.lr, set train.grad_clip, or skip up to N bad batches with "
            "train.skip_nonfinite=N")

