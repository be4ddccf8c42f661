"""Checkpoints that do not fit are refused in one line, not half-used: a record that contradicts
itself (classes twice, a std of 0, an input size its model cannot take), a run folder whose
last.pt is of another model, and the temporary file a kill during the first save leaves."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import _make_image_folder, assert_one_line_error, run_cli

from imgcls import api
from imgcls.config import build_config, save_yaml
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import FORMAT, load_checkpoint
from imgcls.runs.folder import check_run_folder
from imgcls.runs.record import CheckpointRecord

FAST = {
    "loader.batch_size": 16, "optim.lr": 0.02, "train.epochs": 1, "sched.warmup_epochs": 0.0,
    "log.progress": "off", "log.tensorboard": False,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished one-epoch runs on the same 32x32 images: lenet (a fixed-size Linear after
    its convolutions: it takes 32x32 only) and cifar10_net."""
    root = tmp_path_factory.mktemp("fit")
    data = _make_image_folder(root / "imgs", classes=("a", "b", "c"), per_class=8, size=32)
    out = {"data": data}
    for model in ("lenet", "cifar10_net"):
        cfg = build_config(overrides={**FAST, "model.name": model, "data.source": str(data),
                                      "log.output": str(root / "runs"), "log.name": model})
        out[model] = api.train(cfg).run_dir
    return out


def _copy_run(runs: dict[str, Path], tmp_path: Path, model: str = "lenet") -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs[model], run, ignore=shutil.ignore_patterns(".lock"))
    return run


