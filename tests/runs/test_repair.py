"""A kill between the writes that end an epoch (last.pt, best.pt, the metrics row) or inside
one (a temporary file) leaves records behind last.pt; --resume brings them back in line: one
metrics row per finished epoch, best.pt holding the best epoch, no temporary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls import api
from imgcls.config import build_config
from imgcls.engine import callbacks
from imgcls.runs.checkpoint import load_checkpoint
from imgcls.tracking import RunLogger

FAST = {
    "model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.02, "train.epochs": 3,
    "sched.warmup_epochs": 0.0, "log.progress": "off",
}


@pytest.fixture
def data(tmp_path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=16, size=32)


def _cfg(tmp_path: Path, data: Path, name: str, **extra: object):
    return build_config(overrides={**FAST, "data.source": str(data), "log.name": name,
                                   "log.output": str(tmp_path / "runs"), **extra})


def _epochs(run: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _kill_at(monkeypatch, target: object, name: str, epoch_of, at_epoch: int) -> None:
    """Make ``target.name`` raise KeyboardInterrupt (a kill, as far as the files go) when
    called for epoch ``at_epoch``."""
    original = getattr(target, name)

    def dying(*args, **kwargs):
        if epoch_of(*args) == at_epoch:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, dying)


def test_kill_between_last_pt_and_metrics_row(tmp_path, data, monkeypatch):
    _kill_at(monkeypatch, RunLogger, "log_epoch", lambda self, m: m["epoch"], 1)
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path, data, "row"))
    run = tmp_path / "runs" / "row"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run / "metrics.jsonl").exists() or _epochs(run) == []
    monkeypatch.undo()
    api.train(resume=run)
    assert _epochs(run) == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert len((run / "results.csv").read_text().splitlines()) == 4  # header + 3 epochs


def test_kill_after_the_final_last_pt_is_repaired_not_refused(tmp_path, data, monkeypatch,
                                                              capsys):
    # no validation set: best.pt follows every epoch, so the last epoch's copy is due
    cfg = _cfg(tmp_path, data, "final", **{"train.epochs": 2, "data.val_fraction": 0.0})
    _kill_at(monkeypatch, callbacks, "copy_checkpoint",
             lambda src, dst: load_checkpoint(src)["epoch"], 2)
    with pytest.raises(KeyboardInterrupt):
        api.train(cfg)
    run = tmp_path / "runs" / "final"
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1  # stale
    assert _epochs(run) == [1]
    leftover = run / "checkpoints" / ".best.pt.x1y2.tmp"
    leftover.write_bytes(b"half")
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 0, err
    assert "repaired" in err and "best.pt" in err and "metrics.jsonl" in err
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 2
    assert _epochs(run) == [1, 2]
    assert not leftover.exists() and not list(run.rglob("*.tmp"))
    # once repaired, a finished run is refused as before: nothing left to do
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "already finished epoch 2" in err


def test_kill_before_the_best_copy_mid_run(tmp_path, data, monkeypatch, capsys):
    cfg = _cfg(tmp_path, data, "mid", **{"data.val_fraction": 0.0})
    _kill_at(monkeypatch, callbacks, "copy_checkpoint",
             lambda src, dst: load_checkpoint(src)["epoch"], 2)
    with pytest.raises(KeyboardInterrupt):
        api.train(cfg)
    run = tmp_path / "runs" / "mid"
    monkeypatch.undo()
    capsys.readouterr()
    api.train(resume=run)
    assert "best.pt: copied from last.pt (epoch 2" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 3
    assert _epochs(run) == [1, 2, 3]
