"""The bundled data set: ``--data digits`` (scikit-learn's 8x8 handwritten digits) through every
command, and the run's closing lines that say what to do next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from imgcls import api
from imgcls.cli import main
from imgcls.config import build_config
from imgcls.data import create_datasets, create_eval_dataset
from imgcls.data.digits import Digits
from imgcls.deploy import predict
from imgcls.deploy.export import export_checkpoint
from imgcls.runs.checkpoint import load_checkpoint

TEST_IMAGES = 359  # a fifth of each class, rounded per class (stratified_split)


def _cfg(tmp_path: Path, **overrides: object):
    values = {"data.source": "digits", "model.name": "lenet", "train.epochs": 4,
              "loader.batch_size": 64, "optim.lr": 0.05, "sched.warmup_epochs": 0.0,
              "log.progress": "off", "log.output": str(tmp_path / "runs"),
              "data.root": str(tmp_path / "cache"), "log.name": "digits"}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("digits")
    return api.train(_cfg(tmp)).run_dir


def test_digits_parts_are_fixed_disjoint_and_stratified():
    train, test = Digits("train"), Digits("test")
    assert len(train) + len(test) == 1797 and len(test) == TEST_IMAGES
    image, label = test[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label <= 9
    assert train.data.max() == 255 and train.data.dtype.name == "uint8"
    counts = [test.targets.count(k) for k in range(10)]
    assert min(counts) >= 34 and max(counts) <= 38  # a fifth of each class
    again = Digits("test")
    assert (again.data == test.data).all() and again.targets == test.targets


def test_digits_split_is_seeded_and_recorded(tmp_path):
    cfg = _cfg(tmp_path).data
    a, b = create_datasets(cfg, seed=0), create_datasets(cfg, seed=1)
    assert a.split_record["kind"] == "indices" and a.native_size == 8
    assert len(a.train) + len(a.val) == 1797 - TEST_IMAGES
    assert a.split_record != b.split_record
    assert create_datasets(cfg, 5, split_record=a.split_record).split_record["val"] == \
        a.split_record["val"]
    mean, std = a.mean_std
    assert len(mean) == 3 and 0 < mean[0] < 0.5 and std[0] > 0
    test, classes = create_eval_dataset(cfg, "test", 0)
    assert len(test) == TEST_IMAGES and classes == [str(d) for d in range(10)]


def test_train_on_digits_learns_and_says_what_next(run, capsys):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_acc"] > 0.8, rows[-1]
    summary = api.evaluate_checkpoint(run / "checkpoints" / "best.pt", split="test")
    assert summary["n"] == TEST_IMAGES and summary["top1"] > 0.8
    assert json.loads((run / "split.json").read_text())["source"] == "digits"


def test_cli_main_command_prints_next_steps(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--epochs", "1", "--model", "lenet",
                 "--output", str(tmp_path / "runs"), "--name", "r", "log.progress=off",
                 f"data.root={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 0
    assert "resized from 8x8 to 32x32, greyscale repeated to 3 channels" in err
    run = tmp_path / "runs" / "r"
    best = run / "checkpoints" / "best.pt"
    for line in (f"imgcls evaluate {best}", f"imgcls predict {best}",
                 f"imgcls export {best} --format onnx",
                 f"imgcls train --resume {run} train.epochs=2",
                 f"tensorboard --logdir {run / 'tensorboard'}"):
        assert line in err, line


def test_exported_images_predict_like_evaluate(run, tmp_path, capsys):
    out = tmp_path / "pngs"
    assert main(["datasets", "digits", "--export", str(out)]) == 0
    files = sorted(out.glob("*/*.png"))
    assert len(files) == TEST_IMAGES
    with Image.open(files[0]) as image:
        assert image.size == (8, 8) and image.mode == "L"
    report = predict.predict(run / "checkpoints" / "best.pt", [out], top_k=1, device="cpu")
    right = [Path(r.path).parent.name == r.top[0][0] for r in report.results]
    summary = api.evaluate_checkpoint(run / "checkpoints" / "best.pt", split="test")
    # the same pixels: PNG files through predict's transform, arrays through evaluate's
    assert sum(right) / len(right) == pytest.approx(summary["top1"], abs=0.02)
    assert main(["datasets"]) == 0
    assert "digits" in capsys.readouterr().out


def test_export_and_one_channel_model(run, tmp_path):
    report = export_checkpoint(run / "checkpoints" / "best.pt", fmt="torchscript",
                               output=tmp_path / "m.pt")
    assert report.max_abs_diff < 1e-4
    grey = api.train(_cfg(tmp_path, model__in_channels=1, train__epochs=1, log__name="grey",
                          data__loader="dataloader"))
    assert load_checkpoint(grey.run_dir / "checkpoints" / "last.pt")["in_channels"] == 1
    assert api.evaluate_checkpoint(grey.run_dir / "checkpoints" / "last.pt",
                                   split="test")["n"] == TEST_IMAGES


def test_offline_cifar_error_names_digits(tmp_path, capsys):
    code = main(["train", "--data", "cifar10", f"data.root={tmp_path}", "data.download=false",
                 "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "--data digits" in err and len(err.strip().splitlines()) == 1
