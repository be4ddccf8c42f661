"""Optimizer and learning-rate schedule, built from ``OptimConfig`` and ``SchedConfig`` (the
loss: :mod:`imgcls.losses`).

The training loop drives the schedule through one object::

    sched = create_scheduler(optimizer, cfg.sched, epochs, steps_per_epoch=len(train_loader))
    for epoch in range(start_epoch, epochs):
        for batch in train_loader:
            ...; optimizer.step(); sched.step_batch()
        sched.step_epoch({"val_loss": ..., "val_acc": ...})

**Granularity.** step, multistep, exponential and plateau change the lr at epoch boundaries
(in :meth:`Scheduler.step_epoch`, like torch's StepLR / MultiStepLR / ReduceLROnPlateau stepped
once per epoch); cosine, linear and onecycle change it every batch; warmup is per batch.

**Warmup clock.** ``sched.warmup_epochs`` adds ``round(warmup_epochs * steps_per_epoch)`` batches
in which the lr rises linearly from ``warmup_start_factor * lr`` to the lr the main schedule
would have. Per-batch schedules (cosine, linear, onecycle) start their clock *after* the warmup and
fit their whole shape into the remaining batches (as torchvision's reference scripts do with
SequentialLR), so cosine still ends at ``min_lr`` on the last batch. Epoch schedules count
epochs from the start of the run, warmup included, so ``milestones=[30]`` still means "at the
end of epoch 30" as written. Plateau ignores the epochs that end before the warmup is complete
(the lr is still rising; their metric says nothing about a plateau).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from imgcls.config import OptimConfig, SchedConfig, choices
from imgcls.errors import ImgclsError
from imgcls.metric_table import get_monitor
from imgcls.models import find_head
from imgcls.registry import unknown_name_error

OPTIMIZERS = choices("optim.name")
SCHEDULERS = choices("sched.name")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_EPOCH_SCHEDULES = ("step", "multistep", "exponential")
# torch.optim.lr_scheduler.OneCycleLR's defaults (SchedConfig does not expose them).
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups.

    One group (``lr``) unless ``optim.head_lr_mult`` or ``optim.norm_lr_mult`` differ from 1.
    Then the parameters split into body / head (the layer ``model.freeze`` leaves trainable,
    :func:`imgcls.models.find_head`) and other / normalisation-layer parameters (BatchNorm,
    GroupNorm, LayerNorm, InstanceNorm); each non-empty group, body first, has
    ``lr = lr * lr_scale`` with ``lr_scale`` the product of the multipliers that apply, by which
    :class:`Scheduler` keeps the groups in proportion. Norm groups get
    ``weight_decay / norm_lr_mult``, so their decay per step (lr x weight_decay) stays the same.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ImgclsError("the model has no trainable parameters (model.freeze froze everything)")
    if cfg.head_lr_mult == 1.0 and cfg.norm_lr_mult == 1.0:
        return [{"params": params, "lr": cfg.lr}]
    head: set[int] = set()
    if cfg.head_lr_mult != 1.0:
        try:
            head = {id(p) for p in find_head(model)[1].parameters()}
        except ValueError:
            raise ImgclsError(
                f"optim.head_lr_mult={cfg.head_lr_mult}: {type(model).__name__} has no Linear "
                "or Conv2d classifier layer to treat as the head"
            ) from None
    split_norm = cfg.norm_lr_mult != 1.0
    norm = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters()}
    groups = []
    for in_head in (False, True):
        for is_norm in (False, True) if split_norm else (False,):
            members = [p for p in params if (id(p) in head) == in_head
                       and (not split_norm or (id(p) in norm) == is_norm)]
            if not members:
                continue
            scale = (cfg.head_lr_mult if in_head else 1.0) * (
                cfg.norm_lr_mult if is_norm else 1.0)
            group: dict[str, Any] = {"params": members, "lr": cfg.lr * scale, "lr_scale": scale}
            if is_norm:
                group["weight_decay"] = cfg.weight_decay / cfg.norm_lr_mult
            groups.append(group)
    return groups


def _kernel_flags(cfg: OptimConfig, params: list[dict[str, Any]]) -> dict[str, bool]:
    """``optim.kernel`` as torch's ``fused`` / ``foreach`` flags. One fused or foreach kernel
    updates every tensor at once instead of a Python loop over them (torch's default on CPU)."""
    kernel = cfg.kernel
    if kernel == "auto":
        on_cuda = any(p.is_cuda for g in params for p in g["params"])
        kernel = "fused" if on_cuda else "foreach"
    if kernel == "fused":
        return {"fused": True}
    return {"foreach": kernel == "foreach"}


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over the parameters that require grad (a frozen backbone is left out).

    Weight decay applies to every trainable parameter, biases and BatchNorm included, as in the
    original training scripts. ``optim.head_lr_mult`` and ``optim.norm_lr_mult`` give the head
    and the normalisation layers their own parameter groups (:func:`param_groups`).

    >>> opt = create_optimizer(model, OptimConfig(lr=0.01, head_lr_mult=10))  # doctest: +SKIP
    >>> [g["lr"] for g in opt.param_groups]                                   # doctest: +SKIP
    [0.01, 0.1]
    """
    params = param_groups(model, cfg)
    kernel = _kernel_flags(cfg, params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay, **kernel,
        )
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        b1, b2 = cfg.betas
        return cls(params, lr=cfg.lr, betas=(b1, b2), weight_decay=cfg.weight_decay, **kernel)
    raise unknown_name_error("optimizer", cfg.name, OPTIMIZERS, "optim.name")


class LrFactor:
    """The lr multiplier of one parameter group: a pure function of (batch step, epoch).

    ``factor(step, epoch) = warmup(step) * main(step, epoch)``, where ``step`` counts
    :meth:`Scheduler.step_batch` calls and ``epoch`` counts :meth:`Scheduler.step_epoch` calls.
    LambdaLR calls it with its own step counter; the epoch is read from ``self.epoch``, which the
    Scheduler advances and saves. Only numbers are stored on it, so nothing here needs pickling
    (LambdaLR cannot save lambdas or closures).
    """

    def __init__(
        self, cfg: SchedConfig, base_lr: float, warmup_steps: int, total_steps: int
    ) -> None:
        self.kind = cfg.name
        self.warmup_steps = warmup_steps
        self.warmup_start = cfg.warmup_start_factor
        # Per-batch schedules run over the batches left after the warmup (see module docstring).
        self.main_steps = max(total_steps - warmup_steps, 1)
        self.gamma = cfg.gamma
        self.step_size = cfg.step_size
        self.milestones = list(cfg.milestones)
        self.base_lr = base_lr  # the lr the factor multiplies: cosine's min_lr and onecycle's
        self.min_lr = cfg.min_lr  # max_lr are absolute, so they become ratios of it
        self.max_lr = cfg.max_lr
        self.pct_start = cfg.pct_start
        self.epoch = 0

    def __call__(self, step: int) -> float:
        return self.factor(step, self.epoch)

    def factor(self, step: int, epoch: int) -> float:
        return self._warmup(step) * self._main(step - self.warmup_steps, epoch)

    def _warmup(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        # torch's LinearLR(start_factor, end_factor=1, total_iters=warmup_steps), closed form.
        return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps

    def _main(self, t: int, epoch: int) -> float:
        t = min(max(t, 0), self.main_steps)  # clock of per-batch schedules, 0 during warmup
        if self.kind == "step":
            return self.gamma ** (epoch // self.step_size)
        if self.kind == "multistep":
            return self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.kind == "exponential":
            return self.gamma**epoch
        if self.kind == "cosine":
            # CosineAnnealingLR(T_max=main_steps, eta_min=min_lr), closed form.
            cos = (1.0 + math.cos(math.pi * t / self.main_steps)) / 2.0
            min_ratio = self.min_lr / self.base_lr
            return min_ratio + (1.0 - min_ratio) * cos
        if self.kind == "linear":  # airbench's warmup-then-linear-decay, to min_lr
            min_ratio = self.min_lr / self.base_lr
            return 1.0 - (1.0 - min_ratio) * t / self.main_steps
        if self.kind == "onecycle":
            return self._onecycle(t)
        return 1.0  # none; plateau (ReduceLROnPlateau owns the lr after the warmup)

    def _onecycle(self, t: int) -> float:
        """OneCycleLR's lr (two phases, cosine annealing) over ``main_steps`` batches."""
        peak = (self.max_lr or self.base_lr) / self.base_lr
        start = peak / ONECYCLE_DIV_FACTOR
        end = start / ONECYCLE_FINAL_DIV_FACTOR
        rise_end = self.pct_start * self.main_steps - 1  # same phase boundary as OneCycleLR
        if t <= rise_end:
            lo, hi, pct = start, peak, t / rise_end if rise_end > 0 else 1.0
        else:
            span = (self.main_steps - 1) - rise_end
            lo, hi, pct = peak, end, (t - rise_end) / span if span > 0 else 1.0
        return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class Scheduler:
    """One learning-rate schedule with a batch hook and an epoch hook (see module docstring).

    Built on torch's LambdaLR (every kind's lr is a closed form of the step and epoch counters,
    :class:`LrFactor`) plus ReduceLROnPlateau for ``plateau``. Resuming is exact: the state holds
    the counters, the plateau state and the current lrs; the schedule's *shape* comes from the
    config it is rebuilt with (so more epochs on resume stretch cosine / onecycle accordingly).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int,
        steps_per_epoch: int, monitor: str = "val_acc",
    ) -> None:
        if cfg.name not in SCHEDULERS:
            raise unknown_name_error("scheduler", cfg.name, SCHEDULERS, "sched.name")
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"need epochs >= 1 and steps_per_epoch >= 1, got "
                             f"{epochs} and {steps_per_epoch}")
        self.name = cfg.name
        self.optimizer = optimizer
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        total = epochs * steps_per_epoch
        # A group's lr_scale (optim.head_lr_mult) keeps it in proportion to the others: every
        # group gets the same factor, computed against the unscaled lr, so min_lr and max_lr
        # (absolute lrs) scale with the group too and the head stays head_lr_mult x the body.
        self.scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
        self.factors = [
            LrFactor(cfg, float(g.get("initial_lr", g["lr"])) / scale, self.warmup_steps, total)
            for g, scale in zip(optimizer.param_groups, self.scales, strict=True)
        ]
        self._lambda = LambdaLR(optimizer, self.factors)  # sets lr = base * factor(0, 0)
        self._plateau: ReduceLROnPlateau | None = None
        # plateau follows train.monitor unless sched.plateau_metric names another metric
        self.metric = monitor if cfg.plateau_metric == "monitor" else cfg.plateau_metric
        if cfg.name == "plateau":
            self._plateau = ReduceLROnPlateau(
                optimizer, mode=get_monitor(self.metric).mode,
                factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                min_lr=[cfg.min_lr * scale for scale in self.scales],
            )

    @property
    def epoch(self) -> int:
        """Number of :meth:`step_epoch` calls so far."""
        return self.factors[0].epoch

    def _in_warmup(self) -> bool:
        return self._lambda.last_epoch < self.warmup_steps

    def step_batch(self) -> None:
        """Advance one batch; call after every ``optimizer.step()``."""
        if self._plateau is None or self._in_warmup():
            # After the warmup ReduceLROnPlateau owns the lr; LambdaLR would overwrite it.
            self._lambda.step()

    def step_epoch(self, metrics: dict[str, float]) -> None:
        """Advance one epoch; call at the end of every epoch with the validation metrics."""
        for f in self.factors:
            f.epoch += 1
        if self._plateau is not None:
            if not self._in_warmup():
                if self.metric not in metrics:
                    raise ImgclsError(
                        f"sched.name=plateau watches {self.metric}, which this run does not "
                        f"measure (got {', '.join(metrics) or 'no metrics'}): it needs a "
                        "validation set"
                    )
                self._plateau.step(metrics[self.metric])
            return
        # The epoch-based factor changed: apply it now, so the next epoch's first batch uses it.
        step = self._lambda.last_epoch
        for group, base, f in zip(self.optimizer.param_groups, self._lambda.base_lrs,
                                  self.factors, strict=True):
            group["lr"] = base * f(step)

    def get_last_lr(self) -> float:
        """The lr the next batch will use (of the first parameter group: the body's when
        ``optim.head_lr_mult`` splits them)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Counters and numbers only: loadable with ``torch.load(..., weights_only=True)``."""
        lam = self._lambda.state_dict()
        lam["lr_lambdas"] = [None] * len(self.factors)  # shape comes from the config, not here
        return {
            "name": self.name,
            "epoch": self.epoch,
            "lambda": lam,
            "plateau": self._plateau.state_dict() if self._plateau is not None else None,
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was saved (also restores the optimizer's lrs)."""
        if state.get("name") != self.name:
            raise ImgclsError(
                f"sched.name={self.name!r} but the checkpoint's scheduler is "
                f"{state.get('name')!r}: resume with the run's own config"
            )
        self._lambda.load_state_dict(dict(state["lambda"]))
        # The saved base lrs win over this optimizer's (as they do in optimizer.load_state_dict).
        for f, base, scale in zip(self.factors, self._lambda.base_lrs, self.scales, strict=True):
            f.epoch = int(state["epoch"])
            f.base_lr = float(base) / scale
        if self._plateau is not None:
            self._plateau.load_state_dict(dict(state["plateau"]))
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps_per_epoch: int,
    monitor: str = "val_acc",
) -> Scheduler:
    """The schedule ``cfg`` describes, for a run of ``epochs`` x ``steps_per_epoch`` batches;
    ``monitor`` (``train.monitor``) is what ``plateau`` watches unless told otherwise."""
    return Scheduler(optimizer, cfg, epochs, steps_per_epoch, monitor)
