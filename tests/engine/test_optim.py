"""Optimizers, loss and every lr schedule, on one dummy parameter (no model, no data)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from imgcls.config import OptimConfig, SchedConfig, build_config
from imgcls.errors import ImgclsError
from imgcls.losses import create_loss
from imgcls.optim import OPTIMIZERS, SCHEDULERS, create_optimizer, create_scheduler

# The schedulers must not trigger torch's "scheduler.step() before optimizer.step()" warnings.
pytestmark = pytest.mark.filterwarnings("error")

LR = 0.1


def _optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _sched(**kw: object) -> SchedConfig:
    kw.setdefault("warmup_epochs", 0.0)  # explicit: the config's default warmup may change
    return SchedConfig(**kw)  # type: ignore[arg-type]


def _lrs(cfg: SchedConfig, epochs: int, spe: int, metrics=None) -> list[float]:
    """The lr used by every batch of a run (``metrics(epoch)`` feeds step_epoch)."""
    opt = _optimizer()
    sched = create_scheduler(opt, cfg, epochs, spe)
    out = []
    for epoch in range(epochs):
        for _ in range(spe):
            out.append(sched.get_last_lr())
            opt.step()
            sched.step_batch()
        sched.step_epoch(metrics(epoch) if metrics else {"val_loss": 1.0, "val_acc": 0.5})
    return out


def _torch_lrs(make, epochs: int, spe: int, per: str) -> list[float]:
    """The same run with a torch scheduler stepped per "batch" or per "epoch"."""
    opt = _optimizer()
    sched = make(opt)
    out = []
    for _ in range(epochs):
        for _ in range(spe):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per == "batch":
                sched.step()
        if per == "epoch":
            sched.step()
    return out


# --------------------------------------------------------------------------- optimizers, loss


def test_sgd_options_and_only_trainable_params() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = create_optimizer(
        model, OptimConfig(name="sgd", lr=0.5, momentum=0.8, nesterov=True, weight_decay=1e-4)
    )
    assert isinstance(opt, torch.optim.SGD)
    (group,) = opt.param_groups
    assert group["lr"] == 0.5 and group["momentum"] == 0.8 and group["nesterov"]
    assert group["weight_decay"] == 1e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in model[1].parameters()}


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_adam_kinds(name: str, cls: type) -> None:
    opt = create_optimizer(
        nn.Linear(2, 2), OptimConfig(name=name, lr=1e-3, betas=[0.8, 0.99], weight_decay=0.05)
    )
    assert type(opt) is cls
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["weight_decay"] == 0.05


def test_optimizer_errors() -> None:
    with pytest.raises(ImgclsError, match="no trainable"):
        create_optimizer(nn.Linear(2, 2).requires_grad_(False), OptimConfig())
    with pytest.raises(ImgclsError, match="optim.name = 'sgdd' is invalid: expected one of sgd"):
        build_config(overrides={"optim.name": "sgdd"})  # the schema's choices are optim's
    assert OPTIMIZERS == ("sgd", "adam", "adamw")


def test_head_lr_mult_splits_the_head_into_its_own_group() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    opt = create_optimizer(model, OptimConfig(lr=0.1, head_lr_mult=0.5, weight_decay=1e-4))
    body, head = opt.param_groups
    assert (body["lr"], body["lr_scale"], head["lr"], head["lr_scale"]) == (0.1, 1.0, 0.05, 0.5)
    assert [id(p) for p in head["params"]] == [id(p) for p in model[2].parameters()]
    assert [id(p) for p in body["params"]] == [id(p) for p in model[0].parameters()]
    assert body["weight_decay"] == head["weight_decay"] == 1e-4
    with pytest.raises(ImgclsError, match="head_lr_mult=2.0.*no Linear"):
        create_optimizer(nn.Sequential(nn.BatchNorm1d(2)), OptimConfig(head_lr_mult=2.0))


def test_loss_label_smoothing() -> None:
    loss = create_loss(OptimConfig(label_smoothing=0.1))
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.1


# --------------------------------------------------------------------------- schedules


def test_none_is_constant() -> None:
    assert _lrs(_sched(name="none"), 3, 2) == [LR] * 6


def test_multistep_changes_at_epoch_boundaries() -> None:
    lrs = _lrs(_sched(name="multistep", milestones=[2, 4], gamma=0.5), epochs=5, spe=3)
    assert lrs == pytest.approx([0.1] * 6 + [0.05] * 6 + [0.025] * 3)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 4], 0.5), 5, 3, per="epoch"
    )
    assert lrs == pytest.approx(ref)


def test_step_and_exponential_match_torch_per_epoch() -> None:
    lrs = _lrs(_sched(name="step", step_size=2, gamma=0.1), epochs=5, spe=2)
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 2)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.1), 5, 2, per="epoch")
    assert lrs == pytest.approx(ref)
    lrs = _lrs(_sched(name="exponential", gamma=0.5), epochs=4, spe=2)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5), 4, 2, "epoch")
    assert lrs == pytest.approx(ref) == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]


def test_cosine_per_batch_down_to_min_lr() -> None:
    cfg = _sched(name="cosine", min_lr=0.001)
    lrs = _lrs(cfg, epochs=3, spe=4)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.001),
        3, 4, per="batch",
    )
    assert lrs == pytest.approx(ref, rel=1e-12)
    assert len(set(lrs)) == 12  # changes every batch, not per epoch
    opt = _optimizer()
    sched = create_scheduler(opt, cfg, 3, 4)
    for _ in range(12):
        opt.step()
        sched.step_batch()
    assert sched.get_last_lr() == pytest.approx(0.001)


@pytest.mark.parametrize("max_lr", [None, 0.4])
def test_onecycle_matches_torch_and_peaks(max_lr: float | None) -> None:
    cfg = _sched(name="onecycle", max_lr=max_lr, pct_start=0.25)
    lrs = _lrs(cfg, epochs=5, spe=4)
    peak = max_lr or LR  # default: the optimizer's lr
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=peak, total_steps=20, pct_start=0.25, cycle_momentum=False
        ),
        5, 4, per="batch",
    )
    assert lrs == pytest.approx(ref, rel=1e-12)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 4  # pct_start*20 - 1
    assert lrs[0] == pytest.approx(peak / 25)


def test_warmup_linear_per_batch_then_main_schedule() -> None:
    lrs = _lrs(_sched(name="none", warmup_epochs=1.0, warmup_start_factor=0.1), 2, 4)
    assert lrs == pytest.approx([0.01, 0.0325, 0.055, 0.0775] + [0.1] * 4)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
        2, 4, per="batch",
    )
    assert lrs == pytest.approx(ref)
    # Fractional epochs: round(0.5 * 4) = 2 warmup batches.
    lrs = _lrs(_sched(name="none", warmup_epochs=0.5, warmup_start_factor=0.5), 1, 4)
    assert lrs == pytest.approx([0.05, 0.075, 0.1, 0.1])


def test_warmup_clocks() -> None:
    # Epoch schedules count epochs from the start (milestone 2 stays at epoch 2) ...
    lrs = _lrs(_sched(name="multistep", milestones=[2], gamma=0.5, warmup_epochs=1.0), 3, 2)
    assert lrs == pytest.approx([0.01, 0.055, 0.1, 0.1, 0.05, 0.05])
    # ... per-batch ones start after the warmup: full lr right after it, min_lr at the end.
    cfg = _sched(name="cosine", warmup_epochs=1.0, min_lr=0.0)
    lrs = _lrs(cfg, 3, 2)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4), 2, 2,
                     per="batch")
    assert lrs[:2] == pytest.approx([0.01, 0.055]) and lrs[2:] == pytest.approx(ref)


def test_plateau_reacts_to_flat_metric() -> None:
    cfg = _sched(name="plateau", plateau_metric="val_loss", plateau_factor=0.5,
                 plateau_patience=1, min_lr=0.03)
    lrs = _lrs(cfg, epochs=7, spe=1, metrics=lambda e: {"val_loss": 1.0})
    # epoch 0 sets the best; 2 bad epochs (> patience 1) -> halve; the floor is min_lr.
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.03, 0.03])
    # val_acc is maximised: a rising accuracy never reduces the lr.
    cfg = _sched(name="plateau", plateau_metric="val_acc", plateau_patience=0)
    assert _lrs(cfg, 4, 2, metrics=lambda e: {"val_acc": 0.1 * e}) == [LR] * 8


def test_plateau_ignores_warmup_epochs_and_needs_its_metric() -> None:
    cfg = _sched(name="plateau", plateau_metric="val_loss", plateau_factor=0.5,
                 plateau_patience=0, warmup_epochs=2.0)
    lrs = _lrs(cfg, epochs=5, spe=1, metrics=lambda e: {"val_loss": 1.0})
    # Epoch 0 ends inside the warmup: not fed. Epoch 1 (ends with the warmup) sets the best,
    # every later epoch is bad (patience 0) -> halve each time.
    assert lrs == pytest.approx([0.01, 0.055, 0.1, 0.05, 0.025])
    opt = _optimizer()
    sched = create_scheduler(opt, _sched(name="plateau"), 2, 1, monitor="val_loss")
    with pytest.raises(ImgclsError, match="val_loss"):
        sched.step_epoch({"train_loss": 1.0})


@pytest.mark.parametrize("monitor,flat,rising", [("val_acc", True, False),
                                                  ("val_macro_f1", True, False),
                                                  ("val_loss", True, True)])
def test_plateau_follows_train_monitor_and_its_direction(monitor, flat, rising) -> None:
    """sched.plateau_metric=monitor (the default) watches train.monitor, maximising every
    metric but the loss."""
    def lrs(values):
        opt = _optimizer()
        sched = create_scheduler(opt, _sched(name="plateau", plateau_patience=0), 3, 1,
                                 monitor=monitor)
        for value in values:
            sched.step_batch()
            sched.step_epoch({monitor: value})
        return opt.param_groups[0]["lr"]

    assert (lrs([0.5, 0.5, 0.5]) < LR) == flat
    assert (lrs([0.1, 0.2, 0.3]) < LR) == rising  # a rising loss is a bad sign


def _metric(epoch: int) -> dict[str, float]:
    # Improves, then stalls: drives plateau through reductions before and after the save.
    loss = [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0][epoch]
    return {"val_loss": loss, "val_acc": 1.0 / loss}


@pytest.mark.parametrize("warmup", [0.0, 1.5])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_resume_mid_run_is_exact(name: str, warmup: float) -> None:
    epochs, spe = 8, 3
    cfg = _sched(
        name=name, warmup_epochs=warmup, milestones=[3, 5], step_size=2, gamma=0.5,
        min_lr=1e-4, plateau_patience=1, plateau_factor=0.5,
    )
    full = _lrs(cfg, epochs, spe, metrics=_metric)

    opt = _optimizer()
    sched = create_scheduler(opt, cfg, epochs, spe)
    got: list[float] = []
    buf = io.BytesIO()
    for step in range(epochs * spe):
        epoch, batch = divmod(step, spe)
        if step == 4 * spe + 1:  # save mid-epoch, after a plateau reduction and the warmup
            torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
            opt = _optimizer(lr=0.5)  # a fresh run with a different lr: the state must win
            sched = create_scheduler(opt, cfg, epochs, spe)
            sched.load_state_dict(saved["sched"])
        got.append(sched.get_last_lr())
        opt.step()
        sched.step_batch()
        if batch == spe - 1:
            sched.step_epoch(_metric(epoch))
    assert got == full  # identical, not approximately equal
    if name != "none":
        assert len(set(full)) > 1


def test_load_state_of_another_scheduler_is_refused() -> None:
    state = create_scheduler(_optimizer(), _sched(name="cosine"), 2, 2).state_dict()
    with pytest.raises(ImgclsError, match="sched.name='step'.*'cosine'"):
        create_scheduler(_optimizer(), _sched(name="step"), 2, 2).load_state_dict(state)


def test_multiple_param_groups_keep_their_own_lr() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    sched = create_scheduler(opt, _sched(name="cosine", min_lr=0.0), 1, 2)
    opt.step()
    sched.step_batch()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    assert math.isclose(sched.get_last_lr(), 0.05)
