"""train / evaluate / lr_find / dry_run: the thin wiring between config, data, components, the
trainer and its callbacks. Each part lives in its own module; this package only decides the
order (training here; :mod:`imgcls.api.checks`, :mod:`imgcls.api.evaluation` and
:mod:`imgcls.api.lr_range` for the rest).

Data flows one way: config -> runtime -> datasets -> pipeline (preprocessing, loaders) ->
components (model, optimiser, schedule) -> Trainer <-> callbacks (checkpoints, logs, limits).
A run is set up by :mod:`imgcls.engine.setup` (also for dry runs and the LR finder), a resumed
one restored by :meth:`imgcls.engine.trainer.Trainer.load_state_dict`, and every evaluation
scores through :func:`imgcls.deploy.scoring.score`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from imgcls import runtime
from imgcls.api.checks import dry_run
from imgcls.api.evaluation import dumps, evaluate_checkpoint
from imgcls.api.lr_range import MAX_LR_FIND_STEPS, LrFindResult, lr_find
from imgcls.config import Config, save_yaml
from imgcls.config.sizes import saved_size, size_hw
from imgcls.data.pipeline import Preprocessing, cache_dir
from imgcls.data.splits import save_split
from imgcls.data.transforms import apply_preset, resolved_preset
from imgcls.datacheck.leaks import warn_train_leaks
from imgcls.engine.callbacks import (
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    RunFiles,
    TimeLimit,
)
from imgcls.engine.loop import EpochProgress
from imgcls.engine.setup import (
    PreparedRun,
    UserData,
    describe_adaptation,
    finished,
    load_data,
    prepare_run,
    progress_enabled,
    run_monitor,
    silent,
    train_config,
)
from imgcls.engine.signals import GracefulStop
from imgcls.engine.trainer import Callback, Trainer
from imgcls.errors import ImgclsError
from imgcls.metric_table import Monitor
from imgcls.models.user import CodeConsent, code_record
from imgcls.runs.folder import Resume, next_steps, run_dir_of, shared_run_dir
from imgcls.runs.lock import require_free
from imgcls.runs.record import CheckpointRecord, provenance
from imgcls.runs.repair import repair_finished_run, repair_run_folder
from imgcls.tracking import echo

__all__ = [
    "Interrupted", "LrFindResult", "MAX_LR_FIND_STEPS", "RunResult", "UserData", "dry_run",
    "dumps", "evaluate_checkpoint", "load_data", "lr_find", "resolved_settings", "train",
    "train_config",
]


class Interrupted(KeyboardInterrupt):
    """A training run stopped by Ctrl-C or a signal, with where it stands: ``epoch`` is the
    last saved epoch (None: nothing saved yet), ``progress`` how far into the next epoch the
    saved state is (None: at the epoch's end), ``requeue`` whether SLURM asked (SIGUSR1).
    ``phase``: "" (in the training loop), "resuming" (before a resumed run's loop started:
    nothing new was saved) or "finished" (after its last save; ``epochs``: train.epochs)."""

    def __init__(self, message: str, run_dir: Path, epoch: int | None,
                 progress: EpochProgress | None = None, total_batches: int = 0,
                 requeue: bool = False, *, phase: str = "", epochs: int = 0) -> None:
        super().__init__(message)
        self.run_dir, self.epoch, self.progress = run_dir, epoch, progress
        self.total_batches, self.requeue = total_batches, requeue
        self.phase, self.epochs = phase, epochs


@contextlib.contextmanager
def _interrupted_while_resuming(resumed: Resume | None) -> Iterator[None]:
    """Ctrl-C or a signal before a resumed run's loop starts (its data and model loading): its
    ``last.pt`` is as it was, which the message says instead of "nothing was saved"."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as exc:
        if resumed is None:
            raise
        record = resumed.record
        progress = EpochProgress.from_state(record.progress) if record.progress else None
        raise Interrupted(str(exc) or "interrupted", resumed.run_dir, record.epoch or 0,
                          progress, phase="resuming") from None


@dataclass
class RunResult:
    run_dir: Path
    best_metric: float | None  # of train.monitor; None without a validation set
    best_epoch: int | None
    epochs: int
    seconds: float
    last_metrics: dict[str, Any]
    stop_reason: str | None = None  # why it stopped before train.epochs (time limit, early stop)


# --------------------------------------------------------------------------- train


def train(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    classes: list[str] | None = None,
    callbacks: Sequence[Callback] = (),
    code: CodeConsent | None = None,
) -> RunResult:
    """Train a classifier; returns where the run went and its best monitored metric.

    ``resume`` continues a run folder at its next epoch (its saved config, with ``overrides``
    layered on top, e.g. more epochs). ``train_dataset`` (any map-style dataset yielding
    ``(image, label)``) replaces ``cfg.data``. ``callbacks`` run after imgcls's stop rules and
    before its checkpoint (see :class:`imgcls.engine.trainer.Callback`); those with a ``key``
    have their state saved and restored on resume. ``code`` allows the resumed run's own model
    class to be imported (:func:`imgcls.models.user.approve_code`).

    >>> train(build_config(overrides={"data.source": "my_images", "train.epochs": 3}))
    ... # doctest: +SKIP
    """
    start_time = time.perf_counter()
    if resume is not None and not runtime.detect_dist().distributed:
        # fail before reading data or repairing records (under torchrun rank 0's lock decides)
        require_free(Path(resume) if Path(resume).is_dir() else run_dir_of(Path(resume)))
    cfg, resumed = train_config(cfg, resume=resume, overrides=overrides, code=code)
    if resumed is not None:
        done = resumed.record.epoch or 0
        if done >= cfg.train.epochs:
            if repair_finished_run(resumed.run_dir, resumed.path, resumed.record,
                                   tensorboard=cfg.log.tensorboard, say=echo):
                return RunResult(resumed.run_dir, resumed.record.best_metric,
                                 resumed.record.best_epoch, done, time.perf_counter() - start_time,
                                 resumed.record.metrics, "finished already; records repaired")
            raise finished(resumed, cfg)
    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.train.seed)
    user = UserData(train_dataset, val_dataset, classes, list(callbacks))
    # Under torchrun: join the process group for the whole run and leave it on any exit. Rank 0
    # holds the run folder's lock (``held``) until the run ends, however it ends.
    with _interrupted_while_resuming(resumed), runtime.distributed(
            cfg.train.device, cfg.train.dist_timeout_min) as (info, device), \
            contextlib.ExitStack() as held:
        return _train(cfg, resumed, info, device, user, start_time, held)


