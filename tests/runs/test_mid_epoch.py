"""Stopping inside an epoch: train.checkpoint_every_steps/minutes and stop signals save a
resumable state after an optimizer step, and --resume continues from that batch bit-identically
(deterministic CPU) with the epoch's metrics row as an uninterrupted run writes it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import SignalAtSave, assert_same_weights, run_cli

from imgcls import api
from imgcls.cli.messages import interrupted_message
from imgcls.config import build_config
from imgcls.engine.loop import NonFiniteLoss
from imgcls.engine.signals import GracefulStop
from imgcls.engine.trainer import Callback
from imgcls.runs.checkpoint import load_checkpoint

# 60 images, batch 8: 7 or 8 batches an epoch, a mid-epoch save every 3 steps
FAST = {
    "model.name": "lenet", "loader.batch_size": 8, "optim.lr": 0.02, "train.epochs": 3,
    "sched.warmup_epochs": 0.5, "log.progress": "off", "train.deterministic": True,
    "log.tensorboard": False, "train.checkpoint_every_steps": 3,
}


@pytest.fixture
def data(tmp_path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20, size=32)


def _cfg(tmp_path: Path, data: Path, name: str, **extra: object):
    return build_config(overrides={**FAST, "data.source": str(data), "log.name": name,
                                   "log.output": str(tmp_path / "runs"), **extra})


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


LOADERS = {
    "memory": {"data.loader": "memory"},
    "dataloader": {"data.loader": "dataloader"},
    "dataloader-workers": {"data.loader": "dataloader", "loader.num_workers": 2},
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_stop_mid_epoch_resumes_bit_identical(tmp_path, data, loader):
    options = {**LOADERS[loader], "transforms.random_crop": True, "transforms.hflip": 0.5}
    whole = api.train(_cfg(tmp_path, data, "whole", **options))
    with pytest.raises(api.Interrupted) as stopped:
        api.train(_cfg(tmp_path, data, "cut", **options), callbacks=[SignalAtSave(3)])
    run = tmp_path / "runs" / "cut"
    record = load_checkpoint(run / "checkpoints" / "last.pt")
    assert record["progress"] is not None and record["progress"]["batches"] > 0
    assert stopped.value.progress.batches == record["progress"]["batches"]
    # the message names the saved position and the real resume command
    message = interrupted_message(stopped.value)
    assert f"up to batch {record['progress']['batches']} of" in message
    assert f"imgcls train --resume {run}" in message
    resumed = api.train(resume=run)
    assert resumed.epochs == 3
    assert_same_weights(whole.run_dir, run)
    volatile = {"epoch_time_s", "train_time_s", "train_images_per_s", "elapsed_s"}
    strip = [{k: v for k, v in r.items() if k not in volatile} for r in _rows(run)]
    assert strip == [{k: v for k, v in r.items() if k not in volatile}
                     for r in _rows(whole.run_dir)]


def test_checkpoint_every_steps_saves_inside_epochs(tmp_path, data):
    seen: list[tuple[int, int]] = []

    class Watch(Callback):
        def on_mid_epoch_save(self, trainer, progress) -> None:
            seen.append((trainer.state.step, progress.batches))

    api.train(_cfg(tmp_path, data, "every"), callbacks=[Watch()])
    assert seen and all(step % 3 == 0 for step, _ in seen)
    # the save after an epoch's last step is the epoch's own checkpoint, not a mid-epoch one
    last = load_checkpoint(tmp_path / "runs" / "every" / "checkpoints" / "last.pt")
    assert last.get("progress") is None and last["epoch"] == 3


def test_nonfinite_weights_are_never_saved_mid_epoch(tmp_path, data):
    class PoisonAfterEpoch1(Callback):
        def on_epoch_end(self, trainer, metrics):
            if metrics["epoch"] == 1:  # from epoch 2 on every loss is nan
                self.good = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
                trainer.state.loss_fn = lambda logits, labels: logits.sum() * float("nan")
            return None

    poison = PoisonAfterEpoch1()
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        api.train(_cfg(tmp_path, data, "nan"), callbacks=[poison])
    last = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last.get("progress") is None
    for key, value in poison.good.items():
        assert torch.equal(value, last["model"][key]), key


def test_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when launched in the background (nohup &)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and "SIGTERM" in stop.reason
        with pytest.raises(KeyboardInterrupt, match="again: stopped at once"):
            os.kill(os.getpid(), signal.SIGINT)
    # the handlers are put back afterwards
    assert signal.getsignal(signal.SIGINT) is before


def test_bad_checkpoint_interval_is_one_line(capsys):
    code, _, err = run_cli(capsys, "train", "--data", "digits",
                           "train.checkpoint_every_minutes=-1")
    assert code == 2 and "train.checkpoint_every_minutes" in err and len(err.splitlines()) == 1
