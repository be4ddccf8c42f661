"""Stopping a run from outside: SIGTERM and Ctrl-C say what is saved and how to go on, with the
real run folder; a run killed before its first checkpoint is started over, not a dead end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from imgcls import api
from imgcls.cli import _interrupted_message
from imgcls.config import build_config
from imgcls.engine.checkpoint import load_checkpoint


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_saying_what_is_saved(tmp_path, sig, code):
    run = tmp_path / "runs" / "sig"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgcls", "train", "--data", "digits", "--model", "lenet",
         "--epochs", "200", "--output", str(tmp_path / "runs"), "--name", "sig",
         f"data.root={tmp_path / 'cache'}", "log.progress=off", "log.tensorboard=false"],
        env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_rows(run)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    last = err.strip().splitlines()[-1]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert f"epoch {saved} is saved in {run / 'checkpoints' / 'last.pt'}" in last, last
    assert f"imgcls train --resume {run}" in last and "RUN" not in last
    assert "Traceback" not in err
    assert [r["epoch"] for r in _rows(run)] == list(range(1, saved + 1))
    assert not list(run.rglob("*.tmp"))


def test_messages_before_anything_is_saved(tmp_path):
    assert _interrupted_message(KeyboardInterrupt()) == "interrupted during start-up: nothing " \
        "was saved"
    exc = api.Interrupted("terminated (SIGTERM)", tmp_path / "r", None)
    assert "before the first epoch was saved" in _interrupted_message(exc)
    assert f"imgcls train --resume {tmp_path / 'r'}` starts the run over" in \
        _interrupted_message(exc)


def test_a_run_killed_before_its_first_checkpoint_is_started_over(tmp_path, make_image_folder,
                                                                 capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=32)
    common = ["train", "--data", str(data), "--model", "lenet", "--epochs", "1",
              "--output", str(tmp_path / "runs"), "--name", "early", "log.progress=off",
              "sched.warmup_epochs=0"]
    # what a kill during the first epoch leaves: config, split, a half-written metrics file
    cfg = build_config(overrides={"data.source": str(data), "model.name": "lenet",
                                  "train.epochs": 1, "log.output": str(tmp_path / "runs"),
                                  "log.name": "early"})
    run = tmp_path / "runs" / "early"
    (run / "checkpoints").mkdir(parents=True)
    from imgcls.config import save_yaml
    save_yaml(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_lo')
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 0, err
    assert "has no checkpoint yet" in err and "starting it over" in err
    assert [r["epoch"] for r in _rows(run)] == [1]
    # and rerunning the same command on such a folder starts over too, instead of refusing
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "best.pt").unlink()
    code, _, err = run_cli(capsys, *common)
    assert code == 0, err
    assert [r["epoch"] for r in _rows(run)] == [1]
    # a run with a checkpoint is still protected
    code, _, err = run_cli(capsys, *common)
    assert code == 2 and "already holds a run" in err
