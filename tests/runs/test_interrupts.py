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
from imgcls.cli.messages import interrupted_message
from imgcls.config import build_config
from imgcls.runs.checkpoint import load_checkpoint


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
    record = load_checkpoint(run / "checkpoints" / "last.pt")
    saved, progress = record["epoch"], record.get("progress")
    # the stop is graceful: the state after the current step (or epoch) is saved
    where = (f"epoch {saved + 1} up to batch {progress['batches']} of" if progress
             else f"epoch {saved}")
    assert f"{where}" in last and f"is saved in {run / 'checkpoints' / 'last.pt'}" in last, last
    assert f"imgcls train --resume {run}" in last and "RUN" not in last
    assert "Traceback" not in err
    assert [r["epoch"] for r in _rows(run)] == list(range(1, saved + 1))
    assert not list(run.rglob("*.tmp"))


def test_messages_before_anything_is_saved(tmp_path):
    assert interrupted_message(KeyboardInterrupt()) == "interrupted during start-up: nothing " \
        "was saved"
    exc = api.Interrupted("terminated (SIGTERM)", tmp_path / "r", None)
    assert "before the first epoch was saved" in interrupted_message(exc)
    assert f"imgcls train --resume {tmp_path / 'r'}` starts the run over" in \
        interrupted_message(exc)


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


def _train_process(tmp_path: Path, name: str, *extra: str, env: dict | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "imgcls", "train", "--data", "digits", "--model", "lenet",
         "--epochs", "200", "--output", str(tmp_path / "runs"), "--name", name,
         f"data.root={tmp_path / 'cache'}", "log.progress=off", "log.tensorboard=false", *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stderr=subprocess.PIPE,
        text=True)


def _wait_for_rows(proc, run: Path, rows: int) -> None:
    deadline = time.monotonic() + 120
    while len(_rows(run)) < rows and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)


@pytest.mark.slow
def test_sigusr1_saves_and_requeues_then_the_same_command_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls"
    scontrol = bin_dir / "scontrol"  # stands in for SLURM's
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    run = tmp_path / "runs" / "slurm"
    proc = _train_process(tmp_path, "slurm", "train.requeue=true", env=env)
    _wait_for_rows(proc, run, 1)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "job 4242 requeued" in err and "is saved in" in err
    assert calls.read_text().split() == ["requeue", "4242"]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    # the requeued job runs its first command again: it resumes instead of refusing the folder
    again = subprocess.run(
        [sys.executable, "-m", "imgcls", "train", "--data", "digits", "--model", "lenet",
         "--epochs", str(saved["epoch"] + 2), "--output", str(tmp_path / "runs"), "--name",
         "slurm", f"data.root={tmp_path / 'cache'}", "log.progress=off",
         "log.tensorboard=false", "train.requeue=true"],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stderr=subprocess.PIPE, text=True,
        timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming it" in again.stderr
    assert [r["epoch"] for r in _rows(run)] == list(range(1, saved["epoch"] + 3))


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(x) for x in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has ended


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_dataloader_workers_end_with_the_parent(tmp_path, sig):
    run = tmp_path / "runs" / "workers"
    proc = _train_process(tmp_path, "workers", "data.loader=dataloader", "loader.num_workers=2")
    _wait_for_rows(proc, run, 1)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline:  # workers restart every epoch
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "no DataLoader workers seen"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)]
