"""imgcls report on a run with several labels per image (issue 25): the page's scores are
``imgcls evaluate``'s and scikit-learn's on the same probabilities, its co-occurrence counts,
precision-recall curves and worst misses are checked against the label CSV and by hand, it
renders in a real browser; results.csv and an experiment's page carry the mAP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _make_label_csv, check_rendered_page, render_in_browser, run_cli
from sklearn import metrics as skm

from imgcls import api
from imgcls.config import build_config
from imgcls.deploy.load import load_model
from imgcls.engine.multilabel_metrics import multilabel_metrics
from imgcls.report import multilabel as ml
from imgcls.report import multilabel_figures as mlf
from imgcls.report.calibration import calibration
from imgcls.report.predictions import collect_predictions

FAST = {"model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.1,
        "sched.warmup_epochs": 0.0, "data.val_fraction": 0.25, "log.progress": "off",
        "log.tensorboard": False, "train.amp": "off"}
SECTIONS = ("summary", "curves", "per-class", "pr-curves", "cooccurrence", "worst-misses",
            "calibration", "provenance")
CLASSES = ["car", "cat", "dog"]  # the label CSV's, sorted


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny multi-label run (lenet, 6 epochs, 64 images, 3 classes) and its label CSV."""
    root = tmp_path_factory.mktemp("mlreport")
    data = _make_label_csv(root / "d", n=64)
    cfg = build_config(overrides={**FAST, "data.source": str(data), "train.epochs": 6,
                                  "log.output": str(root / "runs"), "log.name": "ml",
                                  "data.root": str(root / "cache")})
    return api.train(cfg).run_dir, data


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _truth(data: Path, keys: list[str]) -> np.ndarray:
    """The label CSV's 0/1 rows of ``keys``, columns in CLASSES order."""
    tags = {r["path"]: set(r["tags"].replace(";", " ").split()) for r in _csv(data)}
    return np.array([[c in tags[k] for c in CLASSES] for k in keys], dtype=np.uint8)


# --------------------------------------------------------------------------- the page


