"""Messages that tell the truth (issue 29, item 4): a signal after the last save or while a run
resumes names what is on disk; a signal during start-up is one line and exit 130/143, never a
traceback; a loss that is not finite before the first checkpoint says nothing was saved; cv says
when a fold starts over; a checkpoint that cannot be exported is one line, not pages of log."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BlowUpAfter, InterruptDuringEpoch, _make_image_folder, run_cli
from torch import nn

from imgcls import api
from imgcls.cli.messages import interrupted_message
from imgcls.config import build_config, save_yaml
from imgcls.engine.loop import EpochProgress, NonFiniteLoss
from imgcls.engine.trainer import Callback
from imgcls.errors import ImgclsError
from imgcls.experiments.plan import plan_experiment
from imgcls.experiments.status import run_status
from imgcls.runs.checkpoint import load_checkpoint, save_checkpoint
from imgcls.startup import _resumed_run

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
FAST = ["--model", "lenet", "loader.batch_size=16", "sched.warmup_epochs=0", "log.progress=off",
        "log.tensorboard=false"]


def _overrides(data: Path, root: Path, name: str, epochs: int) -> dict:
    return {"data.source": str(data), "model.name": "lenet", "train.epochs": epochs,
            "loader.batch_size": 16, "sched.warmup_epochs": 0.0, "log.output": str(root),
            "log.name": name, "log.progress": "off", "log.tensorboard": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("truthful")
    return _make_image_folder(root / "imgs", classes=("ants", "bees"), per_class=8, size=32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A LeNet run with one epoch saved of train.epochs=1: checkpoints/last.pt and best.pt."""
    root = tmp_path_factory.mktemp("trained")
    return api.train(build_config(overrides=_overrides(data, root / "runs", "run", 1))).run_dir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "runs" / "run"))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _signal_self(sig: int):
    """A stand-in for a function of imgcls.api that first receives ``sig``, as from outside."""

    def wrap(real):
        def signalled(*args, **kwargs):
            os.kill(os.getpid(), sig)
            return real(*args, **kwargs)
        return signalled
    return wrap


# --------------------------------------------------------------------------- 1. what is on disk


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_resuming_names_the_saved_epoch(run, capsys, monkeypatch, sig):
    # the signal arrives while the resumed run loads its data: last.pt is intact
    monkeypatch.setattr(api, "load_data", _signal_self(sig)(api.load_data))
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=3")
    assert code == CODES[sig], err
    last = _lines(err)[-1]
    assert "nothing was saved" not in err and "Traceback" not in err
    assert "while resuming: epoch 1 is saved in " in last, last
    assert f"{run / 'checkpoints' / 'last.pt'} (nothing new since)" in last, last
    assert f"continue with `imgcls train --resume {run}`" in last, last
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


def test_sigterm_after_the_run_finished_says_it_finished(data, tmp_path, capsys, monkeypatch):
    # the signal arrives with the final messages, after the last checkpoint was written
    monkeypatch.setattr(api, "next_steps", _signal_self(signal.SIGTERM)(api.next_steps))
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                           "--output", str(out), "--name", "done")
    assert code == 143, err
    last = _lines(err)[-1]
    assert "nothing was saved" not in err and "Traceback" not in err
    assert last == (f"imgcls: terminated (SIGTERM) after the run had finished: epoch 1 of 1 is "
                    f"saved in {out / 'done' / 'checkpoints' / 'last.pt'}; nothing was lost")
    assert load_checkpoint(out / "done" / "checkpoints" / "last.pt")["epoch"] == 1


def test_interrupted_messages_by_phase(tmp_path):
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    resuming = api.Interrupted("terminated (SIGTERM)", tmp_path / "r", 3, phase="resuming")
    assert interrupted_message(resuming) == (
        f"terminated (SIGTERM) while resuming: epoch 3 is saved in {last} (nothing new since); "
        f"continue with `imgcls train --resume {tmp_path / 'r'}`")
    mid = api.Interrupted("interrupted", tmp_path / "r", 2, EpochProgress(batches=7),
                          phase="resuming")
    assert "while resuming: epoch 3 up to batch 7 is saved" in interrupted_message(mid)
    assert " of ?" not in interrupted_message(mid)  # the epoch's length is not known yet
    done = api.Interrupted("interrupted", tmp_path / "r", 5, phase="finished", epochs=5)
    assert interrupted_message(done) == (
        f"interrupted after the run had finished: epoch 5 of 5 is saved in {last}; "
        "nothing was lost")


