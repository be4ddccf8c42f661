"""One training per run folder: an OS lock held for the whole run, which dies with its process
(so a SIGKILL never leaves a stale lock); a second writer exits 2 naming the folder and PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from imgcls.errors import ImgclsError
from imgcls.runs.lock import RunLock, in_use

HOLD = """
import sys, time
from pathlib import Path
from imgcls.runs.lock import RunLock
lock = RunLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock, as a training would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--data", "digits", "--epochs", "1", "--output", str(tmp_path / "runs"),
            "log.progress=off", *extra]


def test_the_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    proc = _hold(tmp_path)
    try:
        assert in_use(tmp_path) == str(proc.pid)
        with pytest.raises(ImgclsError, match=rf"run folder {tmp_path} is in use by another "
                           rf"training \(PID {proc.pid}\)"):
            RunLock.acquire(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    # in its own process the lock is re-entrant, and released by its last holder
    outer = RunLock.acquire(tmp_path)
    with RunLock.acquire(tmp_path):
        assert in_use(tmp_path) is None  # no *other* process trains it
    check = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True,
                           text=True)
    assert f"in use by another training (PID {os.getpid()})" in check.stderr
    outer.release()
    assert in_use(tmp_path) is None
    RunLock.acquire(tmp_path).release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _hold(tmp_path)
    assert in_use(tmp_path) == str(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert in_use(tmp_path) is None
    RunLock.acquire(tmp_path).release()


def test_a_second_training_of_a_busy_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    code, _, err = run_cli(capsys, *_train_args(tmp_path, "--name", "x"))
    assert code == 0, err
    run_dir = tmp_path / "runs" / "x"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = _hold(run_dir)
    try:
        for argv in (["--resume", str(run_dir), "train.epochs=2"],  # resume of a live run
                     ["--resume", str(run_dir / "checkpoints" / "last.pt"), "train.epochs=2"],
                     ["--name", "x"]):  # a new run into a folder being trained
            code, _, err = run_cli(capsys, *_train_args(tmp_path, *argv))
            assert_one_line_error(code, err, f"run folder {run_dir} is in use",
                                  f"(PID {proc.pid})")
    finally:
        proc.kill()
        proc.wait()
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # not a metrics row, not a repaired record
    code, _, err = run_cli(capsys, *_train_args(tmp_path, "--resume", str(run_dir),
                                                "train.epochs=2"))
    assert code == 0, err  # the holder is gone: no stale lock
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_run_that_is_still_in_its_first_epoch_is_not_started_over(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    proc = _hold(run_dir)  # training, no checkpoint yet
    try:
        code, _, err = run_cli(capsys, *_train_args(tmp_path, "--name", "x"))
        assert_one_line_error(code, err, "is in use by another training", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_two_trainings_started_together_one_runs(tmp_path):
    argv = [sys.executable, "-m", "imgcls", *_train_args(tmp_path, "--name", "x", "--epochs",
                                                          "3")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another training (PID" in loser or "already holds a run" in loser
    rows = (tmp_path / "runs" / "x" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]  # each epoch once
    csv_rows = (tmp_path / "runs" / "x" / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 4


@pytest.mark.slow
def test_under_torchrun_rank_0_holds_the_folder(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    run_dir = tmp_path / "runs" / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "imgcls", *_train_args(tmp_path, "--name", "ddp"),
               "--epochs", "30", "--model", "lenet", "--batch-size", "4",
               "train.dist_timeout_min=0.5", "log.tensorboard=false"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # killed with its workers
    try:
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        holder = in_use(run_dir)
        assert holder is not None
        environ = Path(f"/proc/{holder}/environ").read_bytes().split(b"\0")
        assert b"RANK=0" in environ and b"WORLD_SIZE=2" in environ
        second = subprocess.run([sys.executable, "-m", "imgcls", "train", "--resume",
                                 str(run_dir), "train.epochs=31"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by another training (PID {holder})" in second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