def test_multilabel_page_in_browser_against_evaluate_and_sklearn(run, tmp_path, capsys):
    run_dir, data = run
    code, out, err = run_cli(capsys, "report", str(run_dir), "--device", "cpu")
    page = run_dir / "report" / "index.html"
    assert code == 0 and f"wrote {page}" in out, err
    folder = page.parent
    for name in ("pr_curves.png", "cooccurrence_true.png", "cooccurrence_predicted.png",
                 "worst_misses.png", "reliability.png", "reliability_per_class.png",
                 "curves.png", "per_class.csv", "pr_curves.csv", "cooccurrence_true.csv",
                 "cooccurrence_predicted.csv", "cooccurrence_pairs.csv", "worst_misses.csv",
                 "calibration.csv", "calibration_per_class.csv", "predictions.csv",
                 "summary.json"):
        assert (folder / name).stat().st_size > 0, name
    source = page.read_text(encoding="utf-8")
    dom, log = render_in_browser(page, tmp_path / "shot.png")
    check_rendered_page(dom, log, source, SECTIONS, tmp_path / "shot.png")
    for single in ("confusion", "top-losses", "correct"):  # one label per image only
        assert f'<section id="{single}">' not in source

    # the page's scores are imgcls evaluate's: same checkpoint, images and thresholds
    summary = json.loads((folder / "summary.json").read_text())
    code, out, err = run_cli(capsys, "evaluate", str(run_dir / "checkpoints" / "best.pt"),
                             "--json", "--device", "cpu", "--output", str(tmp_path / "ev"))
    assert code == 0, err
    evaluated = json.loads(out)
    assert summary["multilabel"] is True and summary["images"] == evaluated["n"] == 16
    for key in ("map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        assert summary[key] == pytest.approx(evaluated[key], abs=1e-9), key
        assert f"<td>{summary[key]:.4f}</td>" in source, key  # shown at the top
    rows = {r["class"]: r for r in _csv(folder / "per_class.csv")}
    for name, expected in evaluated["per_class"].items():
        for score in ("ap", "precision", "recall", "f1", "threshold"):
            assert float(rows[name][score]) == pytest.approx(expected[score], abs=1e-9)
        assert int(rows[name]["support"]) == expected["support"]
    assert float(rows["macro avg"]["ap"]) == pytest.approx(summary["map"])
    assert float(rows["micro avg"]["f1"]) == pytest.approx(summary["micro_f1"])

    # and multilabel_metrics' (and scikit-learn's) on the probabilities the page scored
    loaded = load_model(run_dir / "checkpoints" / "best.pt", device="cpu")
    preds = collect_predictions(loaded, run_dir, split="val")
    assert preds.multilabel and preds.classes == CLASSES
    val = json.loads((run_dir / "split.json").read_text())["val"]
    y = _truth(data, val)
    np.testing.assert_array_equal(preds.labels, y)
    probs = preds.probs
    m = multilabel_metrics(torch.from_numpy(probs), torch.from_numpy(y),
                           loaded.record.thresholds, CLASSES)
    assert summary["map"] == pytest.approx(m["map"]) == pytest.approx(
        skm.average_precision_score(y, probs, average="macro"))
    chosen = probs >= np.array(loaded.record.thresholds)
    assert summary["micro_f1"] == pytest.approx(skm.f1_score(y, chosen, average="micro"))
    assert summary["hamming_loss"] == pytest.approx(skm.hamming_loss(y, chosen))
    for k, name in enumerate(CLASSES):  # ECE per class: the label's reliability
        assert float(rows[name]["ece"]) == pytest.approx(calibration(probs[:, k], y[:, k]).ece)

    # precision-recall curves: scikit-learn's points, in recall order
    points = _csv(folder / "pr_curves.csv")
    for k, name in enumerate(CLASSES):
        precision, recall, _ = skm.precision_recall_curve(y[:, k], probs[:, k])
        mine = [r for r in points if r["class"] == name]
        np.testing.assert_allclose([float(r["recall"]) for r in mine], recall[-2::-1])
        np.testing.assert_allclose([float(r["precision"]) for r in mine], precision[-2::-1])

    # co-occurrence: counts of images with both labels, from the label CSV and the thresholds
    true = [[int(v) for v in list(r.values())[1:]] for r in _csv(folder /
                                                                 "cooccurrence_true.csv")]
    assert true == [[int((y[:, i] & y[:, j]).sum()) for j in range(3)] for i in range(3)]
    assert [true[i][i] for i in range(3)] == y.sum(axis=0).tolist()
    pred = [[int(v) for v in list(r.values())[1:]] for r in _csv(folder /
                                                                 "cooccurrence_predicted.csv")]
    assert pred == (chosen.T.astype(int) @ chosen.astype(int)).tolist()

    # worst misses: the 12 largest summed |label - probability|, largest first
    error = np.abs(y - probs).sum(axis=1)
    misses = _csv(folder / "worst_misses.csv")
    assert [int(r["index"]) for r in misses] == np.argsort(-error, kind="stable")[:12].tolist()
    assert [float(r["error"]) for r in misses] == pytest.approx(np.sort(error)[::-1][:12])
    first = int(misses[0]["index"])
    assert misses[0]["true"] == ml.label_set(y[first], CLASSES)
    assert misses[0]["predicted"] == ml.label_set(chosen[first], CLASSES)
    every = _csv(folder / "predictions.csv")
    assert [float(r["error"]) for r in every] == pytest.approx(error, abs=1e-5)


# --------------------------------------------------------------------------- known data


def test_cooccurrence_curves_and_misses_by_hand():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [0, 1, 1]])
    assert ml.cooccurrence(y).tolist() == [[3, 2, 1], [2, 3, 2], [1, 2, 2]]
    pred = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]])
    pairs = ml.top_pairs(ml.cooccurrence(y), ml.cooccurrence(pred), ["a", "b", "c"])
    assert [(p["label_a"], p["label_b"], p["true"], p["predicted"]) for p in pairs] == [
        ("a", "b", 2, 2), ("b", "c", 2, 2), ("a", "c", 1, 3)]

    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6], [0.5, 0.5], [0.8, 0.9]])
    targets = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
    # errors 0.2, 1.2, 1.2 (a tie: the lower index first), 1.0, 0.9
    assert ml.worst_misses(probs, targets, 4).tolist() == [1, 2, 3, 4]
    assert ml.miss_error(probs, targets).tolist() == pytest.approx([0.2, 1.2, 1.2, 1.0, 0.9])

    rng = np.random.default_rng(1)
    scores = rng.random(200).round(2)  # ties
    labels = (rng.random(200) < scores).astype(int)
    curve = ml.pr_curve(scores, labels)
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(curve.recall[1:], recall[-2::-1])
    np.testing.assert_allclose(curve.precision[1:], precision[-2::-1])
    np.testing.assert_allclose(curve.threshold[1:], thresholds[::-1])
    assert ml.curve_ap(curve) == pytest.approx(skm.average_precision_score(labels, scores))
    thin = curve.thinned(20)
    assert len(thin.recall) == 20 and thin.recall[-1] == curve.recall[-1]
    assert ml.pr_curve(scores, np.zeros(200)) is None  # no positive: no curve