def _train(cfg: Config, resumed: Resume | None, info: runtime.DistInfo, device: torch.device,
           user: UserData, start_time: float, held: contextlib.ExitStack) -> RunResult:
    say = echo if info.is_main else silent  # only rank 0 prints and writes the run folder
    runtime.configure_speed(device, cudnn_benchmark=cfg.train.cudnn_benchmark,
                            deterministic=cfg.train.deterministic, tf32=cfg.train.tf32)
    data = load_data(cfg, resumed, user, say)
    if info.is_main:  # exact train/val copies: file hashes, cached beside the decode cache
        warn_train_leaks(data, cfg.data.source, cache_dir(cfg), say)
    if cfg.data.val_split == "test":
        say("warning: data.val_split=test validates on the test split: the best epoch is chosen "
            "on the test images, which flatters its test accuracy (as the tutorials report it)")
    monitor = run_monitor(cfg, data, say=say)
    if info.distributed and (cfg.train.checkpoint_every_steps
                             or cfg.train.checkpoint_every_minutes):
        raise ImgclsError("train.checkpoint_every_steps/minutes: mid-epoch checkpoints are for "
                          "single-process runs (a distributed run saves at each epoch's end)")
    run = prepare_run(cfg, data, device=device, info=info, resuming=resumed is not None,
                      say=say)
    # ---- the run folder: written (by rank 0) only once everything above has been checked
    run_dir = shared_run_dir(cfg, resumed.run_dir if resumed else None, info, held)
    trainer = _trainer(run, run_dir, resumed, monitor, user.callbacks, start_time, say)
    if info.is_main:
        if resumed is not None:
            repair_run_folder(run_dir, resumed.path, resumed.record, say)
        save_yaml(cfg, run_dir / "config.yaml",
                  resolved_settings(cfg, run.prep, run.loaders, device))
        if not (run_dir / "split.json").exists():
            save_split(data.split_record, run_dir / "split.json")
    _say_start(run, run_dir, trainer, resumed is not None, say)
    return _fit(trainer, run, run_dir, monitor, start_time, say)


