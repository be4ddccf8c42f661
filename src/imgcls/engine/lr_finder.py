"""Learning-rate range test ("LR finder"): train briefly while the lr grows exponentially.

Leslie Smith's range test: start from a tiny lr, multiply it by a constant factor after every
optimizer step and record the training loss. The loss first barely moves (the lr is too small to
matter), then falls quickly, reaches a minimum and finally blows up (the lr is too large). A good
lr for training sits where the loss falls fastest, well before the minimum.

:func:`lr_sweep` runs the test on an already built model / optimizer / loss and returns an
:class:`LrSweep`; :func:`suggest_lr` turns the curve into a suggestion (a pure function, so it can
be re-run on a saved curve); :func:`save_sweep` writes the curve as CSV and PNG for a person to
check the suggestion by eye.

The sweep *trains* the model: afterwards its weights, the optimizer's state (momentum, Adam
moments) and its lrs are those of the last sweep step, not the ones passed in. Build fresh ones
(or reload a checkpoint) for the real run; nothing here restores them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imgcls.engine.batches import Speed
from imgcls.models import set_train_mode

# Steps before the divergence check may stop the sweep: the first smoothed values average only a
# handful of batches, and one unlucky batch must not end the test before it has started.
MIN_STEPS_BEFORE_STOP = 5
# Fewer usable points than this (after the skipped start) and a slope estimate is noise.
MIN_POINTS = 8
# Fraction of the curve's first points ignored by suggest_lr: at tiny lrs the loss only moves by
# batch-to-batch noise, whose slope can look steep and mean nothing.
SKIP_FRACTION = 0.1
# A curve whose smoothed loss falls by less than this fraction before its minimum is "flat".
MIN_RELATIVE_DROP = 0.02


@dataclass
class LrSweep:
    """The recorded curve of one range test, one entry per optimizer step taken."""

    lrs: list[float]  # the lr of each step (of an unscaled group, lr_scale 1: the body's)
    losses: list[float]  # raw training loss of each step's batch
    smoothed: list[float]  # bias-corrected exponential moving average of ``losses``
    suggestion: float | None  # suggested lr; None when the curve is too short or flat to say
    how: str  # one sentence: how the suggestion was chosen (shown to the user)
    stopped_early: bool  # the loss diverged (or went non-finite) and the sweep stopped there


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """``num_steps`` lrs from ``start_lr`` to ``end_lr``, equally spaced in log scale.

    Exponential, so every decade of lr gets the same number of steps: the interesting part of
    the curve may lie anywhere between 1e-6 and 1, and a linear ramp would spend almost all its
    steps in the last decade.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    if not 0.0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]


def _cycle(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of ``batches`` over and over: a sweep may need more steps than one epoch.

    Each pass calls ``iter(batches)`` again, so a DataLoader reshuffles (and a sampler that
    needs ``set_epoch`` simply repeats its order, which is fine for a range test). A pass that
    yields nothing raises ValueError instead of looping forever; a one-shot iterator therefore
    fails once it is used up.
    """
    passes = 0
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            if passes == 0:
                raise ValueError("lr_sweep: the batches yielded nothing")
            raise ValueError(
                "lr_sweep: the batches ran out and yielded nothing when iterated again; pass a "
                "re-iterable (a DataLoader or a list), not a one-shot iterator, or fewer steps"
            )
        passes += 1


def lr_sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    speed: Speed | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> LrSweep:
    """Run the range test: one optimizer step per batch, the lr growing from ``start_lr`` to
    ``end_lr`` exponentially over ``num_steps`` steps, and suggest an lr (:func:`suggest_lr`).

    Every parameter group gets ``lr * group.get("lr_scale", 1.0)``, so a head trained at
    ``optim.head_lr_mult`` x the body keeps that ratio and the recorded lr is the body's (the one
    ``optim.lr`` sets). ``batches`` is iterated again when it runs out before ``num_steps``.

    The sweep stops early when the smoothed loss exceeds ``diverge`` x the lowest smoothed loss
    so far (after :data:`MIN_STEPS_BEFORE_STOP` steps), or when a loss is not finite (that loss
    is not recorded): past that point the curve says nothing more and the steps only waste time.

    The smoothing is a bias-corrected exponential moving average (``beta``): a sweep sees every
    batch once at a different lr, so the raw curve carries the batch-to-batch noise, and the
    correction keeps the first values from being pulled towards zero.

    ``speed`` (autocast, channels-last) and ``scaler`` (fp16 loss scaling) are those of the run
    the lr is for, so the test sees the same numerics. The model, optimizer (weights, momentum
    buffers, lrs) and the scaler are changed by the sweep and not restored: build fresh ones for
    training. Each step reads the loss back (``.item()``), one device sync per step, which is
    negligible for a sweep of ~100 steps.
    """
    lrs_planned = lr_schedule(start_lr, end_lr, num_steps)
    _check_sweep_args(beta, diverge)
    speed = speed or Speed()
    set_train_mode(getattr(model, "module", model))
    curve = _Curve(beta=beta, diverge=diverge)
    stopped_early = _run_steps(model, optimizer, loss_fn, _cycle(batches), lrs_planned, curve,
                               device=device, speed=speed, scaler=scaler)
    optimizer.zero_grad(set_to_none=True)
    suggestion, how = suggest_lr(curve.lrs, curve.smoothed)
    return LrSweep(lrs=curve.lrs, losses=curve.losses, smoothed=curve.smoothed,
                   suggestion=suggestion, how=how, stopped_early=stopped_early)


def _check_sweep_args(beta: float, diverge: float) -> None:
    """Reject a smoothing factor outside [0, 1) and a divergence factor of at most 1."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if diverge <= 1.0:
        raise ValueError(f"diverge must be > 1, got {diverge}")