@pytest.mark.parametrize("k", [3, 15])
def test_figures_for_few_and_many_classes(k):
    rng = np.random.default_rng(k)
    probs = rng.random((60, k))
    y = (rng.random((60, k)) < probs).astype(int)
    curves = [(f"c{i}", ml.pr_curve(probs[:, i], y[:, i]), 0.5, (0.5, 0.5)) for i in range(k)]
    fig = mlf.pr_curves_figure(curves)
    try:  # one plot with a line per class, or one small plot per class
        drawn = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        assert len(drawn) == (1 if k <= mlf.MAX_LINES else k)
        assert sum(len(ax.lines) for ax in drawn) == 2 * k  # curve and threshold dot
    finally:
        mlf._pyplot().close(fig)
    matrix = ml.cooccurrence(y)
    fig = mlf.cooccurrence_figure(matrix, [f"c{i}" for i in range(k)], "true", matrix.max())
    try:
        assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(
            str(v) for v in matrix.ravel())
    finally:
        mlf._pyplot().close(fig)


# --------------------------------------------------------------------------- mAP elsewhere


def test_results_csv_and_experiment_page_carry_map(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = _csv(run_dir / "results.csv")
    assert "val_map" in results[0] and "val_top5" not in results[0]
    assert [float(r["val_map"]) for r in results] == pytest.approx([x["val_map"] for x in lines])

    # curves.png per epoch: seconds of matplotlib, not this test's subject
    monkeypatch.setattr("imgcls.runs.files.refresh_run_files", lambda run_dir: None)
    exp = tmp_path / "runs" / "r"
    code, out, err = run_cli(capsys, "repeat", "--seeds", "2", "--data", str(data),
                             "--output", str(tmp_path / "runs"), "--name", "r", "--model",
                             "lenet", "--epochs", "1", "loader.batch_size=16",
                             "sched.warmup_epochs=0", "log.progress=off",
                             "log.tensorboard=false", "data.val_fraction=0.25",
                             f"data.root={tmp_path / 'cache'}")
    assert code == 0, err
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["monitor"] == "val_map" and summary["stats"]["best_val_map"]["n"] == 2
    maps = [json.loads((exp / f"seed-{s}" / "metrics.jsonl").read_text())["val_map"]
            for s in (0, 1)]
    assert summary["stats"]["best_val_map"]["mean"] == pytest.approx(np.mean(maps))
    code, out, err = run_cli(capsys, "report", str(exp))
    assert code == 0, err
    source = (exp / "report" / "index.html").read_text(encoding="utf-8")
    assert "<th>best_val_map</th>" in source and "<th>final_val_map</th>" in source
    assert f"<td>{np.mean(maps):.4f}</td>" in source
    runs = _csv(exp / "report" / "runs.csv")
    assert [float(r["final_val_map"]) for r in runs] == pytest.approx(maps)