def _trainer(run: PreparedRun, run_dir: Path, resumed: Resume | None, monitor: Monitor | None,
             extra: list[Callback], start_time: float, say: Any) -> Trainer:
    """The Trainer of the run, with its callbacks; a resumed run's state put back."""
    cfg, info = run.cfg, run.info
    callbacks = _callbacks(cfg, run_dir, run.data, run.prep, resumed, info, run.device, monitor,
                           say, extra)
    # Signals ask for a save at the next step (one process; under torchrun every rank would
    # have to agree on the step, so there they stop at once, as Ctrl-C always did).
    graceful = None if info.distributed else GracefulStop(requeue=cfg.train.requeue)
    trainer = Trainer(
        run.state, run.loaders.train, run.loaders.val, epochs=cfg.train.epochs,
        classes=run.data.classes, monitor=monitor, callbacks=callbacks, dist=info,
        seed=cfg.train.seed, tta=cfg.train.tta, progress=progress_enabled(cfg) and info.is_main,
        start_time=start_time, say=say, checkpoint_every_steps=cfg.train.checkpoint_every_steps,
        checkpoint_every_minutes=cfg.train.checkpoint_every_minutes, stop=graceful,
        multilabel=run.data.multilabel,
    )
    if resumed is not None:
        trainer.load_state_dict(resumed.record, resumed.path,
                                monitor=monitor.name if monitor else cfg.train.monitor)
    return trainer


def _say_start(run: PreparedRun, run_dir: Path, trainer: Trainer, resuming: bool,
               say: Any) -> None:
    """What the run trains on, where, and (resumed part-way) where in its epoch it goes on."""
    cfg, data, info = run.cfg, run.data, run.info
    if run.prep.note:  # said once everything is checked: a refused run's error stays one line
        say(run.prep.note)
    processes = f" x {info.world_size} processes" if info.distributed else ""
    n_val = len(data.val) if data.val is not None else 0  # type: ignore[arg-type]
    say(f"{'resuming' if resuming else 'training'} {cfg.model.name} on {cfg.data.source} "
        f"({len(data.train)} train / {n_val} val images, {len(data.classes)} classes) on "  # type: ignore[arg-type]
        f"{run.device}{processes}{runtime.describe_amp(cfg.train.amp, run.device)}, images "
        f"{run.loaders.describe()}"
        f"{describe_adaptation(data, run.prep, cfg)}; run folder {run_dir}")
    if trainer.resume_progress is not None:
        say(f"continuing epoch {trainer.state.epoch + 1} at batch "
            f"{trainer.resume_progress.batches + 1} of {len(run.loaders.train)}")


def _fit(trainer: Trainer, run: PreparedRun, run_dir: Path, monitor: Monitor | None,
         start_time: float, say: Any) -> RunResult:
    """Train to the end; a signal or Ctrl-C becomes :class:`Interrupted` with what is saved."""
    cfg, state, graceful = run.cfg, trainer.state, trainer.stop
    try:
        with graceful or contextlib.nullcontext():
            last = trainer.fit()
    except KeyboardInterrupt as exc:  # Ctrl-C or a signal: say what is saved and where
        raise Interrupted(str(exc) or "interrupted", run_dir, trainer.saved_epoch,
                          trainer.saved_progress, len(run.loaders.train),
                          requeue=graceful is not None and graceful.requeue) from None
    try:  # the run is over and its last epoch saved (by rank 0): a signal now loses nothing
        seconds = time.perf_counter() - start_time
        best = (f"best {monitor.name} {state.best_metric:.4f} at epoch {state.best_epoch}"
                if monitor is not None and state.best_metric is not None else "no validation set")
        say(f"done: {best} | {state.epoch} epochs in {seconds:.1f}s | run folder {run_dir}")
        say("next:\n" + "\n".join(f"  {line}" for line in next_steps(
            run_dir, _resume_hint(cfg, trainer.stopped_by, state.epoch))))
    except KeyboardInterrupt as exc:
        raise Interrupted(str(exc) or "interrupted", run_dir, state.epoch, phase="finished",
                          epochs=cfg.train.epochs) from None
    return RunResult(run_dir, state.best_metric if monitor else None, state.best_epoch,
                     state.epoch, seconds, last, trainer.stop_reason)


