"""A run set up from its config, one way for all: the config a run (or a resumed one) uses
(:func:`train_config`), its data (:func:`load_data`), the metric that picks best.pt
(:func:`run_monitor`), and its preprocessing, loaders, model and training state
(:func:`prepare_run`). ``imgcls train``, its dry run and the LR finder all start here; a resumed
run's state is then put back by :meth:`imgcls.engine.trainer.Trainer.load_state_dict`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from imgcls import runtime
from imgcls.config import Config, build_config, from_saved, imbalance_handled, load_yaml
from imgcls.config.sizes import size_hw, size_text
from imgcls.data import DataSplit, create_datasets, from_dataset
from imgcls.data.label_csv import is_label_csv
from imgcls.data.pipeline import (
    Preprocessing,
    TrainLoaders,
    build_train_loaders,
    resolve_preprocessing,
    source_defaults,
)
from imgcls.data.sampling import class_counts
from imgcls.data.sources import dataset_labels
from imgcls.data.splits import load_split
from imgcls.engine import components
from imgcls.engine.loop import TrainState
from imgcls.engine.trainer import Callback
from imgcls.errors import ImgclsError
from imgcls.metric_table import METRICS, Monitor, get_monitor, monitor_names
from imgcls.models.user import CodeConsent, approve_code
from imgcls.runs.folder import Resume, resolve_resume, unsaved_run
from imgcls.tracking import echo

Say = Callable[[str], None]


def silent(_message: str) -> None:
    pass


def progress_enabled(cfg: Config) -> bool:
    """log.progress: the progress bars (``auto``: when stderr is a terminal)."""
    if cfg.log.progress == "auto":
        return sys.stderr.isatty()
    return cfg.log.progress == "on"


@dataclass
class UserData:
    """Datasets handed to :func:`imgcls.api.train` from Python instead of ``cfg.data``."""

    train: Dataset | None = None
    val: Dataset | None = None
    classes: list[str] | None = None
    callbacks: list[Callback] = field(default_factory=list)  # the caller's own


# --------------------------------------------------------------------------- the config


def train_config(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    code: CodeConsent | None = None,
) -> tuple[Config, Resume | None]:
    """The config :func:`imgcls.api.train` runs with, and the run it resumes (None for a new
    run).

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


def finished(resumed: Resume, cfg: Config) -> ImgclsError:
    """The error for resuming a run that already trained its ``train.epochs``."""
    done = resumed.record.epoch or 0
    return ImgclsError(f"{resumed.path} already finished epoch {done} of train.epochs="
                       f"{cfg.train.epochs}; pass train.epochs=N (N > {done}) to train longer")


def _approved(cfg: Config, recorded: dict[str, Any], code: CodeConsent | None,
              source: Path) -> Config:
    """A resumed run's config, its own model code allowed by ``code`` (or refused before
    anything is imported)."""
    name = approve_code(cfg.model.name, recorded, code, source)
    return replace(cfg, model=replace(cfg.model, name=name))


# --------------------------------------------------------------------------- the data


def load_data(cfg: Config, resumed: Resume | None, user: UserData,
              say: Say = silent) -> DataSplit:
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


def with_data_monitor(cfg: Config) -> Config:
    """``cfg`` with the ``train.monitor`` its runs resolve (:func:`run_monitor`): ``val_map``
    for a label CSV when unset. Experiments and studies compare runs on it, so they take it
    from here before their runs start."""
    if "train.monitor" in cfg.explicit or not is_label_csv(Path(cfg.data.source)):
        return cfg
    return build_config(cfg, {"train.monitor": "val_map"})


def run_monitor(cfg: Config, data: DataSplit, *, say: Say) -> Monitor | None:
    """train.monitor, or None without a validation set (then best.pt is the last epoch, and
    what needs a validation metric is refused before anything is written). Multi-label data
    watches ``val_map`` unless train.monitor is set: exact-match accuracy rewards no partial
    progress, and mAP needs no threshold."""
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        chosen = "train.monitor" in cfg.explicit
        name = cfg.train.monitor if chosen or not data.multilabel else "val_map"
        if not chosen and imbalance_handled(cfg.to_dict()) and not data.multilabel:
            say(f"train.monitor={cfg.train.monitor}: class weights/balanced sampling are on, and "
                "accuracy would favour the majority class; set train.monitor to choose")
        if METRICS[name].multilabel not in (None, data.multilabel):
            fits = [n for n in monitor_names() if METRICS[n].multilabel in (None, data.multilabel)]
            has = "several labels" if data.multilabel else "one label"
            raise ImgclsError(f"train.monitor={name} is not measured on data with {has} per "
                              f"image; choose one of {', '.join(fits)}")
        return get_monitor(name)
    if cfg.sched.name == "plateau":
        raise ImgclsError("sched.name=plateau needs a validation set to watch, and this run has "
                          "none (data.val_fraction=0 and no val/ folder)")
    if cfg.train.early_stop_patience > 0:
        raise ImgclsError("train.early_stop_patience needs a validation set to watch, and this "
                          "run has none (data.val_fraction=0 and no val/ folder)")
    say(f"no validation set: train.monitor={cfg.train.monitor} is not measured, and best.pt "
        "follows the last epoch")
    return None


# --------------------------------------------------------------------------- the parts


@dataclass
class PreparedRun:
    """What a run trains with: its preprocessing, loaders and :class:`TrainState`."""

    cfg: Config
    data: DataSplit
    prep: Preprocessing
    loaders: TrainLoaders
    state: TrainState
    device: torch.device
    info: runtime.DistInfo


def prepare_run(cfg: Config, data: DataSplit, *, device: torch.device,
                info: runtime.DistInfo | None = None, resuming: bool = False, say: Say = silent,
                prep: Preprocessing | None = None, wrap: bool = True) -> PreparedRun:
    """The preprocessing (unless given), the loaders (this rank's share), the model
    (``resuming``: built for a checkpoint's weights, nothing downloaded or initialised from
    data) and its training state (optimiser, schedule, loss, EMA, scaler; ``say`` reports the
    class weights), wrapped for DDP and ``torch.compile`` when ``wrap``."""
    info = info or runtime.DistInfo()
    prep = resolve_preprocessing(cfg, data) if prep is None else prep
    loaders = build_train_loaders(cfg, data, prep, info, device)
    model = components.build_model(cfg, len(data.classes), device, train_loader=loaders.train,
                                   resuming=resuming, dist=info)
    state = components.build_train_state(
        cfg, model, device, world_size=info.world_size,
        steps_per_epoch=components.steps_per_epoch(cfg, len(loaders.train)),
        class_counts=class_counts(dataset_labels(data.train), len(data.classes)),
        multilabel_images=len(data.train) if data.multilabel else None,  # type: ignore[arg-type]
        say=say,
    )
    if wrap:
        components.wrap_for_training(state, cfg, info, device)
    return PreparedRun(cfg, data, prep, loaders, state, device, info)


def describe_adaptation(data: DataSplit, prep: Preprocessing, cfg: Config) -> str:
    """How the images are adapted to the model, when they are (the digits' 8x8 greyscale)."""
    size = data.native_size
    resized = f", resized from {size}x{size} to {size_text(prep.image_size)}" if (
        size is not None and size_hw(size) != size_hw(prep.image_size)) else ""
    grey = ", greyscale repeated to 3 channels" if (
        cfg.data.source.strip().lower() == "digits" and cfg.model.in_channels == 3) else ""
    return resized + grey
