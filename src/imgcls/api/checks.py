"""``imgcls train --dry-run``: what a run would be, checked up to one forward pass, with
nothing written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from imgcls import runtime
from imgcls.config import Config
from imgcls.config.sizes import size_text
from imgcls.data.pipeline import PIPELINES, choose_loader, resolve_preprocessing
from imgcls.engine.setup import (
    PreparedRun,
    UserData,
    describe_adaptation,
    finished,
    load_data,
    prepare_run,
    run_monitor,
    train_config,
)
from imgcls.engine.trainer import Trainer
from imgcls.errors import ImgclsError
from imgcls.models.user import CodeConsent
from imgcls.runs.folder import Resume, holds_a_run, name_stem


def dry_run(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    code: CodeConsent | None = None,
) -> list[str]:
    """What :func:`imgcls.api.train` would run, checked up to one forward pass of one training
    batch: the config, the data (listed and split), the model, the loaders and, with
    ``resume``, the run's checkpoint. Writes nothing: no run folder, no decode cache, no
    download. Returns the lines ``imgcls train --dry-run`` prints.

    >>> print("\\n".join(dry_run(overrides={"data.source": "digits"})))  # doctest: +SKIP
    """
    cfg, resumed = train_config(cfg, resume=resume, overrides=overrides, code=code)
    if resumed is not None and (resumed.record.epoch or 0) >= cfg.train.epochs:
        raise finished(resumed, cfg)
    # CIFAR that is not there yet is an error here, not a download
    checked = replace(cfg, data=replace(cfg.data, download=False))
    device = runtime.resolve_device(cfg.train.device)
    data = load_data(checked, resumed, UserData())
    prep = resolve_preprocessing(checked, data, cache=False)
    kind = choose_loader(checked, data, prep)
    notes: list[str] = []
    monitor = run_monitor(checked, data, say=notes.append)
    # the batch comes from a DataLoader: the memory loader would write its decode cache
    as_files = replace(checked, data=replace(checked.data, loader="dataloader"))
    run = prepare_run(as_files, data, device=device, resuming=resumed is not None, prep=prep)
    if resumed is not None:  # the checkpoint's state, put back as a resumed run puts it back
        Trainer(run.state, run.loaders.train, run.loaders.val, epochs=cfg.train.epochs,
                classes=data.classes, monitor=monitor).load_state_dict(
            resumed.record, resumed.path, monitor=cfg.train.monitor)
    images, logits = _one_batch(run, cfg)
    run_dir, what = _destination(cfg, resumed)
    n_val = len(data.val) if data.val is not None else 0  # type: ignore[arg-type]
    classes = ", ".join(data.classes[:10]) + (", ..." if len(data.classes) > 10 else "")
    parameters = sum(p.numel() for p in run.state.model.parameters())
    return [
        f"dry run: would {what}",
        f"  model:     {cfg.model.name} ({parameters:,} parameters)",
        f"  data:      {cfg.data.source}: {len(data.train)} train / {n_val} val images",  # type: ignore[arg-type]
        f"  classes:   {len(data.classes)} ({classes})",
        f"  input:     {size_text(prep.image_size)}, {cfg.model.in_channels} channel(s)"
        f"{describe_adaptation(data, prep, cfg)}",
        f"  loader:    {'dataloader' if kind == 'dataloader' else 'memory'} ({PIPELINES[kind]})"
        f", batch {cfg.loader.batch_size}, {len(run.loaders.train)} batches per epoch",
        f"  device:    {device}{runtime.describe_amp(cfg.train.amp, device)}",
        f"  epochs:    {cfg.train.epochs}, monitor {cfg.train.monitor}",
        f"  run folder: {run_dir}",
        f"  checked:   one batch {tuple(images.shape)} -> logits {tuple(logits.shape)}; "
        "nothing written",
        *notes,
    ]


def _one_batch(run: PreparedRun, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch and the model's logits for it, checked to be one score per class."""
    images, _ = next(iter(run.loaders.train))
    model, classes = run.state.model, run.data.classes
    model.eval()
    with torch.no_grad():
        logits = model(images.to(run.device))
    if tuple(logits.shape) != (len(images), len(classes)):
        raise ImgclsError(f"{cfg.model.name} gave logits of shape {tuple(logits.shape)} for a "
                          f"batch of {len(images)}; expected ({len(images)}, {len(classes)})")
    return images, logits


def _destination(cfg: Config, resumed: Resume | None) -> tuple[Path, str]:
    """The run folder the run would write, and what it would do there."""
    if resumed is not None:
        return resumed.run_dir, (f"resume {resumed.run_dir} at epoch "
                                 f"{(resumed.record.epoch or 0) + 1}")
    run_dir = Path(cfg.log.output) / (cfg.log.name or f"{name_stem(cfg.model.name)}-<timestamp>")
    if cfg.log.name and (run_dir / "checkpoints" / "last.pt").exists():
        raise holds_a_run(run_dir)
    return run_dir, "train"
