"""The epoch loop, and the hooks that everything around it plugs into.

:class:`Trainer` runs epochs (train, validate, advance the schedule, track the best value of the
monitored metric) and calls its callbacks; checkpointing, logging, the time limit and early
stopping are callbacks (``engine/callbacks.py``), so a new feature is a new callback, not a longer
loop. A callback may ask to stop at the end of an epoch by returning a reason; in a distributed
run rank 0's decision is broadcast, so every rank stops after the same epoch.

    trainer = Trainer(state, train_loader, val_loader, epochs=30, classes=classes,
                      monitor=get_monitor("val_acc"), callbacks=[...])
    trainer.fit()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls import runtime
from imgcls.engine.evaluation import EvalResult, evaluate
from imgcls.engine.loop import EpochProgress, NonFiniteLoss, TrainState, train_one_epoch
from imgcls.engine.metrics import classification_metrics, epoch_metrics_from_eval
from imgcls.engine.multilabel_metrics import (
    best_thresholds,
    multilabel_epoch_metrics,
    multilabel_metrics,
)
from imgcls.engine.signals import GracefulStop, StopRequested
from imgcls.errors import ImgclsError
from imgcls.metric_table import Monitor, names
from imgcls.runs.checkpoint import load_model_state
from imgcls.runs.record import CheckpointRecord

# The validation keys of an epoch's metrics row (None when the run has no validation set).


class Callback:
    """A piece of the run that reacts to the loop. Override what you need; all hooks are
    optional. ``key`` names the callback's state in the checkpoint ("" : it keeps none)."""

    key: str = ""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (of this process: after a resume, the next epoch)."""

    def on_first_batch(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The first training batch of a new run (not of a resumed one), as the model sees it."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        """After each epoch's validation, with its metrics row; return a reason to stop."""
        return None

    def on_mid_epoch_save(self, trainer: Trainer, progress: EpochProgress) -> None:
        """A resumable state inside an epoch is due (``train.checkpoint_every_*`` or a stop
        signal), after the optimizer step that ended batch ``progress.batches``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, or when the run stops on an error or Ctrl-C."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on ``--resume``)."""