def resolved_settings(cfg: Config, prep: Preprocessing, loaders: Any,
                      device: torch.device) -> dict[str, Any]:
    """What the run made of the keys that leave the choice to imgcls, as config.yaml records it
    beside what was asked (``data.loader: auto`` trained with ``memory``, ...)."""
    amp = runtime.autocast_dtype(cfg.train.amp, device)
    mean, std = prep.mean_std if prep.mean_std else (None, None)
    transforms = apply_preset(cfg.transforms, prep.image_size, cfg.explicit)
    return {
        "data.loader": "memory" if loaders.in_memory else "dataloader",
        "train.device": str(device),
        "train.amp": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp],
        "transforms.image_size": saved_size(prep.image_size),  # YAML: an int or [H, W]
        "transforms.preset": resolved_preset(cfg.transforms.preset, prep.image_size),
        "transforms.hflip": transforms.hflip,
        "transforms.mean": [round(float(m), 6) for m in mean] if mean is not None else None,
        "transforms.std": [round(float(s), 6) for s in std] if std is not None else None,
    }


def _resume_hint(cfg: Config, stopped_by: Callback | None, epochs: int) -> tuple[str, str]:
    """(what, KEY=VALUE) for the next-steps line that resumes this run."""
    if isinstance(stopped_by, TimeLimit):
        return "continue it", ""
    if isinstance(stopped_by, EarlyStopping):
        return "train on", f"train.early_stop_patience={2 * cfg.train.early_stop_patience}"
    return "train longer", f"train.epochs={epochs + max(epochs // 2, 1)}"


def _callbacks(cfg: Config, run_dir: Path, data: Any, prep: Preprocessing,
               resumed: Resume | None, info: runtime.DistInfo, device: torch.device,
               monitor: Monitor | None, say: Any, extra: list[Callback]) -> list[Callback]:
    """In order: the stop rules and the caller's callbacks first (their state goes into this
    epoch's checkpoint), then the checkpoint, then the logs. Files are rank 0's."""
    out: list[Callback] = []
    if monitor is not None and cfg.train.early_stop_patience > 0:
        out.append(EarlyStopping(monitor, cfg.train.early_stop_patience,
                                 cfg.train.early_stop_min_delta))
    if cfg.train.max_minutes > 0:
        out.append(TimeLimit(cfg.train.max_minutes, run_dir))
    out += extra
    if not info.is_main:
        return out
    template = CheckpointRecord(
        model={}, config=cfg.to_saved(), classes=list(data.classes),
        input_size=saved_size(prep.image_size),
        in_channels=cfg.model.in_channels,
        mean=prep.mean_std[0] if prep.mean_std else None,
        std=prep.mean_std[1] if prep.mean_std else None,
        native_size=data.native_size, monitor=monitor.name if monitor else cfg.train.monitor,
        multilabel=data.multilabel,
        provenance=provenance(device, info.world_size), model_code=code_record(cfg.model.name),
    )
    graph_input = None
    if cfg.log.graph and resumed is None:
        graph_input = torch.zeros(1, cfg.model.in_channels, *size_hw(prep.image_size))
    out.append(Checkpointer(run_dir, template))
    out.append(MetricsLogger(
        # a new run truncates to nothing: a folder started over drops its old rows
        run_dir, cfg.log, resume_epoch=int(resumed.record.epoch or 0) if resumed else 0,
        mean_std=prep.mean_std, graph_input=graph_input, say=say,
        resume_row=resumed.record.metrics if resumed else None,
    ))
    out.append(RunFiles(run_dir, say))  # results.csv, curves.png: after metrics.jsonl's line
    return out
