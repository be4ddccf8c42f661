"""Several labels per image, end to end: a label CSV trains, evaluates and predicts with the
multi-label loss, metrics and per-class thresholds, and resumes exactly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error, assert_same_weights, interrupt_and_resume, run_cli
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from imgcls import api
from imgcls.config import build_config
from imgcls.runs.record import CheckpointRecord

FAST = {
    "model.name": "lenet",
    "loader.batch_size": 16,
    "optim.lr": 0.1,
    "sched.warmup_epochs": 0.0,
    "data.val_fraction": 0.25,
    "log.progress": "off",
    "log.tensorboard": False,
}


def _cfg(tmp_path: Path, source: Path, **overrides: object):
    values = {**FAST, "data.source": str(source), "log.output": str(tmp_path / "runs"),
              "data.root": str(tmp_path / "cache")}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(overrides=values)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _csv_labels(csv_file: Path) -> dict[str, set[str]]:
    with csv_file.open(newline="", encoding="utf-8") as handle:
        return {row["path"]: set(row["tags"].replace(";", " ").split())
                for row in csv.DictReader(handle)}


def test_a_label_csv_trains_evaluates_and_predicts_with_its_thresholds(
        tmp_path, capsys, make_label_csv):
    data = make_label_csv(tmp_path / "d", n=64)
    # fp32, as predict scores: its probabilities are evaluate's
    result = api.train(_cfg(tmp_path, data, train__epochs=8, log__name="ml", train__amp="off"))
    run = result.run_dir
    rows = _rows(run)
    assert {"val_map", "val_micro_f1", "val_hamming_loss"} <= rows[-1].keys()
    assert "val_top5" not in rows[-1] and "val_balanced_acc" not in rows[-1]
    assert rows[-1]["val_map"] > 0.85 and rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    record = CheckpointRecord.load(run / "checkpoints" / "best.pt")
    assert record.multilabel and record.monitor == "val_map"
    assert record.thresholds is not None and len(record.thresholds) == 3
    assert all(0 < t <= 1 for t in record.thresholds)

    code, out, err = run_cli(capsys, "evaluate", str(run / "checkpoints" / "best.pt"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    val = json.loads((run / "split.json").read_text())["val"]
    code, out, err = run_cli(capsys, "predict", str(run / "checkpoints" / "best.pt"),
                             *(str(data.parent / key) for key in val), "--top-k", "3", "--json")
    assert code == 0, err
    predicted = json.loads(out)
    classes = predicted["classes"]
    assert predicted["thresholds"] == pytest.approx(record.thresholds)
    probs = np.array([[dict((t["class"], t["prob"]) for t in p["top"])[c] for c in classes]
                      for p in predicted["predictions"]])
    truth = _csv_labels(data)
    y = np.array([[c in truth[key] for c in classes] for key in val], dtype=int)
    chosen = probs >= np.array(record.thresholds)
    # predict's labels are the classes at or above their thresholds
    for p, row in zip(predicted["predictions"], chosen, strict=True):
        assert {t["class"] for t in p["labels"]} == {c for c, on in zip(classes, row,
                                                                         strict=True) if on}
    # evaluate's numbers are scikit-learn's on the same probabilities and thresholds
    assert summary["n"] == len(val) and summary["multilabel"] is True
    assert summary["map"] == pytest.approx(average_precision_score(y, probs, average="macro"),
                                           abs=1e-5)
    assert summary["micro_f1"] == pytest.approx(f1_score(y, chosen, average="micro"), abs=1e-6)
    assert summary["macro_f1"] == pytest.approx(
        f1_score(y, chosen, average="macro", zero_division=0), abs=1e-6)
    assert summary["subset_accuracy"] == pytest.approx(accuracy_score(y, chosen), abs=1e-6)
    assert summary["hamming_loss"] == pytest.approx(hamming_loss(y, chosen), abs=1e-6)
    # the run's own validation scored the same images at the same thresholds
    best = next(r for r in rows if r["epoch"] == record.epoch)
    assert best["val_map"] == pytest.approx(summary["map"], abs=1e-5)
    assert best["val_micro_f1"] == pytest.approx(summary["micro_f1"], abs=1e-6)

    # --threshold overrides every class's; the table shows each image's labels
    code, out, err = run_cli(capsys, "evaluate", str(run / "checkpoints" / "best.pt"),
                             "--threshold", "0.99", "--json")
    strict = json.loads(out)
    assert strict["threshold"] == "override"
    assert all(c["threshold"] == 0.99 for c in strict["per_class"].values())
    assert strict["predicted_cardinality"] <= summary["predicted_cardinality"]
    code, out, err = run_cli(capsys, "predict", str(run / "checkpoints" / "best.pt"),
                             str(data.parent / val[0]))
    assert code == 0 and out.splitlines()[0].split()[:2] == ["path", "labels"]
    code, out, err = run_cli(capsys, "predict", str(run / "checkpoints" / "best.pt"),
                             str(data.parent / val[0]), "--min-confidence", "0.5")
    assert code == 2 and "--threshold" in err and len(err.strip().splitlines()) == 1

    # the exported ONNX file gives each class's probability; its sidecar's thresholds the labels
    import onnxruntime

    from imgcls.deploy.export import export_checkpoint
    from imgcls.deploy.load import load_model
    from imgcls.deploy.scoring import prepare_image

    report = export_checkpoint(run / "checkpoints" / "best.pt", fmt="onnx",
                               output=tmp_path / "ml.onnx")
    side = json.loads(report.sidecar.read_text())
    assert side["multilabel"] and side["output_name"] == "probabilities"
    assert side["thresholds"] == pytest.approx(record.thresholds)
    transform = load_model(run / "checkpoints" / "best.pt").eval_transform(native_size=None)
    images = np.stack([prepare_image(str(data.parent / key), transform).numpy() for key in val])
    session = onnxruntime.InferenceSession(str(report.path))
    onnx_probs = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-5)
    assert ((onnx_probs >= np.array(side["thresholds"])) == chosen).all()


def test_a_resumed_multilabel_run_is_bit_identical(tmp_path, make_label_csv):
    data = make_label_csv(tmp_path / "d", n=40, layout="columns")
    common = {"train__epochs": 4, "train__deterministic": True}
    whole = api.train(_cfg(tmp_path, data, log__name="whole", **common))
    run = interrupt_and_resume(_cfg(tmp_path, data, log__name="split", **common), 2).run_dir
    assert_same_weights(whole.run_dir, run)
    assert _rows(run)[-1]["val_map"] == _rows(whole.run_dir)[-1]["val_map"]
    a = CheckpointRecord.load(whole.run_dir / "checkpoints" / "last.pt")
    b = CheckpointRecord.load(run / "checkpoints" / "last.pt")
    assert a.thresholds == b.thresholds


@pytest.mark.parametrize(("extra", "loader"), [
    ({"optim__loss": "asl", "optim__class_weights": "auto", "transforms__mixup": 0.2}, "memory"),
    ({"data__loader": "dataloader", "optim__class_weights": "auto", "train__ema": 0.9},
     "dataloader"),
    # photos: decoded once into the photo cache, cropped in batches; a mid-epoch checkpoint
    ({"model__name": "resnet20", "transforms__image_size": 96,
      "train__checkpoint_every_steps": 1}, "photos"),
])
def test_the_asymmetric_loss_class_weights_mixup_and_every_loader(tmp_path, make_label_csv,
                                                                  extra, loader):
    data = make_label_csv(tmp_path / "d", n=40, size=112 if loader == "photos" else 16)
    run = api.train(_cfg(tmp_path, data, train__epochs=2, log__name="x", **extra)).run_dir
    rows = _rows(run)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_map"]) for r in rows)
    saved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert saved["data.loader"] == ("memory" if loader == "photos" else loader)
    assert bool(list((tmp_path / "cache").glob(".imgcls-cache/photos-*"))) == (loader == "photos")


@pytest.mark.parametrize(("setting", "needle"), [
    ("optim.label_smoothing=0.1", "optim.label_smoothing=0.1 is for optim.loss=cross_entropy"),
    ("optim.loss=cross_entropy", "several labels per image; use optim.loss=bce or asl"),
    ("loader.sampler=balanced", "loader.sampler=balanced draws images by their one class"),
    ("train.monitor=val_top5", "train.monitor=val_top5 is not measured on data with several"),
])
def test_settings_that_need_one_label_per_image_are_refused(tmp_path, capsys, make_label_csv,
                                                            setting, needle):
    data = make_label_csv(tmp_path / "d", n=24)
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet",
                           "--output", str(out), "--name", "bad", "log.progress=off", setting)
    assert_one_line_error(code, err, needle)
    assert not (out / "bad" / "checkpoints").exists()


def test_a_class_without_images_and_a_missing_image_name_the_line(tmp_path, capsys,
                                                                  make_label_csv):
    data = make_label_csv(tmp_path / "d", n=24, layout="columns")
    lines = data.read_text().splitlines()
    header, body = lines[0] + ",rare", [line + ",0" for line in lines[1:]]
    data.write_text("\n".join([header, *body]) + "\n")  # a class column of zeros
    out = tmp_path / "runs"
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet", "--output",
                           str(out), "--name", "rare", "log.progress=off")
    assert_one_line_error(code, err, f"{data}:1: class 'rare' has no image")
    body = [line[:-2] for line in body]
    body[3] = "images/gone.png" + body[3][body[3].index(","):]
    data.write_text("\n".join([lines[0], *body]) + "\n")
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--model", "lenet",
                           "--output", str(out), "--name", "gone", "log.progress=off")
    assert_one_line_error(code, err, "image file not found: images/gone.png", f"{data}:5")
    assert not (out / "rare").exists() and not (out / "gone").exists()


def test_cross_validation_folds_are_stratified_and_compared_on_map(tmp_path, make_label_csv):
    from imgcls.experiments.runner import cross_validate

    data = make_label_csv(tmp_path / "d", n=36)
    cfg = _cfg(tmp_path, data, train__epochs=1, log__name="cv")
    summary = cross_validate(cfg, 2)
    assert summary["monitor"] == "val_map" and summary["mode"] == "max"
    folds = [json.loads((tmp_path / "runs" / "cv" / f"fold-{i}" / "split.json").read_text())
             for i in (0, 1)]
    assert set(folds[0]["val"]).isdisjoint(folds[1]["val"])
    assert sorted(folds[0]["val"] + folds[1]["val"]) == sorted(folds[0]["train"] +
                                                               folds[0]["val"])


def test_an_experiments_evaluation_scores_runs_and_ensemble_on_map(tmp_path, capsys,
                                                                  make_label_csv):
    from imgcls.experiments.runner import repeat_seeds

    data = make_label_csv(tmp_path / "d", n=36)
    repeat_seeds(_cfg(tmp_path, data, train__epochs=2, log__name="rep"), 2)
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "runs" / "rep"), "--split",
                             "val", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["scores"] == ["map", "micro_f1", "macro_f1", "exact_match", "loss"]
    assert result["ensemble"]["models"] == 2 and 0 <= result["ensemble"]["map"] <= 1
    for run in result["runs"]:
        summary = json.loads(run_cli(capsys, "evaluate", str(
            tmp_path / "runs" / "rep" / run["run"] / "checkpoints" / "best.pt"), "--json")[1])
        assert run["map"] == pytest.approx(summary["map"], abs=1e-6)
        assert run["exact_match"] == pytest.approx(summary["subset_accuracy"], abs=1e-6)


def test_another_csv_is_scored_with_the_models_classes(tmp_path, capsys, make_label_csv):
    data = make_label_csv(tmp_path / "d", n=32)
    run = api.train(_cfg(tmp_path, data, train__epochs=1, log__name="m")).run_dir
    best = str(run / "checkpoints" / "best.pt")
    # a file that never uses `car` still scores against the model's three classes
    other = tmp_path / "d" / "other.csv"
    rows = [line for line in data.read_text().splitlines()[1:] if "car" not in line]
    other.write_text("path,tags\n" + "\n".join(rows) + "\n")
    code, out, err = run_cli(capsys, "evaluate", best, "--data", str(other), "--json")
    assert code == 0, err
    assert list(json.loads(out)["per_class"]) == ["car", "cat", "dog"]
    # a label the model does not know is named with its line
    other.write_text("path,tags\n" + rows[0] + "\n" + rows[1].split(",")[0] + ",cat fox\n")
    code, _, err = run_cli(capsys, "evaluate", best, "--data", str(other))
    assert_one_line_error(code, err, f"{other}:3: label 'fox' is not one of the 3")
