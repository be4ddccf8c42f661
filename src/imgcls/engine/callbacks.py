"""What a training run does around its loop, one callback each: checkpoints, metrics logging
(with results.csv and curves.png), the time limit and early stopping. Each keeps its own state,
saved in the checkpoint and restored on ``--resume`` (see
:class:`imgcls.engine.trainer.Callback`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imgcls import runtime
from imgcls.config import LogConfig
from imgcls.data.transforms import denormalize
from imgcls.engine.loop import EpochProgress
from imgcls.engine.trainer import Callback, Trainer
from imgcls.errors import ImgclsError
from imgcls.metric_table import METRICS, Monitor
from imgcls.runs.checkpoint import copy_checkpoint
from imgcls.runs.files import refresh_run_files
from imgcls.runs.record import CheckpointRecord
from imgcls.tracking import RunLogger


class Checkpointer(Callback):
    """``checkpoints/last.pt`` after every epoch and ``best.pt`` when the monitored metric
    improved (every epoch when there is no validation set). ``template`` holds what does not
    change during the run (config, classes, preprocessing, provenance)."""

    def __init__(self, run_dir: Path, template: CheckpointRecord) -> None:
        self.folder = run_dir / "checkpoints"
        self.template = template

    def record(self, trainer: Trainer) -> CheckpointRecord:
        state = trainer.state
        return dataclasses.replace(
            self.template,
            # the unwrapped model: a checkpoint of a DDP run loads in one process and vice versa
            model=runtime.unwrap_model(state.model).state_dict(),
            optimizer=state.optimizer.state_dict(),
            scheduler=state.scheduler.state_dict(),
            epoch=state.epoch, step=state.step,
            best_metric=state.best_metric, best_epoch=state.best_epoch,
            metrics=trainer.last_metrics,
            rng=runtime.get_rng_state(),
            ema=state.ema.state_dict() if state.ema is not None else None,
            scaler=state.scaler.state_dict() if state.scaler is not None else None,
            callbacks=trainer.callback_states(),
            weight_hooks={hook.key: hook.state_dict() for hook in state.weight_hooks},
            thresholds=trainer.thresholds,
        )

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        last = self.folder / "last.pt"
        self.record(trainer).save(last)
        trainer.saved_epoch, trainer.saved_progress = trainer.state.epoch, None
        if trainer.improved:
            copy_checkpoint(last, self.folder / "best.pt")
        return None

    def on_mid_epoch_save(self, trainer: Trainer, progress: EpochProgress) -> None:
        # last.pt only: best.pt stays a whole epoch's weights, measured on the validation set
        record = dataclasses.replace(self.record(trainer), progress=progress.state_dict())
        record.save(self.folder / "last.pt")
        trainer.saved_epoch, trainer.saved_progress = trainer.state.epoch, progress


class MetricsLogger(Callback):
    """metrics.jsonl, TensorBoard (scalars, a grid of the first batch, the graph) and the
    console line of each epoch."""

    def __init__(self, run_dir: Path, log: LogConfig, *, resume_epoch: int,
                 mean_std: tuple[list[float], list[float]] | None,
                 graph_input: torch.Tensor | None, say: Callable[[str], None],
                 resume_row: dict[str, Any] | None = None) -> None:
        self.run_dir, self.log, self.resume_epoch = run_dir, log, resume_epoch
        self.resume_row = resume_row  # the checkpoint's copy of its epoch's metrics row
        self.mean_std, self.graph_input, self.say = mean_std, graph_input, say
        self.logger: RunLogger | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        # On resume, rows after the checkpoint's epoch (a run that died before saving) go, and
        # the checkpoint's own row comes back if a kill kept it from metrics.jsonl.
        self.logger, repaired = RunLogger.reopen(
            self.run_dir, tensorboard=self.log.tensorboard, resume_epoch=self.resume_epoch,
            resume_row=self.resume_row)
        if repaired:
            self.say(f"metrics.jsonl: wrote epoch {self.resume_epoch}'s row, which a kill had "
                     "kept out (it is saved in last.pt)")
        if self.log.graph and self.graph_input is not None:
            model = runtime.unwrap_model(trainer.state.model)
            self.logger.log_graph(model, self.graph_input.to(trainer.state.device))

    def on_first_batch(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.logger is not None and self.log.image_grid:
            self.logger.log_images("train/batch", denormalize(images.float(), self.mean_std))

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        if self.logger is not None:
            self.logger.log_epoch(metrics)
        self.say(epoch_line(metrics, trainer.epochs))
        return None

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.logger is not None:
            self.logger.close()


class RunFiles(Callback):
    """``results.csv`` and ``curves.png`` in the run folder, rewritten in full from
    ``metrics.jsonl`` after each epoch (so a resumed run matches its log). Runs after
    :class:`MetricsLogger`, on rank 0 only; a file that cannot be written is a warning, not the
    end of the run."""

    def __init__(self, run_dir: Path, say: Callable[[str], None]) -> None:
        self.run_dir, self.say = run_dir, say

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        try:
            refresh_run_files(self.run_dir)
        except (OSError, ImgclsError) as exc:
            self.say(f"warning: cannot refresh results.csv/curves.png in {self.run_dir}: {exc}")
        return None


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """The console line of an epoch: the metrics marked console=True in metric_table.METRICS
    (the validation ones absent without a validation set), then the epoch's time."""
    parts = [f"epoch {m['epoch']}/{epochs}"]
    parts += [f"{name} {m[name]:{spec.fmt}}" for name, spec in METRICS.items()
              if spec.console and m.get(name) is not None]
    parts.append(f"{m['epoch_time_s']:{METRICS['epoch_time_s'].fmt}}s")
    return "  ".join(parts)


class TimeLimit(Callback):
    """``train.max_minutes``: stop after the epoch that ends past the limit (resumable)."""

    def __init__(self, max_minutes: float, run_dir: Path) -> None:
        self.max_minutes, self.run_dir = max_minutes, run_dir

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        if self.max_minutes <= 0 or trainer.state.epoch >= trainer.epochs:
            return None
        if metrics["elapsed_s"] < self.max_minutes * 60:
            return None
        return (f"stopping after epoch {trainer.state.epoch}: train.max_minutes="
                f"{self.max_minutes:g} reached; `imgcls train --resume {self.run_dir}` "
                "continues the run")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs. Its counter is saved in the checkpoint, so ``--resume`` keeps counting."""

    key = "early_stopping"

    def __init__(self, monitor: Monitor, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0  # epochs since the last improvement
        self.stopped_epoch: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.stopped_epoch is not None and self.wait >= self.patience:
            raise ImgclsError(
                f"this run stopped early at epoch {self.stopped_epoch} ({self.monitor.name} "
                f"had not improved for {self.wait} epochs); to train on, resume with a larger "
                "train.early_stop_patience, or 0 to switch early stopping off"
            )

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        value = metrics[self.monitor.name]
        if self.monitor.better(value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, metrics["epoch"], 0
            return None
        self.wait += 1
        if self.wait < self.patience or trainer.state.epoch >= trainer.epochs:
            return None
        self.stopped_epoch = metrics["epoch"]
        best = f"{self.best:.4f}" if self.best is not None and math.isfinite(self.best) else "none"
        return (f"stopping early after epoch {self.stopped_epoch}: {self.monitor.name} has not "
                f"improved by more than {self.min_delta:g} for {self.wait} epochs (best {best} "
                f"at epoch {self.best_epoch}); best.pt holds epoch {trainer.state.best_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.wait, self.stopped_epoch = int(state.get("wait", 0)), state.get("stopped_epoch")