def _edit(src: Path, dst: Path, **fields: object) -> Path:
    """``src`` read as a plain dict (weights_only), ``fields`` replaced, saved to ``dst`` with
    its format marker: a checkpoint edited by hand."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT
    payload.update(fields)
    torch.save(payload, dst)
    return dst


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


# --------------------------------------------------------------------------- the record itself


@pytest.mark.parametrize("std, needle", [
    ([0.0, 0.0, 0.0], "std[0] is 0.0"),
    ([0.25, -0.25, 0.25], "std[1] is -0.25"),
    ([0.25, 0.25, math.nan], "std[2] is nan"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_std_that_is_not_positive_is_refused(runs, tmp_path, capsys, std, needle, command):
    run = _copy_run(runs, tmp_path)
    best = run / "checkpoints" / "best.pt"
    _edit(best, best, mean=[0.5, 0.5, 0.5], std=std)
    image = next((runs["data"] / "a").iterdir())
    argv = [command, str(best), str(image)] if command == "predict" else [command, str(best)]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, str(best), needle, "> 0")
    assert out == "" and not (run / "eval").exists()


def test_duplicate_class_names_are_refused(runs, tmp_path, capsys):
    bad = _edit(runs["lenet"] / "checkpoints" / "best.pt", tmp_path / "dup.pt",
                classes=["a", "b", "a"])
    image = next((runs["data"] / "a").iterdir())
    code, _, err = run_cli(capsys, "predict", str(bad), str(image))
    assert_one_line_error(code, err, str(bad), "names class 'a' twice")
    with pytest.raises(ImgclsError, match="names class 'a' twice") as info:
        CheckpointRecord.load(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fields, needle", [
    ({"classes": []}, "has no classes"),
    ({"input_size": 0}, "input_size must be a positive whole number, got 0"),
    ({"input_size": 32.5}, "input_size must be a positive whole number, got 32.5"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "mean [0.5, 0.5] does not fit 3-channel"),
    ({"mean": [0.5, math.inf, 0.5], "std": [0.2] * 3}, "mean[1] is inf"),
    ({"in_channels": 1}, "records in_channels=1 but its config says model.in_channels=3"),
])
def test_a_record_that_contradicts_itself_is_one_line(runs, tmp_path, fields, needle):
    bad = _edit(runs["lenet"] / "checkpoints" / "best.pt", tmp_path / "bad.pt", **fields)
    with pytest.raises(ImgclsError) as info:
        CheckpointRecord.load(bad)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_good_record_passes_its_checks(runs):
    best = runs["lenet"] / "checkpoints" / "best.pt"
    record = CheckpointRecord.load(best)
    record.check(best)
    assert record.classes == ["a", "b", "c"] and record.input_size == 32


# --------------------------------------------------------------------------- the model on it


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_input_size_the_model_cannot_take_is_refused(runs, tmp_path, capsys, command):
    run = _copy_run(runs, tmp_path)
    best = run / "checkpoints" / "best.pt"
    _edit(best, best, input_size=64)  # lenet's Linear takes the 32x32 feature map only
    image = next((runs["data"] / "a").iterdir())
    argv = [command, str(best), str(image)] if command == "predict" else [command, str(best)]
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, f"checkpoint {best}: the model does not run on its "
                          "recorded input size 1x3x64x64 (", "it was not trained at that size")
    assert out == "" and not (run / "eval").exists()


def test_a_resume_whose_model_cannot_take_its_input_size_is_refused(runs, tmp_path, capsys):
    run = _copy_run(runs, tmp_path)
    last = run / "checkpoints" / "last.pt"
    _edit(last, last, input_size=64)
    before = _snapshot(run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert_one_line_error(code, err, str(last), "recorded input size 1x3x64x64")
    assert _snapshot(run) == before


def test_the_dummy_batch_checks_the_columns_and_keeps_module_modes():
    record = CheckpointRecord(model={}, config=build_config().to_dict(), classes=["x", "y"],
                              input_size=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5),
                                torch.nn.BatchNorm1d(5))
    model.train()
    model[2].eval()  # a frozen BatchNorm stays frozen
    with pytest.raises(ImgclsError, match=r"gives output \(1, 5\) for one 1x3x4x4 image, not "
                                          "one score for each of its 2 classes"):
        record.check_model(model, "m.pt")
    assert model.training and model[1].training and not model[2].training
    fits = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    record.check_model(fits, "m.pt")
    assert fits.training


# --------------------------------------------------------------------------- the run folder


def test_another_models_last_pt_in_a_run_folder_is_refused(runs, tmp_path, capsys):
    run = _copy_run(runs, tmp_path)
    shutil.copy(runs["cifar10_net"] / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert_one_line_error(code, err, str(run / "config.yaml"), str(run / "checkpoints" /
                          "last.pt"), "model.name is 'lenet' in config.yaml and 'cifar10_net' "
                          "in last.pt")
    assert _snapshot(run) == before
    # without config.yaml, best.pt (of the run's own model) still tells
    (run / "config.yaml").unlink()
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert_one_line_error(code, err, str(run / "checkpoints" / "best.pt"),
                          "model.name is 'lenet' in best.pt and 'cifar10_net' in last.pt")
    assert not (run / "config.yaml").exists()


def test_a_last_pt_of_other_classes_is_refused_by_split_json(runs, tmp_path, capsys):
    run = _copy_run(runs, tmp_path)
    last = run / "checkpoints" / "last.pt"
    _edit(last, last, classes=["x", "y", "z"])
    before = _snapshot(run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert_one_line_error(code, err, str(run / "split.json"), str(last), "different classes")
    assert _snapshot(run) == before


def test_a_different_architecture_key_is_named(runs, tmp_path, capsys):
    run = _copy_run(runs, tmp_path)
    last = run / "checkpoints" / "last.pt"
    config = load_checkpoint(last)["config"]
    config["model"]["kwargs"] = {"width": 2}
    _edit(last, last, config=config)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert_one_line_error(code, err, "model.kwargs is {} in config.yaml and {'width': 2} in "
                          "last.pt")


def test_a_user_models_file_moved_by_model_code_is_no_mismatch(tmp_path):
    # --model-code NEW/net.py:Net on resume: config.yaml names the new path before last.pt does
    def record(name: str) -> CheckpointRecord:
        config = build_config(overrides={"model.name": name}).to_dict()
        return CheckpointRecord(model={}, config=config, classes=["x", "y"], input_size=8)

    save_yaml(build_config(overrides={"model.name": "/new/net.py:Net"}), tmp_path / "config.yaml")
    check_run_folder(tmp_path, tmp_path / "last.pt", record("/old/net.py:Net"))
    with pytest.raises(ImgclsError, match="model.name is '/new/net.py:Net' in config.yaml and "
                                          "'/old/net.py:Other' in last.pt"):
        check_run_folder(tmp_path, tmp_path / "last.pt", record("/old/net.py:Other"))


def test_the_run_folders_own_files_resume(runs, tmp_path):
    run = _copy_run(runs, tmp_path)
    result = api.train(resume=run, overrides={"train.epochs": 2})
    assert result.epochs == 2 and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


# --------------------------------------------------------------------------- temporary files

DIGITS = ["--data", "digits", "--epochs", "1", "model.name=lenet", "log.progress=off",
          "log.tensorboard=false"]


def test_starting_over_removes_a_killed_saves_temporary_file(tmp_path, capsys):
    run = tmp_path / "runs" / "first"
    (run / "checkpoints").mkdir(parents=True)
    cfg = build_config(overrides={"data.source": "digits", "train.epochs": 1,
                                  "model.name": "lenet", "log.progress": "off",
                                  "log.tensorboard": False, "log.output": str(run.parent),
                                  "log.name": run.name})
    save_yaml(cfg, run / "config.yaml")
    leftovers = [run / "checkpoints" / ".last.pt.abcd.tmp", run / "checkpoints" / ".best.pt.x1.tmp"]
    for tmp in leftovers:
        tmp.write_bytes(b"PK\x03\x04half a checkpoint")
    foreign = run / "checkpoints" / ".best.onnx.k2.tmp"  # an export's, not a training's
    foreign.write_bytes(b"")
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 0, err
    assert "starting it over" in err
    assert not any(tmp.exists() for tmp in leftovers)
    assert foreign.exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_new_run_named_into_an_unsaved_folder_removes_them_too(tmp_path, capsys):
    run = tmp_path / "runs" / "named"
    (run / "checkpoints").mkdir(parents=True)
    leftover = run / "checkpoints" / ".last.pt.zz9.tmp"
    leftover.write_bytes(b"half")
    code, _, err = run_cli(capsys, "train", *DIGITS, "--output", str(run.parent), "--name",
                           run.name)
    assert code == 0, err
    assert not leftover.exists() and (run / "checkpoints" / "last.pt").is_file()


KILL_AT_FIRST_SAVE = """
import os, signal, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("last.pt"):  # the temporary file is whole, the rename never comes
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigkill_during_the_first_mid_epoch_save_leaves_nothing_after_the_restart(
        tmp_path, capsys):
    run = tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_AT_FIRST_SAVE), "train", *DIGITS,
         "--output", str(run.parent), "--name", run.name, "train.checkpoint_every_steps=2"],
        capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    leftovers = list((run / "checkpoints").glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 0, err
    assert "starting it over" in err
    assert not list(run.rglob("*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
