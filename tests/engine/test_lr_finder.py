"""The LR range test: its schedule, early stop, suggestion rule, files, and that the suggested
lr actually trains better than lrs 100x away from it."""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from imgcls.engine.lr_finder import LrSweep, lr_schedule, lr_sweep, save_sweep, suggest_lr

CPU = torch.device("cpu")


def blobs(seed: int, n: int = 512, dim: int = 10, classes: int = 4) -> tuple[Tensor, Tensor]:
    """Gaussian blobs, one per class, overlapping a little: learnable but not in one step."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 1.5
    labels = torch.arange(n) % classes
    points = centers[labels] + torch.randn(n, dim, generator=gen)
    return points, labels


class Batches:
    """A re-iterable mini-batch loader with a seeded order (like a DataLoader with a generator:
    each pass reshuffles, the same way in every run)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def mlp(seed: int, dim: int = 10, classes: int = 4, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def sgd(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def test_schedule_is_exponential_from_start_to_end_and_batches_cycle() -> None:
    x, y = blobs(0, n=48)
    model = mlp(0)
    batches = list(Batches(x, y, 16, seed=0))  # 3 batches for 30 steps: cycled 10 times
    sweep = lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), batches, device=CPU,
                     start_lr=1e-6, end_lr=1e-3, num_steps=30)
    assert not sweep.stopped_early
    assert len(sweep.lrs) == len(sweep.losses) == len(sweep.smoothed) == 30
    assert sweep.lrs[0] == pytest.approx(1e-6)
    assert sweep.lrs[-1] == pytest.approx(1e-3)
    ratios = np.array(sweep.lrs[1:]) / np.array(sweep.lrs[:-1])
    np.testing.assert_allclose(ratios, 1000 ** (1 / 29), rtol=1e-9)
    assert sweep.lrs == pytest.approx(lr_schedule(1e-6, 1e-3, 30))
    assert all(math.isfinite(v) for v in sweep.losses + sweep.smoothed)
    assert isinstance(sweep.how, str) and sweep.how


def test_smoothed_is_bias_corrected_ema_of_losses() -> None:
    x, y = blobs(1, n=64)
    model = mlp(1)
    sweep = lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), Batches(x, y, 16, seed=1),
                     device=CPU, start_lr=1e-5, end_lr=1e-3, num_steps=12, beta=0.9)
    average = 0.0
    for i, (loss, smooth) in enumerate(zip(sweep.losses, sweep.smoothed, strict=True)):
        average = 0.9 * average + 0.1 * loss
        assert smooth == pytest.approx(average / (1 - 0.9 ** (i + 1)))
    assert sweep.smoothed[0] == pytest.approx(sweep.losses[0])  # no pull towards zero


def test_divergence_stops_the_sweep_early() -> None:
    x, y = blobs(2, n=256)
    model = mlp(2)
    sweep = lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), Batches(x, y, 32, seed=2),
                     device=CPU, start_lr=1e-4, end_lr=1e6, num_steps=100)
    assert sweep.stopped_early
    assert 5 < len(sweep.lrs) < 100
    assert all(math.isfinite(v) for v in sweep.losses + sweep.smoothed)
    assert sweep.lrs[-1] < 1e6


def test_empty_or_exhausted_batches_raise() -> None:
    model = mlp(0)
    with pytest.raises(ValueError, match="yielded nothing"):
        lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), [], device=CPU, num_steps=10)
    x, y = blobs(0, n=32)
    one_shot = iter(Batches(x, y, 16, seed=0))  # 2 batches, then nothing on a second pass
    with pytest.raises(ValueError, match="re-iterable"):
        lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), one_shot, device=CPU, num_steps=10)


def test_param_groups_get_lr_times_lr_scale() -> None:
    x, y = blobs(3, n=64)
    model = mlp(3)
    body = [p for m in list(model)[:-1] for p in m.parameters()]
    optimizer = torch.optim.SGD(
        [{"params": body, "lr": 0.01},
         {"params": list(model[-1].parameters()), "lr": 0.1, "lr_scale": 10.0}],
        lr=0.01, momentum=0.9,
    )
    seen: list[tuple[float, float]] = []
    model.register_forward_pre_hook(
        lambda *_: seen.append((optimizer.param_groups[0]["lr"],
                                optimizer.param_groups[1]["lr"])))
    sweep = lr_sweep(model, optimizer, nn.CrossEntropyLoss(), Batches(x, y, 16, seed=3),
                     device=CPU, start_lr=1e-6, end_lr=1e-3, num_steps=15)
    assert len(seen) == len(sweep.lrs) == 15
    for lr, (body_lr, head_lr) in zip(sweep.lrs, seen, strict=True):
        assert body_lr == pytest.approx(lr)
        assert head_lr == pytest.approx(10.0 * lr)


def test_sweep_runs_through_a_grad_scaler() -> None:
    x, y = blobs(4, n=64)
    model = mlp(4)
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu")
    sweep = lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), Batches(x, y, 16, seed=4),
                     device=CPU, start_lr=1e-4, end_lr=1e-2, num_steps=10, scaler=scaler)
    assert len(sweep.lrs) == 10
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def synthetic_curve(n: int = 100) -> tuple[list[float], list[float]]:
    """A range-test-shaped curve: flat at 2.0, a sigmoid drop centred at lr 1e-3 (in log-lr)
    down to 0.5, then a rise past lr 1e-1."""
    x = np.linspace(-7.0, 1.0, n)  # log10 lr
    drop = 2.0 - 1.5 / (1.0 + np.exp(-3.0 * (x + 3.0)))
    rise = 0.8 * np.clip(x + 1.0, 0.0, None) ** 2
    return (10.0 ** x).tolist(), (drop + rise).tolist()