@dataclass
class _Curve:
    """The curve being recorded, with the smoothing and divergence state of the sweep."""

    beta: float
    diverge: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    average: float = 0.0
    best: float = math.inf

    def add(self, step: int, lr: float, value: float) -> bool:
        """Record step ``step``'s loss ``value``; True when the sweep must stop here.

        A non-finite loss is not recorded and stops the sweep; a finite one is recorded, then
        the sweep stops if the smoothed loss has diverged (:meth:`diverged`).
        """
        if not math.isfinite(value):
            return True
        self.average = self.beta * self.average + (1.0 - self.beta) * value
        smooth = self.average / (1.0 - self.beta ** (step + 1))
        self.lrs.append(lr)
        self.losses.append(value)
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        return self.diverged(step, smooth)

    def diverged(self, step: int, smooth: float) -> bool:
        """Past :data:`MIN_STEPS_BEFORE_STOP` steps, ``smooth`` exceeds diverge x the best."""
        return step >= MIN_STEPS_BEFORE_STOP and smooth > self.diverge * self.best


def _run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    stream: Iterator[tuple[Tensor, Tensor]],
    lrs_planned: list[float],
    curve: _Curve,
    *,
    device: torch.device,
    speed: Speed,
    scaler: torch.amp.GradScaler | None,
) -> bool:
    """One step per lr of ``lrs_planned``, recorded in ``curve``; True when it stopped early."""
    scales = [float(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    for step, lr in enumerate(lrs_planned):
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        loss = _batch_loss(model, optimizer, loss_fn, next(stream), device=device, speed=speed)
        if curve.add(step, lr, float(loss.detach().float().item())):
            return True
        if step == len(lrs_planned) - 1:
            break  # the last loss is recorded; a step after it would never be measured
        _backward_step(loss, optimizer, scaler)
    return False


def _batch_loss(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batch: tuple[Tensor, Tensor],
    *,
    device: torch.device,
    speed: Speed,
) -> Tensor:
    """Move ``batch`` to ``device``, clear the gradients and return the forward pass's loss."""
    images, labels = batch
    images = speed.inputs(images, device)
    labels = labels.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with speed.autocast(device):
        logits = model(images)
        loss = loss_fn(logits, labels)
    return loss


def _backward_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Backpropagate ``loss`` and take one optimizer step, through ``scaler`` when given."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float | None, str]:
    """An lr to train at, read off a range-test curve, and one sentence saying how.

    Rule: the lr where the smoothed loss falls fastest against log10(lr) (the most negative
    ``numpy.gradient``), searched only before the curve's minimum (past it, larger lrs make the
    loss worse) and after the first :data:`SKIP_FRACTION` of the points (at tiny lrs the loss
    moves by noise only). The steepest descent is where a step of the lr buys the most progress,
    while still being well below the lr at which training becomes unstable.

    The classic alternative, the lr of the minimum divided by 10, is computed too; when the two
    differ by more than 10x, the sentence names both, since then the curve has no clear shape
    and the user should look at the plot.

    Returns ``(None, reason)`` when fewer than :data:`MIN_POINTS` points remain, when the loss
    never falls before its minimum, or when it falls by less than :data:`MIN_RELATIVE_DROP`.
    """
    if len(lrs) != len(smoothed):
        raise ValueError(f"lrs and smoothed differ in length: {len(lrs)} and {len(smoothed)}")
    n = len(lrs)
    skip = int(n * SKIP_FRACTION)
    if n - skip < MIN_POINTS:
        return None, (
            f"no suggestion: only {n} points recorded, too few to estimate a slope (the sweep "
            "diverged almost at once; lower start_lr or take more steps)"
        )
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    y = np.asarray(smoothed, dtype=np.float64)
    lowest = skip + int(np.argmin(y[skip:]))
    if lowest - skip < 2:
        return None, (
            f"no suggestion: the smoothed loss is lowest at lr {lrs[lowest]:.2g}, at the start "
            "of the sweep, so it never fell (lower start_lr, or the model is already trained)"
        )
    top = float(np.max(y[skip:lowest + 1]))
    drop = top - float(y[lowest])
    if drop <= MIN_RELATIVE_DROP * max(abs(top), 1e-12):
        return None, (
            f"no suggestion: the smoothed loss falls by only {drop / max(abs(top), 1e-12):.1%} "
            "before its minimum, too flat to tell a good lr from a bad one"
        )
    slope = np.gradient(y, x)
    steepest = skip + int(np.argmin(slope[skip:lowest]))
    if slope[steepest] >= 0:
        return None, "no suggestion: the smoothed loss never decreases before its minimum"
    suggestion = float(lrs[steepest])
    min_tenth = float(lrs[lowest]) / 10.0
    how = (
        f"lr {suggestion:.2g} is where the smoothed loss falls fastest (steepest slope vs "
        f"log10 lr) before its minimum at lr {lrs[lowest]:.2g}"
    )
    if max(suggestion, min_tenth) > 10.0 * min(suggestion, min_tenth):
        how += (
            f"; the minimum/10 rule would say {min_tenth:.2g}, over 10x apart, so check the plot"
        )
    return suggestion, how + "."


def save_sweep(sweep: LrSweep, out_dir: Path) -> tuple[Path, Path]:
    """Write ``lr_find.csv`` (step, lr, loss, smoothed_loss) and ``lr_find.png`` to ``out_dir``.

    The plot has a log-scale lr axis, the smoothed loss as a line, the raw loss faint behind it
    and a vertical marker at the suggestion. Its y-range stops a little above the highest
    smoothed loss before the minimum, so a divergence spike at the end does not squash the part
    of the curve that matters. Returns ``(csv_path, png_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "lr_find.csv"
    png_path = out_dir / "lr_find.png"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for step, (lr, loss, smooth) in enumerate(
            zip(sweep.lrs, sweep.losses, sweep.smoothed, strict=True)
        ):
            writer.writerow([step, repr(lr), repr(loss), repr(smooth)])
    _plot_sweep(sweep, png_path)
    return csv_path, png_path


def _y_limits(losses: list[float], smoothed: list[float]) -> tuple[float, float]:
    """Bottom at the lowest loss, top a margin above the smoothed loss up to its minimum."""
    lowest = int(np.argmin(smoothed))
    bottom = min(min(losses), min(smoothed))
    top = max(smoothed[: lowest + 1])
    margin = max(0.15 * (top - bottom), 1e-3 * max(abs(top), 1.0))
    low = bottom - margin
    if bottom >= 0.0:
        low = max(low, 0.0)  # a loss that cannot go negative needs no negative axis
    return low, top + margin


def _plot_sweep(sweep: LrSweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if sweep.lrs:
        ax.plot(sweep.lrs, sweep.losses, color="tab:blue", alpha=0.25, linewidth=1,
                label="loss")
        ax.plot(sweep.lrs, sweep.smoothed, color="tab:blue", linewidth=2,
                label="smoothed loss")
        ax.set_ylim(*_y_limits(sweep.losses, sweep.smoothed))
    else:
        ax.text(0.5, 0.5, "no steps recorded", ha="center", va="center",
                transform=ax.transAxes)
    if sweep.suggestion is not None:
        ax.axvline(sweep.suggestion, color="tab:red", linestyle="--",
                   label=f"suggestion {sweep.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test" + (" (stopped: diverged)" if sweep.stopped_early
                                               else ""))
    if sweep.lrs:
        ax.legend(loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