class Trainer:
    """Runs ``state`` from ``state.epoch`` to ``epochs``, calling ``callbacks`` in order."""

    def __init__(
        self,
        state: TrainState,
        train_loader: Any,
        val_loader: Any | None,
        *,
        epochs: int,
        classes: Sequence[str],
        monitor: Monitor | None,
        callbacks: Sequence[Callback] = (),
        dist: runtime.DistInfo | None = None,
        seed: int = 0,
        tta: str = "none",
        progress: bool = False,
        start_time: float | None = None,
        say: Callable[[str], None] = lambda _message: None,
        checkpoint_every_steps: int = 0,
        checkpoint_every_minutes: float = 0.0,
        stop: GracefulStop | None = None,
        resume_progress: EpochProgress | None = None,
        multilabel: bool = False,
    ) -> None:
        self.state = state
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs = epochs
        self.classes = list(classes)
        self.monitor = monitor  # None: no validation set, best.pt follows the last epoch
        self.callbacks = list(callbacks)
        self.dist = dist or runtime.DistInfo()
        self.seed, self.tta, self.progress = seed, tta, progress
        self.start_time = start_time if start_time is not None else time.perf_counter()
        self.say = say
        self.improved = False  # did the epoch just run set a new best?
        self.stop_reason: str | None = None
        self.stopped_by: Callback | None = None  # the callback that stopped the run
        self.saved_epoch: int | None = None  # the epoch last.pt holds (set by the Checkpointer)
        self.last_metrics: dict[str, Any] = {}
        # mid-epoch checkpoints: every N optimizer steps and/or minutes (0: off)
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_every_s = checkpoint_every_minutes * 60
        self.last_save = time.perf_counter()
        self.stop = stop  # signals that ask for a save and a stop at the next step
        self.resume_progress = resume_progress  # where a run saved mid-epoch continues
        self.saved_progress: EpochProgress | None = None  # last.pt's position in its epoch
        # several labels per image: the metrics rows' keys, and each class's decision threshold
        # (chosen on the last validation, saved with each checkpoint; None: 0.5 throughout)
        self.multilabel = multilabel
        self.val_keys = names(validation=True, multilabel=multilabel)
        self.thresholds: list[float] | None = None

    # ------------------------------------------------------------------ state

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation measures: the EMA average when kept, else the plain model
        (not the DDP wrapper: ranks' shards differ in size and its forward would sync)."""
        if self.state.ema is not None:
            return self.state.ema.module
        return runtime.unwrap_model(self.state.model)

    def callback_states(self) -> dict[str, dict[str, Any]]:
        return {cb.key: cb.state_dict() for cb in self.callbacks if cb.key}

    def load_callback_states(self, states: dict[str, dict[str, Any]]) -> None:
        for cb in self.callbacks:
            if cb.key and cb.key in states:
                cb.load_state_dict(states[cb.key])

    def load_state_dict(self, record: CheckpointRecord, path: str | Path, *,
                        monitor: str | None = None) -> None:
        """Continue exactly where ``record`` stopped (what the Checkpointer's ``record`` saved
        of this trainer): weights, optimiser, schedule, EMA, grad scaler, weight hooks,
        counters, best metric, the callbacks' states, the position inside an epoch saved
        part-way and, last (nothing drawn here changes the resumed run's batches), every RNG.
        ``monitor``: the run's train.monitor; when the record watched another metric, the best
        so far is forgotten. ``path`` names the checkpoint in errors."""
        record.require_resumable(path)
        _restore_state(self.state, record, path)
        if monitor is not None and record.monitor != monitor:
            self.say(f"train.monitor changed from {record.monitor} to {monitor}: best.pt "
                     "follows the new metric from the next epoch on")
            self.state.best_metric, self.state.best_epoch = None, None
        self.load_callback_states(record.callbacks)
        self.saved_epoch = record.epoch
        self.last_metrics = dict(record.metrics)
        self.thresholds = record.thresholds
        if record.progress:
            self.resume_progress = self.saved_progress = EpochProgress.from_state(
                record.progress)
        runtime.set_rng_state(record.rng)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to ``epochs`` or until a callback stops the run; returns the last metrics."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.state.epoch < self.epochs:
                metrics = self.run_epoch()
                asked = [(i, r) for i, cb in enumerate(self.callbacks)
                         if (r := cb.on_epoch_end(self, metrics))]
                self.last_save = time.perf_counter()
                if self.stop is not None and self.stop.requested and (
                        self.state.epoch < self.epochs):
                    raise StopRequested(self.stop.reason)  # the epoch just ended is saved
                # Rank 0 decides for all: clocks (and so the time limit) differ between ranks.
                first = runtime.broadcast_object(asked[0] if asked else None)
                if first:
                    self.stopped_by, self.stop_reason = self.callbacks[first[0]], first[1]
                    self.say(self.stop_reason)
                    break
            # every rank returns only once rank 0's last checkpoint is on disk
            runtime.barrier()
        except NonFiniteLoss as exc:  # say what the run folder holds: maybe nothing yet
            raise exc.saying(self._what_is_saved()) from None
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.last_metrics

    def run_epoch(self) -> dict[str, Any]:
        """One epoch: train, validate, step the epoch schedule, update the best; its metrics."""
        state = self.state
        epoch_start = time.perf_counter()
        self.train_loader.set_epoch(state.epoch)
        if self.dist.distributed:
            # Ranks must augment differently, and the checkpoint holds only rank 0's RNG state:
            # each rank re-seeds per epoch, so a resume at the same world size is exact.
            runtime.seed_everything(runtime.rank_epoch_seed(
                self.seed, self.dist.rank, self.dist.world_size, state.epoch))
        start, self.resume_progress = self.resume_progress, None
        train = train_one_epoch(
            state, self.train_loader, progress=self.progress,
            on_first_batch=self._first_batch if state.epoch == 0 and start is None else None,
            reduce=runtime.all_reduce_sum if self.dist.distributed else None,
            start=start, after_step=self._after_step if self._saves_mid_epoch else None,
        )
        result = self.validate()
        if result is not None and result.multilabel:
            self.thresholds = best_thresholds(result.scores, result.targets).tolist()
        state.epoch += 1
        metrics: dict[str, Any] = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            **self._val_metrics(result),
            "lr": train["lr"],
            "epoch_time_s": time.perf_counter() - epoch_start,
            "train_time_s": train["train_time_s"],
            "train_images_per_s": train["train_samples"] / train["train_time_s"],
            # wall time since the run started: setup, decoding and validation included
            "elapsed_s": time.perf_counter() - self.start_time,
        }
        if result is not None and result.multilabel:
            metrics["val_per_class"] = multilabel_metrics(
                result.scores, result.targets, self.thresholds, self.classes)["per_class"]
        elif result is not None:
            metrics["val_per_class"] = classification_metrics(
                result.confusion, self.classes)["per_class"]
        state.scheduler.step_epoch(metrics)
        self._update_best(metrics)
        self.last_metrics = metrics
        return metrics

    def validate(self) -> EvalResult | None:
        if self.val_loader is None:
            return None
        return evaluate(
            self.eval_model, self.val_loader,
            self.state.eval_loss_fn if self.state.eval_loss_fn is not None else self.state.loss_fn,
            self.state.device,
            len(self.classes), progress=self.progress,
            desc=f"epoch {self.state.epoch + 1} val",
            reduce=runtime.all_reduce_sum if self.dist.distributed else None,
            speed=self.state.speed, tta=self.tta,
        )

    # ------------------------------------------------------------------ helpers

    @property
    def _saves_mid_epoch(self) -> bool:
        return (self.stop is not None or self.checkpoint_every_steps > 0
                or self.checkpoint_every_s > 0)

    def _after_step(self, snapshot: Callable[[], EpochProgress]) -> None:
        """After an optimizer step: save a resumable state when one is due, and stop when a
        signal asked for it."""
        stopping = self.stop is not None and self.stop.requested
        due = stopping or (
            self.checkpoint_every_steps > 0
            and self.state.step % self.checkpoint_every_steps == 0) or (
            self.checkpoint_every_s > 0
            and time.perf_counter() - self.last_save >= self.checkpoint_every_s)
        if not due:
            return
        progress = snapshot()
        for cb in self.callbacks:
            cb.on_mid_epoch_save(self, progress)
        self.last_save = time.perf_counter()
        if stopping:
            assert self.stop is not None
            raise StopRequested(self.stop.reason)

    def _what_is_saved(self) -> str:
        """What ``last.pt`` holds, for a message that stops the run."""
        epoch, progress = self.saved_epoch, self.saved_progress
        if not self.dist.is_main:  # rank 0 saves, at each epoch's end (none mid-epoch)
            epoch, progress = self.state.epoch or self.saved_epoch, None
        if progress is not None:
            return (f"the run stops and keeps its last checkpoint (epoch {(epoch or 0) + 1} up "
                    f"to batch {progress.batches})")
        if epoch:
            return f"the run stops and keeps its last checkpoint (epoch {epoch})"
        return "the run stops before its first checkpoint: nothing was saved"

    def _first_batch(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        for cb in self.callbacks:
            cb.on_first_batch(self, images, labels)

    def _val_metrics(self, result: EvalResult | None) -> dict[str, float | None]:
        if result is None:
            return dict.fromkeys(self.val_keys)
        if result.multilabel:  # at the thresholds chosen on these images, as evaluate scores
            values = multilabel_epoch_metrics(result.loss, result.scores, result.targets,
                                              self.thresholds)
        else:
            values = epoch_metrics_from_eval(result.loss, result.top1, result.top5,
                                             result.confusion)
        return {key: values[key] for key in self.val_keys}

    def _update_best(self, metrics: dict[str, Any]) -> None:
        state = self.state
        if self.monitor is None:  # no validation set: the last epoch is the best we know
            self.improved = True
            state.best_metric, state.best_epoch = None, state.epoch
            return
        value = metrics[self.monitor.name]
        self.improved = self.monitor.better(value, state.best_metric)
        if self.improved:
            state.best_metric, state.best_epoch = value, state.epoch


def _restore_state(state: TrainState, record: CheckpointRecord, path: str | Path) -> None:
    """The :class:`TrainState` part of :meth:`Trainer.load_state_dict`; the weights go into the
    plain model inside the DDP and ``torch.compile`` wrappers (a checkpoint holds its
    state_dict)."""
    model = runtime.unwrap_model(state.model)
    load_model_state(model, record.model, path)
    # one image of the recorded size, before the RNG state is put back (nothing drawn here
    # changes the resumed run's batches)
    record.check_model(model, path, state.device)
    try:
        state.optimizer.load_state_dict(record.optimizer)  # type: ignore[arg-type]
    except ValueError as exc:  # parameter groups differ: head_lr_mult or freeze changed
        raise ImgclsError(
            f"cannot resume {path} with a different optim.head_lr_mult or model.freeze "
            f"than it was trained with ({exc})"
        ) from None
    state.scheduler.load_state_dict(record.scheduler)
    if state.ema is not None and record.ema:
        state.ema.load_state_dict(record.ema)
    if state.scaler is not None and record.scaler:
        state.scaler.load_state_dict(record.scaler)
    for hook in state.weight_hooks:
        if hook.key in record.weight_hooks:
            hook.load_state_dict(record.weight_hooks[hook.key])
    state.epoch, state.step = int(record.epoch or 0), record.step
    state.best_metric, state.best_epoch = record.best_metric, record.best_epoch
