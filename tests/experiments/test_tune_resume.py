"""A killed ``imgcls tune`` loses nothing: the same command finds the trial whose worker is gone
(its run folder's lock is free), resumes it from its ``last.pt``, and ends with --trials
complete trials; a trial with nothing to resume is marked lost and replaced."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _make_image_folder, tune_base

optuna = pytest.importorskip("optuna")


def _tune_argv(data: Path, out: Path, space: Path, trials: int, epochs: int) -> list[str]:
    return ["tune", "--space", str(space), "--trials", str(trials), "--pruner", "none",
            "--data", str(data), "--model", "lenet", "--epochs", str(epochs), "--batch-size",
            "8", "--output", str(out), "log.progress=off", "log.tensorboard=false",
            "sched.warmup_epochs=0", "data.val_fraction=0.25", f"data.root={out.parent / 'c'}"]


def _rows(exp: Path) -> list[dict[str, str]]:
    with (exp / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # two tune processes, one killed mid-trial: about 20-40 s
def test_a_sigkilled_trial_is_resumed_and_the_study_completes(tmp_path):
    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=16, size=16)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {choice: [0.05]}\n")
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "imgcls", *_tune_argv(data, out, space, trials=2, epochs=6)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    metrics = out / "tune-space" / "trial-0000" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # after trial 0's first epoch: nothing gets to tidy up
    first.wait()
    exp = out / "tune-space"
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'study.db'}")
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]  # as the kill left it
    saved = json.loads(metrics.read_text().splitlines()[-1])["epoch"]
    assert saved < 6

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "trial 0: its worker stopped; continuing it in" in again.stderr
    rows = _rows(exp)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "complete"), ("1", "complete")]
    assert all(r["epochs"] == "6" for r in rows)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]  # the saved epochs kept, each row once
    # a third run finds the study full and nothing lost
    third = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and "nothing to run" in third.stderr


def test_a_trial_with_nothing_to_resume_is_lost_and_replaced(tmp_path):
    from imgcls.experiments.tune import tune

    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=16)
    base = tune_base(tmp_path, data, **{"train.epochs": 1})
    space = tmp_path / "s.yaml"
    space.write_text("optim.lr: {choice: [0.05]}\n")
    exp = tmp_path / "runs" / "tune-s"
    exp.mkdir(parents=True)
    study = optuna.create_study(study_name=exp.name, storage=f"sqlite:///{exp / 'study.db'}",
                                direction="maximize")
    # what a worker killed right after naming its trial's folder leaves: RUNNING, empty folder
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = study.ask({"optim.lr": optuna.distributions.CategoricalDistribution([0.05])})
    (exp / "trial-0000").mkdir()
    orphan.set_user_attr("run_dir", str((exp / "trial-0000").resolve()))
    orphan.set_user_attr("worker", f"{os.uname().nodename}:{dead}")
    result = tune(base, space, 1, pruner="none")
    states = [(r.number, r.state) for r in result.rows]
    assert states == [(0, "lost"), (1, "complete")]
    assert "before its run began" in result.rows[0].note
    assert result.best is not None and result.best.number == 1
