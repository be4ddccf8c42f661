"""train / evaluate: the one place where config, data, model, optimiser, loop and logging meet.

Data flows one way: config -> runtime -> datasets -> transforms -> loaders -> model -> optim ->
loop <-> logging / checkpoints.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import imgcls
from imgcls import runtime
from imgcls.config import Config, build_config, save_yaml
from imgcls.data import DataSplit, create_datasets, create_eval_dataset, from_dataset
from imgcls.data.loaders import BatchLoader, EpochLoader, TransformedDataset, shard
from imgcls.data.memory import MemoryLoader, decode_to_tensor, unsupported_transforms
from imgcls.data.splits import load_split, save_split
from imgcls.data.transforms import (
    apply_preset,
    build_transform,
    denormalize,
    resolve_normalization,
)
from imgcls.engine.checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from imgcls.engine.loop import EvalResult, Speed, TrainState, evaluate, train_one_epoch
from imgcls.engine.report import write_eval_report
from imgcls.errors import ImgclsError
from imgcls.inference import load_model
from imgcls.models import create_model, get_model_info
from imgcls.optim import create_loss, create_optimizer, create_scheduler
from imgcls.tracking import RunLogger, echo


@dataclass
class RunResult:
    run_dir: Path
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    seconds: float
    last_metrics: dict[str, Any]


# --------------------------------------------------------------------------- shared helpers


def _progress_enabled(cfg: Config) -> bool:
    if cfg.log.progress == "auto":
        return sys.stderr.isatty()
    return cfg.log.progress == "on"


@dataclass
class _Preprocessing:
    image_size: int
    mean_std: tuple[list[float], list[float]] | None


def _preprocessing(cfg: Config, data: DataSplit) -> _Preprocessing:
    info = get_model_info(cfg.model.name, cfg.model.pretrained)
    size = cfg.transforms.image_size or info.input_size
    if info.fixed_size and size != info.input_size:
        raise ImgclsError(
            f"transforms.image_size={size} does not suit {cfg.model.name}, which takes "
            f"{info.input_size}x{info.input_size} images only"
        )
    mean_std = resolve_normalization(
        cfg.transforms,
        model_default=info.default_normalize,
        pretrained=bool(cfg.model.pretrained),
        dataset_mean_std=data.mean_std,
    )
    return _Preprocessing(size, mean_std)


def _eval_loader(cfg: Config, dataset: Dataset, prep: _Preprocessing, native: int | None,
                 device: torch.device) -> EpochLoader:
    transform = build_transform(
        cfg.transforms, train=False, image_size=prep.image_size, native_size=native,
        mean_std=prep.mean_std, in_channels=cfg.model.in_channels,
    )
    return EpochLoader(
        TransformedDataset(dataset, transform), cfg.loader, train=False, seed=cfg.train.seed,
        pin_memory=_pin_memory(cfg, device),
    )


def _pin_memory(cfg: Config, device: torch.device) -> bool:
    if cfg.loader.pin_memory is None:
        return device.type == "cuda"
    return cfg.loader.pin_memory


def _prepare_run_dir(cfg: Config, resume_dir: Path | None) -> Path:
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = cfg.log.name or f"{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(cfg.log.output) / name
        if (run_dir / "checkpoints").exists():
            if cfg.log.name:
                raise ImgclsError(
                    f"run folder {run_dir} already holds a run; continue it with "
                    f"`imgcls train --resume {run_dir}` or choose another --name"
                )
            run_dir = Path(f"{run_dir}-{datetime.now():%f}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ImgclsError(
            f"cannot write to output folder {run_dir}: {exc.strerror or exc}"
        ) from None
    return run_dir


def _resolve_resume(path: str | Path) -> tuple[Path, Path]:
    """``runs/NAME`` or ``runs/NAME/checkpoints/last.pt`` -> (run folder, checkpoint file)."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.exists():
            raise ImgclsError(f"nothing to resume in {path}: {ckpt} does not exist")
        return path, ckpt
    if not path.exists():
        raise ImgclsError(f"nothing to resume: {path} does not exist")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run_dir, path


