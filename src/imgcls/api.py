"""train / evaluate / lr_find: the thin wiring between config, data, components, the trainer and
its callbacks. Each part lives in its own module; this one only decides the order.

Data flows one way: config -> runtime -> datasets -> pipeline (preprocessing, loaders) ->
components (model, optimiser, schedule) -> Trainer <-> callbacks (checkpoints, logs, limits).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from imgcls import runtime
from imgcls.config import (
    Config,
    build_config,
    from_saved,
    imbalance_handled,
    load_yaml,
    save_yaml,
)
from imgcls.data import DataSplit, create_datasets, create_eval_dataset, from_dataset
from imgcls.data.pipeline import (
    Preprocessing,
    build_eval_loader,
    build_train_loaders,
    cache_dir,
    resolve_preprocessing,
    source_defaults,
    use_memory_loader,
)
from imgcls.data.sampling import class_counts
from imgcls.data.sources import dataset_labels
from imgcls.data.splits import load_split, save_split
from imgcls.data.transforms import apply_preset, resolved_preset
from imgcls.datacheck.leaks import warn_train_leaks
from imgcls.engine import components
from imgcls.engine.callbacks import (
    Checkpointer,
    EarlyStopping,
    MetricsLogger,
    RunFiles,
    TimeLimit,
)
from imgcls.engine.loop import EpochProgress, TrainState, evaluate
from imgcls.engine.lr_finder import lr_sweep, save_sweep
from imgcls.engine.metrics import classification_metrics
from imgcls.engine.record import CheckpointRecord, provenance
from imgcls.engine.repair import repair_finished_run, repair_run_folder
from imgcls.engine.report import write_eval_report
from imgcls.engine.run_folder import (
    Resume,
    holds_a_run,
    next_steps,
    resolve_resume,
    run_dir_of,
    shared_run_dir,
    unsaved_run,
)
from imgcls.engine.run_lock import require_free
from imgcls.engine.signals import GracefulStop
from imgcls.engine.trainer import Callback, Trainer
from imgcls.errors import ImgclsError
from imgcls.inference import evaluation_overrides, load_model
from imgcls.metric_table import Monitor, get_monitor
from imgcls.models.user import CodeConsent, approve_code, code_record
from imgcls.optim import create_loss
from imgcls.tracking import echo

MAX_LR_FIND_STEPS = 1000  # a range test is a few hundred steps; more is a training run


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


@dataclass
class UserData:
    """Datasets handed to :func:`train` from Python instead of ``cfg.data``."""

    train: Dataset | None = None
    val: Dataset | None = None
    classes: list[str] | None = None
    callbacks: list[Callback] = field(default_factory=list)  # the caller's own


def _progress_enabled(cfg: Config) -> bool:
    if cfg.log.progress == "auto":
        return sys.stderr.isatty()
    return cfg.log.progress == "on"


def _silent(_message: str) -> None:
    pass


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
            raise _finished(resumed, cfg)
    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.train.seed)
    user = UserData(train_dataset, val_dataset, classes, list(callbacks))
    # Under torchrun: join the process group for the whole run and leave it on any exit. Rank 0
    # holds the run folder's lock (``held``) until the run ends, however it ends.
    with _interrupted_while_resuming(resumed), runtime.distributed(
            cfg.train.device, cfg.train.dist_timeout_min) as (info, device), \
            contextlib.ExitStack() as held:
        return _train(cfg, resumed, info, device, user, start_time, held)


def train_config(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    code: CodeConsent | None = None,
) -> tuple[Config, Resume | None]:
    """The config :func:`train` runs with, and the run it resumes (None for a new run).

    One function for both, so that ``imgcls train --print-config`` shows exactly what the run
    would use: on resume the run's saved config with ``overrides`` on top, else ``cfg`` (or the
    defaults) with ``overrides`` and what the data source implies. Reads the checkpoint only.

    >>> train_config(overrides={"data.source": "digits"})[0].transforms.preset
    'digits'
    """
    if resume is not None and (unsaved := unsaved_run(resume)) is not None:
        where = {"log.output": str(unsaved.parent), "log.name": unsaved.name}
        cfg = build_config(from_saved(load_yaml(unsaved / "config.yaml")),
                           {**(overrides or {}), **where})
        cfg = _approved(cfg, {}, code, unsaved)
        echo(f"{unsaved} has no checkpoint yet (it stopped during its first epoch): starting it "
             "over with its config.yaml")
        return source_defaults(cfg), None
    if resume is not None:
        resumed = resolve_resume(resume)
        cfg = build_config(from_saved(resumed.record.config), overrides)
        return _approved(cfg, resumed.record.model_code, code, resumed.path), resumed
    cfg = source_defaults(build_config(cfg, overrides))
    folder = Path(cfg.log.output) / cfg.log.name
    if cfg.train.requeue and cfg.log.name and (folder / "checkpoints" / "last.pt").exists():
        # a requeued SLURM job reruns its first command: it continues the run it saved
        # (with this command's config, the one it started with)
        echo(f"train.requeue: {folder} holds this run; resuming it")
        return cfg, resolve_resume(folder)
    return cfg, None


def dry_run(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    code: CodeConsent | None = None,
) -> list[str]:
    """What :func:`train` would run, checked up to one forward pass of one training batch:
    the config, the data (listed and split), the model, the loaders and, with ``resume``, the
    run's checkpoint. Writes nothing: no run folder, no decode cache, no download. Returns
    the lines ``imgcls train --dry-run`` prints.

    >>> print("\n".join(dry_run(overrides={"data.source": "digits"})))  # doctest: +SKIP
    """
    cfg, resumed = train_config(cfg, resume=resume, overrides=overrides, code=code)
    if resumed is not None and (resumed.record.epoch or 0) >= cfg.train.epochs:
        raise _finished(resumed, cfg)
    # CIFAR that is not there yet is an error here, not a download
    checked = replace(cfg, data=replace(cfg.data, download=False))
    device = runtime.resolve_device(cfg.train.device)
    data = load_data(checked, resumed, UserData())
    prep = resolve_preprocessing(checked, data, cache=False)
    in_memory = use_memory_loader(checked, data, prep)
    # the batch comes from a DataLoader: the memory loader would write its decode cache
    as_files = replace(checked, data=replace(checked.data, loader="dataloader"))
    info = runtime.DistInfo()
    loaders = build_train_loaders(as_files, data, prep, info, device)
    notes: list[str] = []
    _monitor(checked, has_val=loaders.val is not None, say=notes.append)
    state = _train_state(as_files, data, loaders.train, resumed, info, device, _silent)
    images, _ = next(iter(loaders.train))
    state.model.eval()
    with torch.no_grad():
        logits = state.model(images.to(device))
    if tuple(logits.shape) != (len(images), len(data.classes)):
        raise ImgclsError(f"{cfg.model.name} gave logits of shape {tuple(logits.shape)} for a "
                          f"batch of {len(images)}; expected ({len(images)}, "
                          f"{len(data.classes)})")
    if resumed is not None:
        run_dir, what = resumed.run_dir, f"resume {resumed.run_dir} at epoch " \
            f"{(resumed.record.epoch or 0) + 1}"
    else:
        name = cfg.log.name or f"{cfg.model.name}-<timestamp>"
        run_dir, what = Path(cfg.log.output) / name, "train"
        if cfg.log.name and (run_dir / "checkpoints" / "last.pt").exists():
            raise holds_a_run(run_dir)
    n_val = len(data.val) if data.val is not None else 0  # type: ignore[arg-type]
    classes = ", ".join(data.classes[:10]) + (", ..." if len(data.classes) > 10 else "")
    return [
        f"dry run: would {what}",
        f"  model:     {cfg.model.name} ({sum(p.numel() for p in state.model.parameters()):,} "
        "parameters)",
        f"  data:      {cfg.data.source}: {len(data.train)} train / {n_val} val images",  # type: ignore[arg-type]
        f"  classes:   {len(data.classes)} ({classes})",
        f"  input:     {prep.image_size}x{prep.image_size}, {cfg.model.in_channels} channel(s)"
        f"{_adapted(data, prep, cfg)}",
        f"  loader:    {'memory (decoded into device memory)' if in_memory else 'dataloader'}"
        f", batch {cfg.loader.batch_size}, {len(loaders.train)} batches per epoch",
        f"  device:    {device}",
        f"  epochs:    {cfg.train.epochs}, monitor {cfg.train.monitor}",
        f"  run folder: {run_dir}",
        f"  checked:   one batch {tuple(images.shape)} -> logits {tuple(logits.shape)}; "
        "nothing written",
        *notes,
    ]


def _finished(resumed: Resume, cfg: Config) -> ImgclsError:
    done = resumed.record.epoch or 0
    return ImgclsError(f"{resumed.path} already finished epoch {done} of train.epochs="
                       f"{cfg.train.epochs}; pass train.epochs=N (N > {done}) to train longer")


def _approved(cfg: Config, recorded: dict[str, Any], code: CodeConsent | None,
              source: Path) -> Config:
    """A resumed run's config, its own model code allowed by ``code`` (or refused before
    anything is imported)."""
    name = approve_code(cfg.model.name, recorded, code, source)
    return replace(cfg, model=replace(cfg.model, name=name))


def _train(cfg: Config, resumed: Resume | None, info: runtime.DistInfo, device: torch.device,
           user: UserData, start_time: float, held: contextlib.ExitStack) -> RunResult:
    say = echo if info.is_main else _silent  # only rank 0 prints and writes the run folder
    runtime.configure_speed(device, cudnn_benchmark=cfg.train.cudnn_benchmark,
                            deterministic=cfg.train.deterministic, tf32=cfg.train.tf32)
    data = load_data(cfg, resumed, user, say)
    if info.is_main:  # exact train/val copies: file hashes, cached beside the decode cache
        warn_train_leaks(data, cfg.data.source, cache_dir(cfg), say)
    if cfg.data.val_split == "test":
        say("warning: data.val_split=test validates on the test split: the best epoch is chosen "
            "on the test images, which flatters its test accuracy (as the tutorials report it)")
    prep = resolve_preprocessing(cfg, data)
    loaders = build_train_loaders(cfg, data, prep, info, device)
    monitor = _monitor(cfg, has_val=loaders.val is not None, say=say)
    mid_epoch = cfg.train.checkpoint_every_steps or cfg.train.checkpoint_every_minutes
    if info.distributed and mid_epoch:
        raise ImgclsError("train.checkpoint_every_steps/minutes: mid-epoch checkpoints are for "
                          "single-process runs (a distributed run saves at each epoch's end)")
    state = _train_state(cfg, data, loaders.train, resumed, info, device, say)
    # ---- the run folder: written (by rank 0) only once everything above has been checked
    run_dir = shared_run_dir(cfg, resumed.run_dir if resumed else None, info, held)
    callbacks = _callbacks(cfg, run_dir, data, prep, resumed, info, device, monitor, say,
                           user.callbacks)
    # Signals ask for a save at the next step (one process; under torchrun every rank would
    # have to agree on the step, so there they stop at once, as Ctrl-C always did).
    graceful = None if info.distributed else GracefulStop(requeue=cfg.train.requeue)
    trainer = Trainer(
        state, loaders.train, loaders.val, epochs=cfg.train.epochs, classes=data.classes,
        monitor=monitor, callbacks=callbacks, dist=info, seed=cfg.train.seed, tta=cfg.train.tta,
        progress=_progress_enabled(cfg) and info.is_main, start_time=start_time, say=say,
        checkpoint_every_steps=cfg.train.checkpoint_every_steps,
        checkpoint_every_minutes=cfg.train.checkpoint_every_minutes, stop=graceful,
    )
    if resumed is not None:
        trainer.load_callback_states(resumed.record.callbacks)
        trainer.saved_epoch = resumed.record.epoch
        trainer.last_metrics = dict(resumed.record.metrics)
        if resumed.record.progress:
            trainer.resume_progress = trainer.saved_progress = EpochProgress.from_state(
                resumed.record.progress)
        if info.is_main:
            repair_run_folder(run_dir, resumed.path, resumed.record, say)
    if info.is_main:
        save_yaml(cfg, run_dir / "config.yaml", resolved_settings(cfg, prep, loaders, device))
        if not (run_dir / "split.json").exists():
            save_split(data.split_record, run_dir / "split.json")
    if prep.note:  # said once everything is checked: a refused run's error stays one line
        say(prep.note)
    processes = f" x {info.world_size} processes" if info.distributed else ""
    n_val = len(data.val) if data.val is not None else 0  # type: ignore[arg-type]
    say(f"{'resuming' if resumed else 'training'} {cfg.model.name} on {cfg.data.source} "
        f"({len(data.train)} train / {n_val} val images, {len(data.classes)} classes) on "  # type: ignore[arg-type]
        f"{device}{processes}, images "
        f"{'decoded into device memory' if loaders.in_memory else 'read by a DataLoader'}"
        f"{_adapted(data, prep, cfg)}; run folder {run_dir}")
    if trainer.resume_progress is not None:
        say(f"continuing epoch {state.epoch + 1} at batch {trainer.resume_progress.batches + 1} "
            f"of {len(loaders.train)}")
    try:
        with graceful or contextlib.nullcontext():
            last = trainer.fit()
    except KeyboardInterrupt as exc:  # Ctrl-C or a signal: say what is saved and where
        raise Interrupted(str(exc) or "interrupted", run_dir, trainer.saved_epoch,
                          trainer.saved_progress, len(loaders.train),
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
        "transforms.image_size": prep.image_size,
        "transforms.preset": resolved_preset(cfg.transforms.preset, prep.image_size),
        "transforms.hflip": transforms.hflip,
        "transforms.mean": [round(float(m), 6) for m in mean] if mean is not None else None,
        "transforms.std": [round(float(s), 6) for s in std] if std is not None else None,
    }


def _adapted(data: DataSplit, prep: Preprocessing, cfg: Config) -> str:
    """How the images are adapted to the model, when they are (the digits' 8x8 greyscale)."""
    size = data.native_size
    resized = f", resized from {size}x{size} to {prep.image_size}x{prep.image_size}" if (
        size is not None and size != prep.image_size) else ""
    grey = ", greyscale repeated to 3 channels" if (
        cfg.data.source.strip().lower() == "digits" and cfg.model.in_channels == 3) else ""
    return resized + grey


def _resume_hint(cfg: Config, stopped_by: Callback | None, epochs: int) -> tuple[str, str]:
    """(what, KEY=VALUE) for the next-steps line that resumes this run."""
    if isinstance(stopped_by, TimeLimit):
        return "continue it", ""
    if isinstance(stopped_by, EarlyStopping):
        return "train on", f"train.early_stop_patience={2 * cfg.train.early_stop_patience}"
    return "train longer", f"train.epochs={epochs + max(epochs // 2, 1)}"


def load_data(cfg: Config, resumed: Resume | None, user: UserData,
              say: Any = _silent) -> DataSplit:
    """The training data: the Python datasets if given, else ``cfg.data``; a resumed run
    reuses its ``split.json``, so its validation images never change."""
    split_record = None
    if resumed is not None and (resumed.run_dir / "split.json").exists():
        split_record = load_split(resumed.run_dir / "split.json")
    if user.train is not None and cfg.data.folds:
        raise ImgclsError("data.folds splits a data source (data.source); a dataset handed to "
                          "train() is split by data.val_fraction or its own val_dataset")
    if user.train is not None:
        data = from_dataset(user.train, user.val, user.classes, cfg.data.val_fraction,
                            cfg.train.seed)
    else:
        data = create_datasets(cfg.data, cfg.train.seed, split_record=split_record)
    if data.skipped:
        say(f"skipped {len(data.skipped)} unreadable image(s) (data.skip_bad_images=true), "
            f"first: {data.skipped[0]}")
    if data.links_dropped:
        say(f"did not follow {len(data.links_dropped)} symlink(s) (a loop, a parent folder or a "
            f"second path to an image; each real image is used once), first: "
            f"{data.links_dropped[0]}")
    if resumed is not None and resumed.record.classes != list(data.classes):
        raise ImgclsError(
            f"the data's classes {data.classes[:5]}... differ from the checkpoint's "
            f"{resumed.record.classes[:5]}..."
        )
    return data


def _monitor(cfg: Config, *, has_val: bool, say: Any) -> Monitor | None:
    """train.monitor, or None without a validation set (then best.pt is the last epoch, and
    what needs a validation metric is refused before anything is written)."""
    if has_val:
        if "train.monitor" not in cfg.explicit and imbalance_handled(cfg.to_dict()):
            say(f"train.monitor={cfg.train.monitor}: class weights/balanced sampling are on, and "
                "accuracy would favour the majority class; set train.monitor to choose")
        return get_monitor(cfg.train.monitor)
    if cfg.sched.name == "plateau":
        raise ImgclsError("sched.name=plateau needs a validation set to watch, and this run has "
                          "none (data.val_fraction=0 and no val/ folder)")
    if cfg.train.early_stop_patience > 0:
        raise ImgclsError("train.early_stop_patience needs a validation set to watch, and this "
                          "run has none (data.val_fraction=0 and no val/ folder)")
    say(f"no validation set: train.monitor={cfg.train.monitor} is not measured, and best.pt "
        "follows the last epoch")
    return None


def _train_state(cfg: Config, data: DataSplit, train_loader: Any, resumed: Resume | None,
                 info: runtime.DistInfo, device: torch.device, say: Any) -> TrainState:
    model = components.build_model(cfg, len(data.classes), device, train_loader=train_loader,
                                   resuming=resumed is not None, dist=info)
    state = components.build_train_state(
        cfg, model, device, world_size=info.world_size,
        steps_per_epoch=components.steps_per_epoch(cfg, len(train_loader)),
        class_counts=class_counts(dataset_labels(data.train), len(data.classes)), say=say,
    )
    if resumed is not None:
        components.restore_train_state(state, resumed.record, resumed.path)
        if resumed.record.monitor != cfg.train.monitor:
            say(f"train.monitor changed from {resumed.record.monitor} to {cfg.train.monitor}: "
                "best.pt follows the new metric from the next epoch on")
            state.best_metric, state.best_epoch = None, None
    components.wrap_for_training(state, cfg, info, device)
    return state


def _callbacks(cfg: Config, run_dir: Path, data: DataSplit, prep: Preprocessing,
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
        model={}, config=cfg.to_saved(), classes=list(data.classes), input_size=prep.image_size,
        in_channels=cfg.model.in_channels,
        mean=prep.mean_std[0] if prep.mean_std else None,
        std=prep.mean_std[1] if prep.mean_std else None,
        native_size=data.native_size, monitor=cfg.train.monitor,
        provenance=provenance(device, info.world_size), model_code=code_record(cfg.model.name),
    )
    graph_input = None
    if cfg.log.graph and resumed is None:
        graph_input = torch.zeros(1, cfg.model.in_channels, prep.image_size, prep.image_size)
    out.append(Checkpointer(run_dir, template))
    out.append(MetricsLogger(
        # a new run truncates to nothing: a folder started over drops its old rows
        run_dir, cfg.log, resume_epoch=int(resumed.record.epoch or 0) if resumed else 0,
        mean_std=prep.mean_std, graph_input=graph_input, say=say,
        resume_row=resumed.record.metrics if resumed else None,
    ))
    out.append(RunFiles(run_dir, say))  # results.csv, curves.png: after metrics.jsonl's line
    return out


# --------------------------------------------------------------------------- evaluate


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "val",
    output: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    trust_pickle: bool = False,
    tta: str | None = None,
    code: CodeConsent | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes the confusion matrix (CSV, PNG) and metrics JSON.

    Returns ``{"top1", "top5", "loss", "n", "macro_f1", "balanced_acc", "per_class", ...}``
    with ``per_class`` holding each class's precision, recall, F1 and support.
    """
    if split not in ("val", "test"):
        raise ImgclsError(f"--split must be val or test, got {split!r}")
    path = Path(checkpoint)
    overrides = evaluation_overrides(data=data, batch_size=batch_size, tta=tta)
    loaded = load_model(path, device=device, trust_pickle=trust_pickle, overrides=overrides,
                        code=code)
    cfg = loaded.config
    run_dir = run_dir_of(path)
    split_record = None
    if (run_dir / "split.json").exists():
        record = load_split(run_dir / "split.json")
        if record.get("source") == cfg.data.source or data is None:
            split_record = record
    dataset, classes = create_eval_dataset(cfg.data, split, cfg.train.seed, split_record)
    if list(classes) != loaded.classes:
        raise ImgclsError(
            f"the classes of {cfg.data.source} ({split}) {list(classes)[:6]} differ from "
            f"checkpoint {path}'s {loaded.classes[:6]}"
        )
    prep = Preprocessing(loaded.input_size, loaded.mean_std)
    loader = build_eval_loader(cfg, dataset, prep, loaded.native_size, loaded.device)
    speed = components.create_speed(cfg, loaded.device)
    if speed.channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    # The training run's evaluation: the same speed switches and test-time augmentation.
    result = evaluate(
        loaded.model, loader, create_loss(cfg.optim).to(loaded.device), loaded.device,
        len(classes), progress=_progress_enabled(cfg), desc=f"evaluate {split}",
        speed=speed, tta=cfg.train.tta,
    )
    out_dir = Path(output) if output is not None else run_dir / "eval" / f"{path.stem}-{split}"
    scores = classification_metrics(result.confusion, list(classes))
    summary = {
        "checkpoint": str(path), "data": cfg.data.source, "split": split,
        "epoch": loaded.record.epoch,
        "top1": result.top1, "top5": result.top5, "loss": result.loss, "n": result.n,
        **{key: scores[key] for key in ("macro_f1", "balanced_acc", "macro_precision",
                                         "macro_recall", "weighted_f1")},
        "per_class": scores["per_class"],
        "output": str(out_dir),
    }
    try:
        write_eval_report(out_dir, summary, result.confusion, list(classes))
    except OSError as exc:
        raise ImgclsError(f"cannot write the evaluation report to {out_dir}: {exc}") from None
    return summary


# --------------------------------------------------------------------------- lr_find


@dataclass
class LrFindResult:
    suggestion: float | None  # None: the curve did not say (see ``how``)
    how: str  # how the suggestion was chosen, in one sentence
    csv: Path
    png: Path
    steps: int  # steps taken (fewer than asked when the loss diverged)
    stopped_early: bool


def lr_find(
    cfg: Config | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    output: str | Path = ".",
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
) -> LrFindResult:
    """An LR range test with the run's own data, model, optimiser, loss and speed switches:
    ``num_steps`` training steps while the lr grows exponentially from ``start_lr`` to
    ``end_lr``; writes ``lr_find.csv`` and ``lr_find.png`` to ``output`` and suggests an lr.

    Nothing else is written: no run folder, no checkpoint (``output`` may not be a run folder).
    Each step is one batch (``train.accumulate`` and the schedule's warmup do not apply).

    >>> lr_find(build_config(overrides={"data.source": "my_images"})).suggestion  # doctest: +SKIP
    """
    cfg = source_defaults(build_config(cfg, overrides))
    out = Path(output)
    if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
        raise ImgclsError(f"--output {out} is a run folder; lr-find never writes into a run, "
                          "choose another folder")
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ImgclsError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need "
                          "0 < start < end")
    if not 10 <= num_steps <= MAX_LR_FIND_STEPS:
        raise ImgclsError(f"--steps {num_steps}: choose 10 to {MAX_LR_FIND_STEPS}")
    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.train.seed)
    device = runtime.resolve_device(cfg.train.device)
    runtime.configure_speed(device, cudnn_benchmark=cfg.train.cudnn_benchmark,
                            deterministic=cfg.train.deterministic, tf32=cfg.train.tf32)
    data = load_data(cfg, None, UserData(), echo)
    prep = resolve_preprocessing(cfg, data)
    loaders = build_train_loaders(cfg, data, prep, runtime.DistInfo(), device)
    model = components.build_model(cfg, len(data.classes), device, train_loader=loaders.train)
    state = components.build_train_state(
        cfg, model, device, steps_per_epoch=components.steps_per_epoch(cfg, len(loaders.train)),
        class_counts=class_counts(dataset_labels(data.train), len(data.classes)), say=echo)
    sweep = lr_sweep(state.model, state.optimizer, state.loss_fn, _endless(loaders.train),
                     device=device, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                     speed=state.speed, scaler=state.scaler)
    try:
        csv_path, png_path = save_sweep(sweep, out)
    except OSError as exc:
        raise ImgclsError(f"cannot write the LR finder's files to {out}: "
                          f"{exc.strerror or exc}") from None
    return LrFindResult(sweep.suggestion, sweep.how, csv_path, png_path, len(sweep.lrs),
                        sweep.stopped_early)


def _endless(loader: Any) -> Iterator[Any]:
    """Batches of epoch after epoch, each epoch drawn as training would draw it."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=None)