# --------------------------------------------------------------------------- 2. start-up


def _start(tmp_path: Path, how: str, *extra: str) -> subprocess.Popen:
    cmd = ([sys.executable, "-m", "imgcls"] if how == "module"
           else [str(Path(sys.executable).parent / "imgcls")])
    return subprocess.Popen(
        [*cmd, "train", "--data", "digits", "--epochs", "1", "--output", str(tmp_path / "runs"),
         f"data.root={tmp_path / 'cache'}", "log.progress=off", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_is_one_line(tmp_path, how, sig):
    delays = (0.1, 0.3, 0.6, 0.9) if sig == signal.SIGINT else (0.1, 0.6)
    for delay in delays:
        proc = _start(tmp_path, how)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        lines = _lines(err)
        where = f"{how}, {signal.Signals(sig).name} after {delay}s: {err[-3000:]}"
        assert proc.returncode == CODES[sig], where
        assert "Traceback" not in err and "terminate called" not in err, where  # pybind11
        assert len(lines) == 1, where
        reason = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
        assert lines[0] == f"imgcls: {reason} during start-up: nothing was saved", where
        assert out == ""


def test_a_signal_during_the_start_up_of_a_resume_says_nothing_new(tmp_path):
    proc = _start(tmp_path, "script", "--resume", "runs/r7")
    time.sleep(0.2)  # still importing torch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _lines(err) == ["imgcls: interrupted during start-up: nothing new was saved "
                           "(runs/r7 is as it was)"]
    assert _resumed_run(["train", "--resume=a b"]) == "a b"
    assert _resumed_run(["train", "--resu", "x"]) == "x"  # as argparse abbreviates
    assert _resumed_run(["train", "--data", "x"]) is None


def test_importing_imgcls_leaves_the_signal_handlers_alone():
    code = ("import signal, imgcls, imgcls.cli, imgcls.entry, imgcls.startup, imgcls.cli.main;"
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler;"
            "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# --------------------------------------------------------------------------- 3. not finite


def test_a_huge_lr_before_the_first_checkpoint_says_nothing_was_saved(tmp_path, capsys):
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--epochs", "2", "--lr", "1e6",
                           "--model", "lenet", "--output", str(out), "--name", "lr",
                           f"data.root={tmp_path / 'cache'}", "log.progress=off",
                           "log.tensorboard=false")
    last = _lines(err)[-1]
    assert code == 2 and last.startswith("imgcls: error: ") and "Traceback" not in err
    assert "non-finite" in last and "in epoch 1" in last, last
    assert "the run stops before its first checkpoint: nothing was saved" in last, last
    assert "keeps its last checkpoint" not in last and "epoch 0" not in last, last
    assert not (out / "lr" / "checkpoints" / "last.pt").exists()


def test_a_loss_that_is_not_finite_later_names_the_checkpoint_kept(data, tmp_path):
    cfg = build_config(overrides=_overrides(data, tmp_path / "runs", "late", 3))
    with pytest.raises(NonFiniteLoss) as caught:
        api.train(cfg, callbacks=[BlowUpAfter(1)])
    failed = int(re.search(r"in epoch (\d+)", str(caught.value)).group(1))
    saved = load_checkpoint(tmp_path / "runs" / "late" / "checkpoints" / "last.pt")["epoch"]
    assert failed > 1 and saved == failed - 1
    assert f"the run stops and keeps its last checkpoint (epoch {saved});" in str(caught.value)


# --------------------------------------------------------------------------- 4. cv


def _experiment(data: Path, root: Path):
    cfg = build_config(overrides={**_overrides(data, root, "exp", 3), "train.epochs": 3})
    return cfg, plan_experiment("cv", 2, api.train_config(cfg)[0])


def test_a_fold_killed_in_its_first_epoch_starts_over(data, tmp_path):
    cfg, experiment = _experiment(data, tmp_path / "runs")
    member = experiment.members[0]
    folder = experiment.run_dir(member)
    folder.mkdir(parents=True)
    save_yaml(experiment.member_config(cfg, member), folder / "config.yaml")  # no checkpoint
    status = run_status(experiment, member)
    assert status.state == "unfinished" and not status.saved
    assert status.describe() == "fold-0 (stopped before its first checkpoint)"
    assert status.next_step() == ("starting fold-0 over (it stopped before its first "
                                  "checkpoint)")
    assert "?" not in status.describe() and "epoch 0" not in status.describe()


def test_a_fold_with_a_checkpoint_continues_from_it(data, tmp_path):
    cfg, experiment = _experiment(data, tmp_path / "runs")
    member = experiment.members[1]
    fold_cfg = experiment.member_config(cfg, member)
    with pytest.raises(KeyboardInterrupt):
        api.train(fold_cfg, callbacks=[InterruptDuringEpoch(1)])
    status = run_status(experiment, member)
    assert status.describe() == "fold-1 (epoch 1 of 3 saved)"
    assert status.next_step() == "continuing fold-1 (epoch 1 of 3 saved)"
    # a mid-epoch checkpoint says how far into the next epoch it is
    last = experiment.run_dir(member) / "checkpoints" / "last.pt"
    record = load_checkpoint(last)
    save_checkpoint({**{k: v for k, v in record.items() if k not in ("format", "version")},
                     "progress": EpochProgress(batches=1).state_dict()}, last)
    assert run_status(experiment, member).describe() == (
        "fold-1 (epoch 1 of 3 saved, and epoch 2 up to batch 1)")


def test_cv_says_a_fold_starts_over(data, tmp_path, capsys, monkeypatch):
    argv = ["cv", "--folds", "2", "--only", "0", "--data", str(data), "--epochs", "1", *FAST,
            "--output", str(tmp_path / "runs"), "--name", "exp"]

    class StopAtFirstBatch(Callback):
        def on_first_batch(self, trainer, images, labels):
            raise KeyboardInterrupt

    real = api.train

    def train(cfg=None, **kw):
        kw["callbacks"] = [*kw.get("callbacks", ()), StopAtFirstBatch()]
        return real(cfg, **kw)

    monkeypatch.setattr(api, "train", train)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130, err
    fold = tmp_path / "runs" / "exp" / "fold-0"
    assert (fold / "config.yaml").exists() and not (fold / "checkpoints" / "last.pt").exists()
    monkeypatch.setattr(api, "train", real)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert ("cv fold-0 (1 of 2): starting fold-0 over (it stopped before its first checkpoint)"
            in err), err
    assert "of ?" not in err and "epoch 0" not in err


# --------------------------------------------------------------------------- 5. export


def test_export_of_a_checkpoint_that_does_not_run_is_one_line(run):
    record = load_checkpoint(run / "checkpoints" / "best.pt")
    bad = run / "bad.pt"  # weights for 32 x 32 images, an input size they cannot take
    save_checkpoint({**{k: v for k, v in record.items() if k not in ("format", "version")},
                     "input_size": 100}, bad)
    done = subprocess.run([sys.executable, "-m", "imgcls", "export", str(bad),
                           "--format", "onnx"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = _lines(done.stderr)
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("imgcls: error: "), done.stderr[-3000:]
    assert "bad.pt" in lines[0], lines[0]
    assert "\x1b[" not in lines[0] and done.stdout == ""
    assert not (run / "bad.onnx").exists()


class _NotExportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # runs eagerly; neither ONNX exporter has this operator
        return torch.linalg.eigvals(x[:, 0, :4, :4]).real[:, :2]


def test_an_exporter_failure_is_one_line_and_prints_nothing(tmp_path, capfd):
    from imgcls.deploy import export

    spec = export._input_spec(3, 8, False)
    with pytest.raises(ImgclsError) as caught:
        export._export_onnx(_NotExportable().eval(), torch.randn(2, 3, 8, 8), spec,
                            tmp_path / "m.onnx")
    message = str(caught.value)
    assert "\n" not in message and "\x1b[" not in message
    assert message.startswith("cannot export to ONNX: the dynamo exporter failed (")
    assert "eigvals" in message or "linalg_eig" in message
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out[-2000:], err[-2000:])