def _provenance(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    return {
        "imgcls": imgcls.__version__,
        "torch": str(torch.__version__),  # a TorchVersion object would not load weights_only
        "python": platform.python_version(),
        "device": str(device),
        "world_size": world_size,
    }


def _shared_run_dir(cfg: Config, resume_dir: Path | None, info: runtime.DistInfo) -> Path:
    """Rank 0 makes the run folder; every rank gets its path (one timestamp for all), or rank
    0's error, so that no rank waits for a folder that will never come."""
    run_dir: Path | None = None
    error: str | None = None
    if info.is_main:
        try:
            run_dir = _prepare_run_dir(cfg, resume_dir)
        except ImgclsError as exc:
            if not info.distributed:
                raise
            error = str(exc)
    run_dir, error = runtime.broadcast_object((run_dir, error))
    if error is not None:
        raise ImgclsError(error)
    assert run_dir is not None
    return run_dir


# --------------------------------------------------------------------------- train


def train(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    classes: list[str] | None = None,
) -> RunResult:
    """Train a classifier; returns where the run went and its best validation accuracy.

    ``resume`` continues a run folder at its next epoch (its saved config, with ``overrides``
    layered on top, e.g. more epochs). ``train_dataset`` (any map-style dataset yielding
    ``(image, label)``) replaces ``cfg.data``.

    >>> train(build_config(overrides={"data.source": "my_images", "train.epochs": 3}))
    ... # doctest: +SKIP
    """
    start_time = time.perf_counter()
    ckpt: dict[str, Any] | None = None
    ckpt_path: Path | None = None
    resume_dir: Path | None = None
    if resume is not None:
        resume_dir, ckpt_path = _resolve_resume(resume)
        ckpt = load_checkpoint(ckpt_path)
        if "optimizer" not in ckpt:
            source = ckpt.get("provenance", {}).get("converted_from")
            origin = f" (converted from {source})" if source else ""
            raise ImgclsError(
                f"{ckpt_path} holds weights only{origin} and cannot be resumed; start a new run "
                f"from it with model.pretrained={ckpt_path}"
            )
        cfg = build_config(ckpt["config"], overrides)
        if ckpt["epoch"] >= cfg.train.epochs:
            raise ImgclsError(
                f"{ckpt_path} already finished epoch {ckpt['epoch']} of train.epochs="
                f"{cfg.train.epochs}; pass train.epochs=N (N > {ckpt['epoch']}) to train longer"
            )
    else:
        cfg = build_config(cfg, overrides)

    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.train.seed)
    # Under torchrun: join the process group for the whole run and leave it on any exit.
    with runtime.distributed(cfg.train.device, cfg.train.dist_timeout_min) as (info, device):
        return _train(cfg, ckpt, ckpt_path, resume_dir, info, device, train_dataset, val_dataset,
                      classes, start_time)