def test_suggest_lr_picks_the_drop_of_a_synthetic_curve() -> None:
    lrs, smoothed = synthetic_curve()
    lr, how = suggest_lr(lrs, smoothed)
    assert lr is not None
    assert 10 ** -3.5 < lr < 10 ** -2.5  # the steepest part of the drop
    lowest = lrs[int(np.argmin(smoothed))]
    assert lr < lowest
    assert "fastest" in how


def test_suggest_lr_ignores_noise_at_tiny_lrs_and_the_rise_after_the_minimum() -> None:
    lrs, smoothed = synthetic_curve()
    smoothed[3] -= 1.0  # a steep glitch inside the skipped first 10% of the curve
    lr, _ = suggest_lr(lrs, smoothed)
    assert lr is not None and 10 ** -3.5 < lr < 10 ** -2.5


def test_suggest_lr_mentions_minimum_over_ten_when_far_apart() -> None:
    lrs, smoothed = synthetic_curve()
    lr, how = suggest_lr(lrs, smoothed)
    assert lr is not None
    min_tenth = lrs[int(np.argmin(smoothed))] / 10
    assert ("minimum/10" in how) == (max(lr, min_tenth) / min(lr, min_tenth) > 10)
    # a curve whose minimum is far beyond its steepest drop: both are named
    x = np.linspace(-7.0, 1.0, 100)
    slow_tail = 2.0 - 1.0 / (1.0 + np.exp(-4.0 * (x + 5.0))) - 0.05 * (x + 7.0)
    lr, how = suggest_lr((10.0 ** x).tolist(), slow_tail.tolist())
    assert lr is not None and lr < 1e-4
    assert "minimum/10" in how


@pytest.mark.parametrize(
    ("lrs", "smoothed", "reason"),
    [
        ([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, 2.0, 5.0], "too few"),
        ([], [], "too few"),
        (np.logspace(-6, 0, 50).tolist(), np.linspace(2.0, 4.0, 50).tolist(), "never fell"),
        (np.logspace(-6, 0, 50).tolist(), (2.0 - np.linspace(0, 0.01, 50)).tolist(), "flat"),
    ],
)
def test_suggest_lr_gives_none_with_a_reason(
    lrs: list[float], smoothed: list[float], reason: str
) -> None:
    lr, how = suggest_lr(lrs, smoothed)
    assert lr is None
    assert reason in how


def test_save_sweep_writes_csv_and_png(tmp_path: Path) -> None:
    lrs, smoothed = synthetic_curve(60)
    losses = [s + 0.1 * math.sin(i) for i, s in enumerate(smoothed)]
    losses[-1] = 1e4  # a divergence spike: the plot must still show the curve
    lr, how = suggest_lr(lrs, smoothed)
    sweep = LrSweep(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=lr, how=how,
                    stopped_early=True)
    csv_path, png_path = save_sweep(sweep, tmp_path / "out")
    assert csv_path == tmp_path / "out" / "lr_find.csv"
    assert png_path == tmp_path / "out" / "lr_find.png"
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "lr", "loss", "smoothed_loss"]
    assert len(rows) == 1 + 60
    assert [int(r[0]) for r in rows[1:]] == list(range(60))
    assert float(rows[5][1]) == pytest.approx(lrs[4])
    assert float(rows[-1][2]) == pytest.approx(1e4)
    data = png_path.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 1024


def test_save_sweep_without_points_or_suggestion(tmp_path: Path) -> None:
    sweep = LrSweep(lrs=[], losses=[], smoothed=[], suggestion=None, how="no suggestion",
                    stopped_early=True)
    csv_path, png_path = save_sweep(sweep, tmp_path)
    assert csv_path.read_text(encoding="utf-8").strip() == "step,lr,loss,smoothed_loss"
    assert png_path.read_bytes().startswith(b"\x89PNG")


def train_loss(model: nn.Module, lr: float, x: Tensor, y: Tensor, steps: int, seed: int) -> float:
    """Train at a constant lr for ``steps`` mini-batches (seeded order), then the loss on the
    whole training set; a run that blew up (non-finite loss) counts as infinitely bad."""
    optimizer = sgd(model, lr)
    loss_fn = nn.CrossEntropyLoss()
    batches = Batches(x, y, 64, seed)
    done = 0
    while done < steps:
        for images, labels in batches:
            if done == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            done += 1
    with torch.no_grad():
        loss = loss_fn(model(x), y).item()
    return loss if math.isfinite(loss) else math.inf


@pytest.mark.parametrize("seed", [0, 1])
def test_suggested_lr_trains_better_than_100x_above_or_below(seed: int) -> None:
    """The point of the tool: from the same initial weights and the same batches, training at
    the suggestion ends at a lower loss than at 100x that lr (unstable) or 1/100 (too slow)."""
    x, y = blobs(seed)
    initial = mlp(seed)
    model = copy.deepcopy(initial)
    sweep = lr_sweep(model, sgd(model), nn.CrossEntropyLoss(), Batches(x, y, 64, seed),
                     device=CPU, start_lr=1e-5, end_lr=10.0, num_steps=100)
    s = sweep.suggestion
    assert s is not None, sweep.how
    losses = {factor: train_loss(copy.deepcopy(initial), s * factor, x, y, 150, seed)
              for factor in (1.0, 100.0, 0.01)}
    assert losses[1.0] < losses[100.0], (s, losses)
    assert losses[1.0] < losses[0.01], (s, losses)
