"""Weight hooks after each optimizer step: Lookahead against airbench94's own implementation,
the whitening bias frozen after N epochs, and both surviving a mid-epoch resume bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from airbench.utils import LookaheadState
from conftest import SignalAtSave, assert_one_line_error, assert_same_weights, run_cli
from torch import nn

from imgcls import api
from imgcls.config import build_config
from imgcls.engine.trainer import Callback
from imgcls.engine.weight_hooks import FreezeAfter, Lookahead
from imgcls.runs.checkpoint import load_checkpoint


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 4, 3)  # FreezeAfter's test target
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.whiten(x))).flatten(1))


def _net() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def _sgd_steps(net: nn.Module, steps: int, after_step) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        after_step(step)


def test_lookahead_matches_airbench94():
    total, decay = 12, 0.95**5  # 12 is no multiple of 5: the end reverts to the slow weights
    theirs, ours = _net(), _net()
    state = LookaheadState(theirs)
    schedule = decay * (torch.arange(total + 1) / total) ** 3

    def airbench_step(step: int) -> None:  # airbench94's training loop, after scheduler.step()
        if step % 5 == 0:
            state.update(theirs, decay=schedule[step].item())
        if step >= total:
            state.update(theirs, decay=1.0)

    hook = Lookahead(ours, every=5, decay=decay, total_steps=total)
    _sgd_steps(theirs, total, airbench_step)
    _sgd_steps(ours, total, lambda step: hook.after_step(ours, step))
    plain = _net()
    _sgd_steps(plain, total, lambda step: None)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-6, atol=1e-6)
    # and it did something: the weights differ from plain SGD's
    assert not torch.allclose(ours.head.weight, plain.head.weight)


def test_freeze_after_keeps_the_value_of_its_last_step():
    net = _net()
    hook = FreezeAfter({"whiten.bias": net.whiten.bias}, steps=3)
    biases, heads = [], []

    def record(step: int) -> None:
        hook.after_step(net, step)
        biases.append(net.whiten.bias.detach().clone())
        heads.append(net.head.weight.detach().clone())

    _sgd_steps(net, 8, record)
    assert not torch.equal(biases[1], biases[2])  # steps 1..3 train it
    for later in biases[3:]:  # with momentum and weight decay still acting on it
        assert torch.equal(later, biases[2])
    assert not torch.equal(heads[-1], heads[2])  # the rest keeps training
    restored = FreezeAfter({"whiten.bias": nn.Parameter(torch.zeros(4))}, steps=3)
    restored.load_state_dict(hook.state_dict())
    assert torch.equal(restored.frozen["whiten.bias"], biases[2])


FAST = {
    "model.name": "fastnet_s", "loader.batch_size": 8, "optim.lr": 0.05, "train.epochs": 3,
    "sched.warmup_epochs": 0.5, "log.progress": "off", "train.deterministic": True,
    "log.tensorboard": False, "train.whiten_bias_epochs": 1, "train.lookahead_every": 2,
    "train.checkpoint_every_steps": 3,
}


@pytest.fixture
def data(tmp_path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20, size=32)


def _cfg(tmp_path: Path, data: Path, name: str, **extra: object):
    return build_config(overrides={**FAST, "data.source": str(data), "log.name": name,
                                   "log.output": str(tmp_path / "runs"), **extra})


class WhitenBias(Callback):
    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def on_epoch_end(self, trainer, metrics) -> None:
        self.values.append(trainer.eval_model.whiten.bias.detach().clone())


def test_fastnet_run_freezes_the_whitening_bias_and_resumes_bit_identical(tmp_path, data):
    bias = WhitenBias()
    whole = api.train(_cfg(tmp_path, data, "whole"), callbacks=[bias])
    assert bias.values[0].abs().sum() > 0  # trained during epoch 1 (it starts at zero)
    assert torch.equal(bias.values[1], bias.values[0])
    assert torch.equal(bias.values[2], bias.values[0])
    hooks = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")["weight_hooks"]
    assert set(hooks) == {"lookahead", "freeze_after"}

    with pytest.raises(api.Interrupted):  # stopped inside epoch 2, past the freeze
        api.train(_cfg(tmp_path, data, "cut"), callbacks=[SignalAtSave(3)])
    run = tmp_path / "runs" / "cut"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["batches"] > 0
    api.train(resume=run)
    assert_same_weights(whole.run_dir, run)


def test_whiten_bias_epochs_needs_a_whitening_layer(tmp_path, data, capsys):
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet",
                           "--epochs", "1", "--output", str(tmp_path / "runs"),
                           "train.whiten_bias_epochs=2", "log.progress=off")
    assert_one_line_error(code, err, "train.whiten_bias_epochs=2", "lenet")
    code, _, err = run_cli(capsys, "train", "--data", str(data), "train.lookahead_decay=1.0")
    assert_one_line_error(code, err, "train.lookahead_decay")