def _train(
    cfg: Config,
    ckpt: dict[str, Any] | None,
    ckpt_path: Path | None,
    resume_dir: Path | None,
    info: runtime.DistInfo,
    device: torch.device,
    train_dataset: Dataset | None,
    val_dataset: Dataset | None,
    classes: list[str] | None,
    start_time: float,
) -> RunResult:
    # Only rank 0 prints, shows progress bars and writes the run folder.
    say = echo if info.is_main else (lambda _message: None)
    runtime.configure_speed(device, cudnn_benchmark=cfg.train.cudnn_benchmark,
                            deterministic=cfg.train.deterministic)
    speed = _speed(cfg, device)
    # ---- data: the split is fixed once and reused on resume
    split_record = None
    if resume_dir is not None and (resume_dir / "split.json").exists():
        split_record = load_split(resume_dir / "split.json")
    if train_dataset is not None:
        data = from_dataset(
            train_dataset, val_dataset, classes, cfg.data.val_fraction, cfg.train.seed
        )
    else:
        data = create_datasets(cfg.data, cfg.train.seed, split_record=split_record)
    if data.skipped:
        say(f"skipped {len(data.skipped)} unreadable image(s) (data.skip_bad_images=true), "
             f"first: {data.skipped[0]}")
    if ckpt is not None and list(ckpt["classes"]) != list(data.classes):
        raise ImgclsError(
            f"the data's classes {data.classes[:5]}... differ from the checkpoint's "
            f"{list(ckpt['classes'])[:5]}..."
        )
    prep = _preprocessing(cfg, data)
    train_loader: BatchLoader
    val_loader: BatchLoader | None
    in_memory = _use_memory_loader(cfg, data, prep)
    if in_memory:
        train_loader, val_loader = _memory_loaders(cfg, data, prep, info, device)
    else:
        train_loader, val_loader = _dataloaders(cfg, data, prep, info, device)
    if len(train_loader) == 0:
        raise ImgclsError(
            f"no training batches: {len(data.train)} image(s) with loader.batch_size="
            f"{cfg.loader.batch_size} and loader.drop_last={cfg.loader.drop_last}"
        )
    reduce = runtime.all_reduce_sum if info.distributed else None

    # ---- model and optimisation
    num_classes = len(data.classes)
    # On resume the weights come from the checkpoint: no pretrained download.
    model_cfg = replace(cfg.model, pretrained="") if ckpt is not None else cfg.model
    # Every rank builds the same initial weights (same seed); DDP also broadcasts rank 0's.
    model = create_model(model_cfg, num_classes, from_checkpoint=ckpt is not None).to(device)
    if ckpt is None and hasattr(model, "init_from_data") and not cfg.model.pretrained:
        _init_from_data(model, train_loader, device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.distributed and cfg.model.sync_bn:
        if device.type != "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
            raise ImgclsError(f"model.sync_bn=true needs CUDA devices; this run is on {device}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optim_cfg = cfg.optim
    if cfg.optim.scale_lr == "linear":  # lr x (global batch / loader.batch_size)
        optim_cfg = replace(cfg.optim, lr=cfg.optim.lr * info.world_size * cfg.train.accumulate)
    optimizer = create_optimizer(model, optim_cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.accumulate)
    scheduler = create_scheduler(optimizer, cfg.sched, cfg.train.epochs, steps_per_epoch)
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema),
            use_buffers=True,
        ) if cfg.train.ema > 0 else None
    )
    state = TrainState(
        model=model, optimizer=optimizer, scheduler=scheduler,
        loss_fn=create_loss(cfg.optim).to(device), device=device, grad_clip=cfg.train.grad_clip,
        accumulate=cfg.train.accumulate, speed=speed,
        scaler=torch.amp.GradScaler(device.type) if speed.amp_dtype == torch.float16 else None,
        ema=ema, ema_every=cfg.train.ema_every,
    )
    if ckpt is not None:
        assert ckpt_path is not None
        load_model_state(model, ckpt["model"], ckpt_path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:  # parameter groups differ: head_lr_mult or freeze changed
            raise ImgclsError(
                f"cannot resume {ckpt_path} with a different optim.head_lr_mult or model.freeze "
                f"than it was trained with ({exc})"
            ) from None
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        if state.scaler is not None and ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        state.epoch, state.step = ckpt["epoch"], ckpt["step"]
        state.best_metric, state.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        runtime.set_rng_state(ckpt["rng"])
    if info.distributed:
        train_model: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        state.model = train_model
    if cfg.train.compile:
        # Training steps run compiled; evaluation stays eager (one graph, no eval-mode recompile).
        state.model = torch.compile(state.model)

    # ---- run folder: written (by rank 0) only once everything above has been checked
    run_dir = _shared_run_dir(cfg, resume_dir, info)
    logger: RunLogger | None = None
    if info.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
        if split_record is None:
            save_split(data.split_record, run_dir / "split.json")
        logger = RunLogger(
            run_dir, tensorboard=cfg.log.tensorboard,
            resume_epoch=state.epoch if ckpt is not None else None,
        )
        if cfg.log.graph and ckpt is None:
            example = torch.zeros(1, cfg.model.in_channels, prep.image_size, prep.image_size)
            logger.log_graph(model, example.to(device))
    processes = f" x {info.world_size} processes" if info.distributed else ""
    say(
        f"{'resuming' if ckpt else 'training'} {cfg.model.name} on {cfg.data.source} "
        f"({len(data.train)} train / {len(data.val) if data.val is not None else 0} val images, "
        f"{num_classes} classes) on {device}{processes}, images "
        f"{'decoded into device memory' if in_memory else 'read by a DataLoader'}; "
        f"run folder {run_dir}"
    )

    def grid(images: torch.Tensor, _labels: torch.Tensor) -> None:
        if logger is not None:
            logger.log_images("train/batch", denormalize(images.float(), prep.mean_std))

    progress = _progress_enabled(cfg) and info.is_main
    last: dict[str, Any] = {}
    try:
        while state.epoch < cfg.train.epochs:
            epoch_start = time.perf_counter()
            train_loader.set_epoch(state.epoch)
            if info.distributed:
                # Ranks must augment differently, and the checkpoint holds only rank 0's RNG
                # state: each rank re-seeds per epoch, so a resume at the same world size is exact.
                runtime.seed_everything(
                    runtime.rank_epoch_seed(cfg.train.seed, info.rank, info.world_size, state.epoch)
                )
            lr = optimizer.param_groups[0]["lr"]
            hook = grid if (state.epoch == 0 and cfg.log.image_grid and info.is_main) else None
            metrics: dict[str, Any] = train_one_epoch(
                state, train_loader, progress=progress, on_first_batch=hook, reduce=reduce
            )
            result: EvalResult | None = None
            if val_loader is not None:
                # the plain model: ranks' shards differ in size, and DDP's forward would sync
                result = evaluate(
                    ema.module if ema is not None else model, val_loader, state.loss_fn, device,
                    num_classes, progress=progress, desc=f"epoch {state.epoch + 1} val",
                    reduce=reduce, speed=speed, tta=cfg.train.tta,
                )
            state.epoch += 1
            scheduler.step_epoch(
                {"val_loss": result.loss, "val_acc": result.top1} if result else
                {"val_loss": metrics["train_loss"], "val_acc": metrics["train_acc"]}
            )
            metrics = {
                "epoch": state.epoch,
                "step": state.step,
                "train_loss": metrics["train_loss"],
                "train_acc": metrics["train_acc"],
                "val_loss": result.loss if result else None,
                "val_acc": result.top1 if result else None,
                "val_top5": result.top5 if result else None,
                "lr": lr,
                "epoch_time_s": time.perf_counter() - epoch_start,
                "train_time_s": metrics["train_time_s"],
                "train_images_per_s": metrics["train_samples"] / metrics["train_time_s"],
                # wall time since train() was called: setup, decoding and validation included
                "elapsed_s": time.perf_counter() - start_time,
            }
            score = result.top1 if result else -metrics["train_loss"]
            improved = state.best_metric is None or score > state.best_metric
            if improved:
                state.best_metric, state.best_epoch = score, state.epoch
            if logger is not None:
                _save(run_dir, state, cfg, data, prep, metrics, device, improved, info.world_size)
                logger.log_epoch(metrics)
            last = metrics
            say(_epoch_line(metrics, cfg.train.epochs))
            if _out_of_time(cfg, metrics["elapsed_s"]) and state.epoch < cfg.train.epochs:
                say(f"stopping after epoch {state.epoch}: train.max_minutes="
                    f"{cfg.train.max_minutes:g} reached; `imgcls train --resume {run_dir}` "
                    "continues the run")
                break
        # every rank returns only once rank 0's last checkpoint is on disk
        runtime.barrier()
    finally:
        if logger is not None:
            logger.close()
    seconds = time.perf_counter() - start_time
    best = (
        f"best val_acc {state.best_metric:.4f} at epoch {state.best_epoch}"
        if val_loader is not None and state.best_metric is not None
        else "no validation set"
    )
    say(f"done: {best} | {state.epoch} epochs in {seconds:.1f}s | run folder {run_dir}")
    return RunResult(run_dir, state.best_metric if val_loader else None, state.best_epoch,
                     state.epoch, seconds, last)


def _out_of_time(cfg: Config, elapsed_s: float) -> bool:
    """train.max_minutes, decided by rank 0 for every rank (their clocks differ a little)."""
    out = cfg.train.max_minutes > 0 and elapsed_s >= cfg.train.max_minutes * 60
    return bool(runtime.broadcast_object(out))


def _speed(cfg: Config, device: torch.device) -> Speed:
    return Speed(channels_last=cfg.train.channels_last,
                 amp_dtype=runtime.autocast_dtype(cfg.train.amp, device))


@torch.no_grad()
def _init_from_data(model: nn.Module, loader: BatchLoader, device: torch.device,
                    images: int = 5000) -> None:
    """Data-dependent initialisation (fastnet's whitening stem) from the first training images:
    un-augmented from the device-resident loader, else the first batches of the DataLoader (the
    random state is put back, so the run's batches are those it would have had anyway)."""
    if isinstance(loader, MemoryLoader):
        model.init_from_data(loader.normalize(loader.images[:images]))  # type: ignore[operator]
        return
    rng = runtime.get_rng_state()
    loader.set_epoch(0)
    batches, seen = [], 0
    for batch, _labels in loader:
        batches.append(batch.to(device).float())
        seen += len(batch)
        if seen >= images:
            break
    runtime.set_rng_state(rng)
    model.init_from_data(torch.cat(batches)[:images])  # type: ignore[operator]


def _dataloaders(cfg: Config, data: DataSplit, prep: _Preprocessing, info: runtime.DistInfo,
                 device: torch.device) -> tuple[EpochLoader, EpochLoader | None]:
    train_transform = build_transform(
        cfg.transforms, train=True, image_size=prep.image_size, native_size=data.native_size,
        mean_std=prep.mean_std, in_channels=cfg.model.in_channels,
    )
    train_loader = EpochLoader(
        TransformedDataset(data.train, train_transform), cfg.loader, train=True,
        seed=cfg.train.seed, pin_memory=_pin_memory(cfg, device),
        num_replicas=info.world_size, rank=info.rank, deterministic=cfg.train.deterministic,
    )
    # Each rank evaluates a disjoint shard (no padding repeats); the sums are all-reduced.
    val_loader = (
        _eval_loader(cfg, shard(data.val, info.world_size, info.rank), prep, data.native_size,
                     device)
        if data.val is not None and len(data.val) > 0 else None
    )
    return train_loader, val_loader


def _use_memory_loader(cfg: Config, data: DataSplit, prep: _Preprocessing) -> bool:
    """``data.loader``: memory, dataloader, or auto (memory when it fits and can do the
    transforms)."""
    mode = cfg.data.loader
    unsupported = unsupported_transforms(cfg.transforms, prep.image_size, cfg.model.in_channels)
    if mode == "memory" and unsupported:
        raise ImgclsError(
            f"data.loader=memory cannot apply {', '.join(unsupported)} (it does random "
            "crop, horizontal flip, cutout and normalisation only); use data.loader=dataloader "
            "or auto"
        )
    images = len(data.train) + (len(data.val) if data.val is not None else 0)  # type: ignore[arg-type]
    nbytes = _decoded_bytes(cfg, images, prep)
    fits = nbytes <= cfg.data.memory_budget_mb * 2**20
    use = mode == "memory" or (mode == "auto" and not unsupported and fits)
    if cfg.transforms.flip_mode == "alternate" and not use:
        why = ("data.loader=dataloader" if mode == "dataloader" else
               f"it cannot apply {', '.join(unsupported)}" if unsupported else
               f"{nbytes / 2**20:.0f} MB of images exceed data.memory_budget_mb="
               f"{cfg.data.memory_budget_mb}")
        raise ImgclsError(
            "transforms.flip_mode=alternate needs the device-resident loader, which this run "
            f"cannot use ({why}); use transforms.flip_mode=random"
        )
    return use


def _memory_fits(cfg: Config, images: int, prep: _Preprocessing) -> bool:
    """Evaluation: the device-resident path when data.loader allows it, the evaluation
    transforms need no resizing or cropping, and the images fit the budget."""
    if cfg.data.loader == "dataloader":
        return False
    if unsupported_transforms(cfg.transforms, prep.image_size, cfg.model.in_channels):
        return False
    return (cfg.data.loader == "memory"
            or _decoded_bytes(cfg, images, prep) <= cfg.data.memory_budget_mb * 2**20)


def _decoded_bytes(cfg: Config, images: int, prep: _Preprocessing) -> int:
    """Device memory the decoded uint8 images take."""
    return images * cfg.model.in_channels * prep.image_size**2


def _cache_dir(cfg: Config) -> Path:
    return Path(cfg.data.root).expanduser() / ".imgcls-cache"


def _memory_loaders(cfg: Config, data: DataSplit, prep: _Preprocessing, info: runtime.DistInfo,
                    device: torch.device) -> tuple[MemoryLoader, MemoryLoader | None]:
    """Decode the train and val sets once (cached under ``<data.root>/.imgcls-cache``) and keep
    them on ``device``; the same augmentations as :func:`build_transform`, made per batch."""
    cache = _cache_dir(cfg)
    tf = apply_preset(cfg.transforms, prep.image_size)
    ld = cfg.loader
    images, labels = decode_to_tensor(data.train, prep.image_size, cache_dir=cache)
    train_loader = MemoryLoader(
        images, labels, batch_size=ld.batch_size, train=True, shuffle=ld.shuffle,
        drop_last=ld.drop_last, seed=cfg.train.seed, device=device, mean_std=prep.mean_std,
        crop_padding=list(tf.crop_padding) if tf.random_crop else None, hflip=tf.hflip,
        flip_mode=tf.flip_mode, cutout=tf.cutout, num_replicas=info.world_size, rank=info.rank,
    )
    val_loader = None
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        images, labels = decode_to_tensor(data.val, prep.image_size, cache_dir=cache)
        # A disjoint strided share per rank, as shard() gives the DataLoader path.
        val_loader = MemoryLoader(
            images, labels, batch_size=ld.eval_batch_size or 2 * ld.batch_size, train=False,
            seed=cfg.train.seed, device=device, mean_std=prep.mean_std,
            num_replicas=info.world_size, rank=info.rank,
        )
    return train_loader, val_loader


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {m['epoch']}/{epochs}",
             f"train_loss {m['train_loss']:.4f}", f"train_acc {m['train_acc']:.4f}"]
    if m["val_acc"] is not None:
        parts += [f"val_loss {m['val_loss']:.4f}", f"val_acc {m['val_acc']:.4f}",
                  f"val_top5 {m['val_top5']:.4f}"]
    parts += [f"lr {m['lr']:.3g}", f"{m['epoch_time_s']:.1f}s"]
    return "  ".join(parts)


