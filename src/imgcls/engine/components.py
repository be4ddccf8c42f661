"""The parts a training run is made of, built from the config in one place: the model (with
its data-dependent initialisation, memory format and SyncBatchNorm), the optimiser, schedule,
loss, EMA and grad scaler (a :class:`TrainState`), and the DDP and ``torch.compile`` wrappers.
``imgcls.engine.setup.prepare_run`` (train, dry runs, the LR finder) and the benchmarks use
these, so none of them assembles a run by hand; a resumed run's state is put back by
``Trainer.load_state_dict``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from imgcls import runtime
from imgcls.config import Config
from imgcls.data.label_mixing import LabelMixing, label_mixing
from imgcls.data.memory import MemoryLoader
from imgcls.engine.batches import Speed
from imgcls.engine.loop import TrainState
from imgcls.engine.weight_hooks import FreezeAfter, Lookahead, WeightHook
from imgcls.errors import ImgclsError
from imgcls.losses import create_loss, resolve_class_weights
from imgcls.models import create_model
from imgcls.optim import create_optimizer, create_scheduler


def create_speed(cfg: Config, device: torch.device) -> Speed:
    """``train.channels_last`` and ``train.amp`` on ``device``."""
    return Speed(channels_last=cfg.train.channels_last,
                 amp_dtype=runtime.autocast_dtype(cfg.train.amp, device))


def build_model(cfg: Config, num_classes: int, device: torch.device, *, train_loader: object,
                resuming: bool = False, dist: runtime.DistInfo | None = None) -> nn.Module:
    """The model on ``device``, in the memory format training uses. A new run's data-dependent
    layers (fastnet's whitening stem) are set from ``train_loader``'s first images; a resumed
    run's weights come from the checkpoint, so nothing is downloaded or initialised."""
    dist = dist or runtime.DistInfo()
    model_cfg = replace(cfg.model, pretrained="") if resuming else cfg.model
    # Every rank builds the same initial weights (same seed); DDP also broadcasts rank 0's.
    model = create_model(model_cfg, num_classes, from_checkpoint=resuming).to(device)
    if not resuming and hasattr(model, "init_from_data") and not cfg.model.pretrained:
        init_from_data(model, train_loader, device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.distributed and cfg.model.sync_bn:
        if device.type != "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
            raise ImgclsError(f"model.sync_bn=true needs CUDA devices; this run is on {device}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@torch.no_grad()
def init_from_data(model: nn.Module, loader: object, device: torch.device,
                   images: int = 5000) -> None:
    """Data-dependent initialisation from the first training images: un-augmented from the
    device-resident loader, else the first batches of the DataLoader (the random state is put
    back, so the run's batches are those it would have had anyway)."""
    if isinstance(loader, MemoryLoader):
        model.init_from_data(loader.normalize(loader.images[:images]))  # type: ignore[operator]
        return
    rng = runtime.get_rng_state()
    loader.set_epoch(0)  # type: ignore[attr-defined]
    batches, seen = [], 0
    for batch, _labels in loader:  # type: ignore[attr-defined]
        batches.append(batch.to(device).float())
        seen += len(batch)
        if seen >= images:
            break
    runtime.set_rng_state(rng)
    model.init_from_data(torch.cat(batches)[:images])  # type: ignore[operator]


def build_train_state(cfg: Config, model: nn.Module, device: torch.device, *,
                      steps_per_epoch: int, world_size: int = 1,
                      class_counts: Sequence[int] | None = None,
                      multilabel_images: int | None = None,
                      say: Callable[[str], None] | None = None) -> TrainState:
    """Optimiser (lr scaled by ``optim.scale_lr``), schedule, loss, EMA and grad scaler.

    ``class_counts`` (training images per class) is what ``optim.class_weights`` needs; the
    weights it gives are reported through ``say`` (rank 0's printer) in one line. Multi-label
    data gives ``multilabel_images``, its training images (then ``class_counts`` counts each
    class's positives)."""
    multilabel = multilabel_images is not None
    optim_cfg = cfg.optim
    if cfg.optim.scale_lr == "linear":  # lr x (global batch / loader.batch_size)
        optim_cfg = replace(cfg.optim, lr=cfg.optim.lr * world_size * cfg.train.accumulate)
    optimizer = create_optimizer(model, optim_cfg)
    scheduler = create_scheduler(optimizer, cfg.sched, cfg.train.epochs, steps_per_epoch,
                                 monitor=cfg.train.monitor)
    ema = None
    if cfg.train.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema),
            use_buffers=True,
        )
    speed = create_speed(cfg, device)
    weights = None
    if cfg.optim.class_weights != "none":
        if class_counts is None:
            raise ImgclsError(f"optim.class_weights={cfg.optim.class_weights} needs the "
                              "training data's class counts, and none were given")
        weights = resolve_class_weights(cfg.optim, class_counts, multilabel_images)
        if say is not None:
            say(describe_class_weights(cfg.optim.class_weights, weights, multilabel=multilabel))
    return TrainState(
        model=model, optimizer=optimizer, scheduler=scheduler,
        loss_fn=create_loss(cfg.optim, weights, multilabel=multilabel).to(device), device=device,
        grad_clip=cfg.train.grad_clip, accumulate=cfg.train.accumulate, speed=speed,
        scaler=torch.amp.GradScaler(device.type) if speed.amp_dtype == torch.float16 else None,
        ema=ema, ema_every=cfg.train.ema_every, skip_nonfinite=cfg.train.skip_nonfinite,
        # The validation loss stays the unweighted cross-entropy: weighting it would change
        # what val_loss means whenever optim.class_weights (or the class counts) change, and
        # train.monitor=val_loss must compare across runs; evaluate_checkpoint's loss is
        # unweighted too.
        eval_loss_fn=(create_loss(cfg.optim, multilabel=multilabel).to(device)
                      if weights is not None else None),
        weight_hooks=create_weight_hooks(cfg, model, steps_per_epoch),
        label_mixing=_label_mixing(cfg, class_counts),
    )


def _label_mixing(cfg: Config, class_counts: Sequence[int] | None) -> LabelMixing | None:
    """``transforms.mixup`` / ``cutmix``; they one-hot the labels, so they need the classes."""
    if cfg.transforms.mixup == 0 and cfg.transforms.cutmix == 0:
        return None
    if class_counts is None:
        raise ImgclsError("transforms.mixup and transforms.cutmix need the training data's "
                          "class counts, and none were given")
    return label_mixing(cfg.transforms, len(class_counts))


def create_weight_hooks(cfg: Config, model: nn.Module, steps_per_epoch: int) -> list[WeightHook]:
    """train.lookahead_every and train.whiten_bias_epochs, as hooks after each step."""
    hooks: list[WeightHook] = []
    if cfg.train.lookahead_every > 0:
        hooks.append(Lookahead(runtime.unwrap_model(model), every=cfg.train.lookahead_every,
                               decay=cfg.train.lookahead_decay,
                               total_steps=cfg.train.epochs * steps_per_epoch))
    # last: a frozen value stays frozen, whatever the hooks before it did
    if cfg.train.whiten_bias_epochs > 0:
        whiten = getattr(runtime.unwrap_model(model), "whiten", None)
        if not isinstance(getattr(whiten, "bias", None), nn.Parameter):
            raise ImgclsError(f"train.whiten_bias_epochs={cfg.train.whiten_bias_epochs}: "
                              f"{cfg.model.name} has no whitening layer with a bias (fastnet and "
                              "fastnet_s have one)")
        hooks.append(FreezeAfter({"whiten.bias": whiten.bias},
                                 steps=cfg.train.whiten_bias_epochs * steps_per_epoch))
    return hooks


def describe_class_weights(spec: str | list[float], weights: Sequence[float],
                           shown: int = 20, multilabel: bool = False) -> str:
    """One line for the run's log: the loss's class weights (the first ``shown`` of them).

    >>> describe_class_weights([1.0, 3.5], [1.0, 3.5])
    'class weights in the training loss (optim.class_weights): 1 3.5'
    """
    how = ("auto: inverse class frequency, mean 1 per training image" if spec == "auto"
           else "optim.class_weights")
    if multilabel:
        how = ("auto: each class's negatives / positives, capped" if spec == "auto"
               else "optim.class_weights") + "; the weight of its positive labels"
    values = " ".join(f"{w:.4g}" for w in weights[:shown])
    if len(weights) > shown:
        values += f" ... ({len(weights)} classes, min {min(weights):.4g}, max {max(weights):.4g})"
    return f"class weights in the training loss ({how}): {values}"


def steps_per_epoch(cfg: Config, batches: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches (``train.accumulate``)."""
    return math.ceil(batches / cfg.train.accumulate)


def wrap_for_training(state: TrainState, cfg: Config, dist: runtime.DistInfo,
                      device: torch.device) -> None:
    """DistributedDataParallel under torchrun, then ``torch.compile`` when asked. Evaluation and
    checkpoints keep using the plain model (``runtime.unwrap_model``)."""
    if dist.distributed:
        state.model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        # Training steps run compiled; evaluation stays eager (one graph, no eval-mode recompile).
        state.model = torch.compile(state.model)
