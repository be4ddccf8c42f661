"""The command line as a user runs it: help, models, train/evaluate, and every bad input
answered with one line and exit code 2 (no traceback, nothing already written damaged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from imgcls.cli import main

FAST = ["--model", "lenet", "--batch-size", "16", "sched.warmup_epochs=0", "log.progress=off"]






@pytest.fixture
def trained(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("ants", "bees"), per_class=10)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                        "--output", str(tmp_path / "runs"), "--name", "r1")
    assert code == 0, err
    return data, tmp_path / "runs" / "r1"


# ---------------------------------------------------------------- help, models, happy paths


def test_help_explains_commands_and_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--data", "--batch-size", "--resume", "KEY=VALUE", "optim.lr",
                   "transforms.crop_padding", "log.graph"):
        assert needle in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "evaluate" in capsys.readouterr().out


def test_models_lists_seed_models_with_exact_counts(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["lenet"][2:] == ["32", "62,006"]
    assert rows["simple_v3"][2:] == ["32", "419,690"]
    assert rows["cifar10_net"][2:] == ["32", "145,578"]
    assert rows["vgg16"][1] == "torchvision" and rows["vgg16"][2] == "224"
    assert "resnet18" in rows


def test_train_then_evaluate_json(trained, capsys):
    _, run = trained
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    code, out, err = run_cli(capsys, "evaluate", str(run / "checkpoints" / "best.pt"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert {"top1", "top5", "loss", "n", "per_class"} <= summary.keys()
    assert summary["top1"] == metrics[0]["val_acc"]
    assert "done: best val_acc" not in out  # the console summary goes to stderr, not the JSON


def test_evaluate_test_split_of_a_train_test_folder(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", layout="train_val_test", per_class=6)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                        "--output", str(tmp_path / "runs"), "--name", "r")
    assert code == 0, err
    ckpt = tmp_path / "runs" / "r" / "checkpoints" / "best.pt"
    code, out, err = run_cli(capsys, "evaluate", str(ckpt), "--split", "test", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 12


def test_config_file_then_flags_then_key_values(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=6)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 0.3, momentum: 0.5}\ntrain: {epochs: 5}\n")
    code, _, err = run_cli(capsys, "train", "--config", str(recipe), "--data", str(data), *FAST,
                        "--epochs", "1", "optim.momentum=0.8", "--output", str(tmp_path / "o"),
                        "--name", "n")
    assert code == 0, err
    import yaml
    saved = yaml.safe_load((tmp_path / "o" / "n" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.3 and saved["optim"]["momentum"] == 0.8
    assert saved["train"]["epochs"] == 1


def test_skip_bad_images_counts_them(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=8)
    (data / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                        "--output", str(tmp_path / "o"), "data.skip_bad_images=true")
    assert code == 0, err
    assert "skipped 1 unreadable image" in err and "broken.jpg" in err


def test_console_script_and_module_entry_points(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for cmd in ([sys.executable, "-m", "imgcls"], [str(Path(sys.executable).parent / "imgcls")]):
        proc = subprocess.run([*cmd, "train", "--data", str(tmp_path / "missing")],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0
        assert "missing" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["optim.momentun=0.9"], ["optim.momentun"]),
        (["optim.lr=fast"], ["optim.lr", "fast"]),
        (["--lr", "-1"], ["optim.lr"]),
        (["data.val_fraction=1.5"], ["data.val_fraction"]),
        (["sched.name=sometimes"], ["sched.name"]),
        (["transforms.crop_padding=[1,2,3]"], ["transforms.crop_padding"]),
        (["--model", "resnet19"], ["resnet19", "resnet18"]),
        (["oops"], ["KEY=VALUE"]),
    ],
)
def test_bad_config_is_refused_before_anything_is_written(tmp_path, make_image_folder, capsys,
                                                          args, needles):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    out_dir = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--output", str(out_dir), *args)
    assert_one_line_error(code, err, *needles)
    assert not out_dir.exists()


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert_one_line_error(code, err, str(bad))
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert_one_line_error(code, err, "none.yaml")


def test_missing_empty_and_classless_data(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "nowhere")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "empty"))
    assert_one_line_error(code, err, "empty")
    (tmp_path / "classes" / "cats").mkdir(parents=True)
    (tmp_path / "classes" / "dogs").mkdir(parents=True)
    Path(tmp_path / "classes" / "dogs" / "notes.txt").write_text("no images here")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "classes"))
    assert_one_line_error(code, err, "cats")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named(tmp_path, make_image_folder, capsys, workers):
    data = make_image_folder(tmp_path / "imgs", per_class=8)
    (data / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", *FAST,
                        "--output", str(tmp_path / "o"), f"loader.num_workers={workers}",
                        "data.val_fraction=0.3")
    err_lines = [ln for ln in err.splitlines() if ln.startswith("imgcls: error")]
    assert code == 2 and len(err_lines) == 1, err
    assert "broken.png" in err_lines[0] and "Traceback" not in err


def test_output_folder_that_cannot_be_written(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=4)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", "--data", str(data), *FAST,
                        "--output", str(blocker / "runs"))
    assert_one_line_error(code, err, "a_file")


def test_existing_run_name_is_not_overwritten(trained, capsys):
    data, run = trained
    before = (run / "checkpoints" / "last.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--data", str(data), *FAST,
                        "--output", str(run.parent), "--name", run.name)
    assert_one_line_error(code, err, "--resume")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_files_that_are_not_checkpoints(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    code, _, err = run_cli(capsys, "evaluate", str(text))
    assert_one_line_error(code, err, "notes.pt", "not an imgcls checkpoint")
    plain = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    code, _, err = run_cli(capsys, "evaluate", str(plain))
    assert_one_line_error(code, err, "state.pt")
    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # the seeds' torch.save(model)
    code, _, err = run_cli(capsys, "evaluate", str(pickled))
    assert_one_line_error(code, err, "model.pth", "refuses")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "absent.pt"))
    assert_one_line_error(code, err, "absent.pt")


def test_checkpoint_that_does_not_fit(trained, tmp_path, make_image_folder, capsys):
    data, run = trained
    # resume with another architecture
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "model.name=cifar10_net",
                        "train.epochs=2")
    assert_one_line_error(code, err, "does not fit")
    # evaluate on data with another class count
    other = make_image_folder(tmp_path / "other", classes=("a", "b", "c"), per_class=4,
                              layout="train_val_test")
    code, _, err = run_cli(capsys, "evaluate", str(run / "checkpoints" / "best.pt"),
                        "--data", str(other), "--split", "test")
    assert_one_line_error(code, err, "classes")
    assert (run / "checkpoints" / "best.pt").is_file()