def _save(run_dir: Path, state: TrainState, cfg: Config, data: DataSplit, prep: _Preprocessing,
          metrics: dict[str, Any], device: torch.device, improved: bool,
          world_size: int = 1) -> None:
    payload = {
        # the unwrapped model: a checkpoint of a DDP run loads in one process and vice versa
        "model": runtime.unwrap_model(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "config": cfg.to_dict(),
        "classes": list(data.classes),
        "input_size": prep.image_size,
        "in_channels": cfg.model.in_channels,
        "mean": prep.mean_std[0] if prep.mean_std else None,
        "std": prep.mean_std[1] if prep.mean_std else None,
        "native_size": data.native_size,
        "metrics": metrics,
        "rng": runtime.get_rng_state(),
        "provenance": _provenance(device, world_size),
    }
    if state.ema is not None:  # the averaged weights are the ones validated (and predicted with)
        payload["ema"] = state.ema.state_dict()
    if state.scaler is not None:
        payload["scaler"] = state.scaler.state_dict()
    last = run_dir / "checkpoints" / "last.pt"
    save_checkpoint(payload, last)
    if improved:
        copy_checkpoint(last, run_dir / "checkpoints" / "best.pt")


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
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes the confusion matrix (CSV, PNG) and metrics JSON.

    Returns ``{"top1", "top5", "loss", "n", "per_class", ...}``.
    """
    if split not in ("val", "test"):
        raise ImgclsError(f"--split must be val or test, got {split!r}")
    path = Path(checkpoint)
    overrides: dict[str, Any] = {}
    if data is not None:
        overrides["data.source"] = data
    if batch_size is not None:
        overrides["loader.eval_batch_size"] = batch_size
    loaded = load_model(path, device=device, trust_pickle=trust_pickle, overrides=overrides)
    cfg, ckpt = loaded.config, loaded.record
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
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
    prep = _Preprocessing(loaded.input_size, loaded.mean_std)
    loader: BatchLoader
    if _memory_fits(cfg, len(dataset), prep):  # type: ignore[arg-type]
        images, labels = decode_to_tensor(dataset, prep.image_size, cache_dir=_cache_dir(cfg))
        loader = MemoryLoader(
            images, labels, batch_size=cfg.loader.eval_batch_size or 2 * cfg.loader.batch_size,
            train=False, device=loaded.device, mean_std=prep.mean_std,
        )
    else:
        loader = _eval_loader(cfg, dataset, prep, loaded.native_size, loaded.device)
    speed = _speed(cfg, loaded.device)
    if speed.channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    # The training run's evaluation: the same speed switches and test-time augmentation.
    result = evaluate(
        loaded.model, loader, create_loss(cfg.optim).to(loaded.device), loaded.device,
        len(classes), progress=_progress_enabled(cfg), desc=f"evaluate {split}",
        speed=speed, tta=cfg.train.tta,
    )
    out_dir = Path(output) if output is not None else run_dir / "eval" / f"{path.stem}-{split}"
    summary = {
        "checkpoint": str(path),
        "data": cfg.data.source,
        "split": split,
        "epoch": ckpt.get("epoch"),
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "n": result.n,
        "per_class": dict(zip(classes, result.per_class_accuracy(), strict=True)),
        "output": str(out_dir),
    }
    try:
        write_eval_report(out_dir, summary, result.confusion, list(classes))
    except OSError as exc:
        raise ImgclsError(f"cannot write the evaluation report to {out_dir}: {exc}") from None
    return summary


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=None)
