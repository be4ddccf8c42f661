"""Three-way splits (data.test_fraction), the tutorials' test-set validation (data.val_split)
and a folder's own normalisation statistics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import _make_list_file
from PIL import Image

from imgcls import api
from imgcls.cli import main
from imgcls.config import build_config
from imgcls.data import create_datasets, create_eval_dataset
from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import load_checkpoint

FAST = {"model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.02,
        "sched.warmup_epochs": 0.0, "log.progress": "off", "train.epochs": 1}


def _data_cfg(source: Path | str, **extra: object):
    return build_config(overrides={"data.source": str(source), **extra}).data


def _cfg(tmp_path: Path, source: Path | str, **extra: object):
    return build_config(overrides={**FAST, "data.source": str(source),
                                   "log.output": str(tmp_path / "runs"),
                                   "data.root": str(tmp_path / "cache"), **extra})


def _labels(dataset) -> Counter:
    return Counter(y for _, y in dataset.samples)


def test_six_two_two_from_one_folder(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, size=32)
    cfg = _data_cfg(data, **{"data.val_fraction": 0.2, "data.test_fraction": 0.2})
    split = create_datasets(cfg, seed=3)
    assert _labels(split.train) == {0: 6, 1: 6, 2: 6}
    assert _labels(split.val) == {0: 2, 1: 2, 2: 2} and _labels(split.test) == {0: 2, 1: 2, 2: 2}
    record = split.split_record
    parts = [set(record[p]) for p in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 30 and not (parts[0] & parts[1] or parts[0] & parts[2]
                                                    or parts[1] & parts[2])
    assert create_datasets(cfg, seed=3).split_record == record  # seeded
    assert create_datasets(cfg, seed=4).split_record["test"] != record["test"]
    test, classes = create_eval_dataset(cfg, "test", 3, record)
    assert sorted(str(Path(p).relative_to(data)) for p, _ in test.samples) == sorted(
        record["test"])


def test_test_part_through_train_resume_and_evaluate(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=10, size=32)
    run = api.train(_cfg(tmp_path, data, **{"data.val_fraction": 0.2,
                                           "data.test_fraction": 0.2, "log.name": "t"})).run_dir
    record = json.loads((run / "split.json").read_text())
    assert len(record["test"]) == 4 and record["test_fraction"] == 0.2
    assert main(["evaluate", str(run / "checkpoints" / "last.pt"), "--split", "test",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    api.train(resume=run, overrides={"train.epochs": 2})
    assert json.loads((run / "split.json").read_text()) == record


def test_list_file_test_fraction(tmp_path):
    listed = _make_list_file(tmp_path / "l", classes=("x", "y"), per_class=10)
    cfg = _data_cfg(listed, **{"data.test_fraction": 0.3, "data.val_fraction": 0.0})
    split = create_datasets(cfg, 0)
    assert split.val is None and len(split.test) == 6 and len(split.train) == 14


@pytest.mark.parametrize("extra,needle", [
    ({"data.test_fraction": 0.2, "data.val_fraction": 0.2}, "leaves class"),
])
def test_a_fraction_that_empties_a_class_is_refused(tmp_path, make_image_folder, extra, needle):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2, size=32)
    with pytest.raises(ImgclsError, match=needle) as info:
        create_datasets(_data_cfg(data, **extra), 0)
    assert "'a'" in str(info.value) or "'b'" in str(info.value)


def test_test_fraction_where_a_test_split_exists(tmp_path, make_image_folder, capsys):
    layered = make_image_folder(tmp_path / "tv", per_class=4, layout="train_val_test", size=32)
    with pytest.raises(ImgclsError, match="already split into train/"):
        create_datasets(_data_cfg(layered, **{"data.test_fraction": 0.2}), 0)
    with pytest.raises(ImgclsError, match="digits has its own test split"):
        create_datasets(_data_cfg("digits", **{"data.test_fraction": 0.2}), 0)
    with pytest.raises(ImgclsError, match="leaves no training images"):
        build_config(overrides={"data.val_fraction": 0.5, "data.test_fraction": 0.5})


def test_val_split_test_validates_on_the_test_split(tmp_path, capsys):
    result = api.train(_cfg(tmp_path, "digits", **{"data.val_split": "test",
                                                  "log.name": "tutorial"}))
    err = capsys.readouterr().err
    assert "warning: data.val_split=test" in err and "1438 train / 359 val images" in err
    summary = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    test = api.evaluate_checkpoint(result.run_dir / "checkpoints" / "last.pt", split="test")
    assert summary["n"] == test["n"] == 359 and summary["top1"] == test["top1"]
    rows = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["val_acc"] == test["top1"]


def test_val_split_on_folders(tmp_path, make_image_folder):
    layered = make_image_folder(tmp_path / "tv", per_class=5, layout="train_val_test", size=32)
    on_test = create_datasets(_data_cfg(layered, **{"data.val_split": "test"}), 0)
    assert all("/test/" in p for p, _ in on_test.val.samples)
    assert len(on_test.train) == 10  # train/ only: val/ is not trained on
    none = create_datasets(_data_cfg(layered, **{"data.val_split": "none"}), 0)
    assert none.val is None and len(none.train) == 10
    flat = make_image_folder(tmp_path / "flat", per_class=5, size=32)
    assert create_datasets(_data_cfg(flat, **{"data.val_split": "none"}), 0).val is None
    with pytest.raises(ImgclsError, match="no test split"):
        create_datasets(_data_cfg(flat, **{"data.val_split": "test"}), 0)


def test_folder_statistics_are_computed_printed_and_saved(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=32,
                             learnable=False)
    run = api.train(_cfg(tmp_path, data, **{"log.name": "stats"})).run_dir
    err = capsys.readouterr().err
    assert "normalising with the training images' own mean" in err
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    keys = json.loads((run / "split.json").read_text())["train"]
    pixels = np.stack([np.asarray(Image.open(data / k).convert("RGB"), dtype=np.float64) / 255
                       for k in keys])
    assert ckpt["mean"] == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-6)
    assert ckpt["std"] == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-6)
    assert ckpt["mean"] != pytest.approx([0.485, 0.456, 0.406], abs=1e-3)  # not ImageNet's
