"""imgcls report: the run's page and the comparison page rendered in a real browser (headless
Chromium), their numbers checked against scikit-learn and a hand-computed ECE, results.csv and
curves.png refreshed by training (resume included), and bad input as one line with exit 2."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _make_image_folder, check_rendered_page, render_in_browser
from PIL import Image
from sklearn import metrics as skm

from imgcls import api
from imgcls.cli import main
from imgcls.config import build_config
from imgcls.report.calibration import calibration
from imgcls.report.selective import accuracy_coverage, confidence_for
from imgcls.report.tables import per_class_rows

FAST = {
    "model.name": "lenet", "loader.batch_size": 16, "optim.lr": 0.02,
    "sched.warmup_epochs": 0.0, "log.progress": "off", "log.tensorboard": False,
}
RUN_SECTIONS = ("summary", "curves", "confusion", "per-class", "calibration", "coverage",
                "top-losses", "correct", "provenance")


def _train(root: Path, data: Path, name: str, epochs: int) -> Path:
    cfg = build_config(overrides={**FAST, "data.source": str(data), "train.epochs": epochs,
                                  "log.output": str(root / "runs"), "log.name": name})
    return api.train(cfg).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs on 4 learnable classes (train/val/test folders); run b was resumed."""
    root = tmp_path_factory.mktemp("report")
    data = _make_image_folder(root / "imgs", classes=("ant", "bee", "cat", "dog"), per_class=12,
                              layout="train_val_test", size=24)
    a = _train(root, data, "a", 3)
    b = _train(root, data, "b", 1)
    api.train(resume=b, overrides={"train.epochs": 2})
    return {"a": a, "b": b, "root": root, "data": data}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- run folder files


def test_results_csv_and_curves_follow_metrics_jsonl(runs):
    for run, epochs in ((runs["a"], 3), (runs["b"], 2)):  # b: one epoch, then resumed
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rows = _csv(run / "results.csv")
        assert [int(r["epoch"]) for r in rows] == [m["epoch"] for m in lines] == list(
            range(1, epochs + 1))
        assert "val_per_class" not in rows[0] and "val_acc" in rows[0] and "lr" in rows[0]
        assert float(rows[-1]["val_acc"]) == pytest.approx(lines[-1]["val_acc"])
        with Image.open(run / "curves.png") as image:
            assert image.format == "PNG" and image.width > 400


# --------------------------------------------------------------------------- one run's page


def test_run_report_in_browser_and_against_sklearn(runs, tmp_path, capsys):
    run = runs["a"]
    assert main(["report", str(run), "--device", "cpu"]) == 0
    out = run / "report"
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    for name in ("curves.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
                 "reliability.png", "top_losses.png", "correct_samples.png", "per_class.csv",
                 "confusion_matrix.csv", "confused_pairs.csv", "calibration.csv",
                 "predictions.csv", "results.csv", "summary.json", "accuracy_coverage.png",
                 "accuracy_coverage.csv", "min_confidence.csv"):
        assert (out / name).is_file(), name
    source = (out / "index.html").read_text(encoding="utf-8")
    dom, log = render_in_browser(out / "index.html", tmp_path / "shot.png")
    check_rendered_page(dom, log, source, RUN_SECTIONS, tmp_path / "shot.png")
    # each "numbers in" note names tables (CSV, JSON) the report wrote, never a picture
    noted = re.findall(r'numbers in: <span class="files">([^<]*)</span>', source)
    named = [n for note in noted for n in note.split(", ")]
    assert "top_losses.csv" in named and "correct_samples.csv" in named
    assert all(n.endswith((".csv", ".json")) and (out / n).is_file() for n in named), named
    assert source.count('one picture: <span class="files">') == 2  # the grids' PNGs, as such
    assert "<th>command</th><td>python: imgcls.api.train" in source  # trained from Python

    # the page's numbers, recomputed by scikit-learn from the per-image predictions
    preds = _csv(out / "predictions.csv")
    classes = ["ant", "bee", "cat", "dog"]
    assert len(preds) == 4 * 12  # the val folder
    y_true = [p["true"] for p in preds]
    y_pred = [p["predicted"] for p in preds]
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                     zero_division=0)
    rows = {row["class"]: row for row in _csv(out / "per_class.csv")}
    for k, name in enumerate(classes):
        assert float(rows[name]["precision"]) == pytest.approx(p[k])
        assert float(rows[name]["recall"]) == pytest.approx(r[k])
        assert float(rows[name]["f1"]) == pytest.approx(f[k])
        assert int(rows[name]["support"]) == s[k]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert summary["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0))
    assert summary["weighted_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    matrix = [[int(v) for v in list(row.values())[1:]] for row in _csv(
        out / "confusion_matrix.csv")]
    assert matrix == skm.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    assert f"<td>{summary['macro_f1']:.4f}</td>" in source
    assert f"<td>{summary['ece']:.4f}</td>" in source and "15 equal-width bins" in source
    # Grad-CAM beside the worst misses (lenet's layer: its last pooled map) and the pairs
    wrong = sum(p["true"] != p["predicted"] for p in preds)
    assert wrong > 0  # the tiny run makes mistakes, so the heatmaps must be on the page
    assert "Grad-CAM at <code>pool</code>" in source
    assert source.count('alt="Grad-CAM of ') == min(wrong, 12) + 2 * min(
        3, len(_csv(out / "confused_pairs.csv")))
    # "I don't know": each target's P, recomputed by brute force from the per-image predictions
    conf = np.array([float(p["p_predicted"]) for p in preds])
    right = np.array([p["true"] == p["predicted"] for p in preds])
    written = _csv(out / "min_confidence.csv")  # predictions.csv keeps 6 digits
    assert [float(row["target_accuracy"]) for row in written] == [0.9, 0.95, 0.99]
    for row, listed in zip(written, summary["min_confidence_for"], strict=True):
        want = _brute_force_target(conf, right, float(row["target_accuracy"]))
        assert row["kept"] == want["kept"] and int(row["kept"]) == listed["kept"]
        for key in ("min_confidence", "coverage", "accuracy"):
            assert (row[key] == "") == (want[key] == "") == (listed[key] is None)
            if row[key]:
                assert float(row[key]) == pytest.approx(float(want[key]), rel=1e-5)
                assert float(row[key]) == pytest.approx(listed[key], rel=1e-12)


def test_test_split_and_output_folder(runs, tmp_path):
    assert main(["report", str(runs["a"]), "--split", "test", "--output",
                 str(tmp_path / "t")]) == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["images"] == 4 * 12


# --------------------------------------------------------------------------- fixed predictions


def test_tables_match_sklearn_on_fixed_predictions():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # class 4 never occurs; class 3 never predicted
    y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 4, 1]
    k = 5
    confusion = torch.zeros(k, k, dtype=torch.int64)
    for t, q in zip(y_true, y_pred, strict=True):
        confusion[t, q] += 1
    names = [f"c{i}" for i in range(k)]
    rows, summary = per_class_rows(confusion, names)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k),
                                                     zero_division=0)
    for i in range(k):
        assert [rows[i]["precision"], rows[i]["recall"], rows[i]["f1"]] == pytest.approx(
            [p[i], r[i], f[i]])
        assert rows[i]["support"] == s[i]
    for avg in ("macro", "weighted"):
        row = next(x for x in rows if x["class"] == f"{avg} avg")
        expected = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k),
                                                       average=avg, zero_division=0)
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(expected[:3])
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    assert summary["balanced_acc"] == pytest.approx(balanced)
    assert confusion.tolist() == skm.confusion_matrix(y_true, y_pred, labels=range(k)).tolist()


def _brute_force_target(conf: np.ndarray, right: np.ndarray, target: float) -> dict[str, str]:
    """The lowest P among the confidences whose kept images (conf >= P) reach ``target``,
    as min_confidence.csv writes it."""
    best = None
    for p in sorted(set(conf.tolist())):
        kept = conf >= p
        if right[kept].mean() >= target:
            best = (p, int(kept.sum()), float(right[kept].mean()))
            break
    if best is None:
        return {"target_accuracy": repr(target), "min_confidence": "", "coverage": "0.0",
                "accuracy": "", "kept": "0"}
    p, kept, acc = best
    return {"target_accuracy": repr(target), "min_confidence": repr(p),
            "coverage": repr(kept / len(conf)), "accuracy": repr(acc), "kept": str(kept)}


@pytest.mark.parametrize("seed", range(5))
def test_confidence_for_a_target_accuracy_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.3, 0.5, 0.6, 0.75, 0.9, 0.99], size=60)  # many ties
    right = rng.random(60) < conf
    curve = accuracy_coverage(conf, right)
    assert curve.kept[-1] == 60 and curve.accuracy[-1] == pytest.approx(right.mean())
    assert (np.diff(curve.confidence) < 0).all() and (np.diff(curve.kept) > 0).all()
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        got = confidence_for(curve, target)
        want = _brute_force_target(conf, right, target)
        if want["min_confidence"] == "":
            assert got["min_confidence"] is None and got["kept"] == 0
            continue
        assert got["min_confidence"] == pytest.approx(float(want["min_confidence"]))
        assert got["kept"] == int(want["kept"])
        assert got["accuracy"] == pytest.approx(float(want["accuracy"]))
        assert got["accuracy"] >= target


def test_ece_by_hand():
    # bins of width 1/15: 0.95 and 0.99 share (14/15, 1]; 0.55 is in (8/15, 9/15]; 0.2 in
    # (3/15, 4/15]. |B|/n * |acc - conf| summed:
    conf = np.array([0.95, 0.99, 0.55, 0.2])
    correct = np.array([True, False, True, False])
    hand = (2 / 4) * abs(0.5 - 0.97) + (1 / 4) * abs(1 - 0.55) + (1 / 4) * abs(0 - 0.2)
    cal = calibration(conf, correct)
    assert cal.ece == pytest.approx(hand)
    assert cal.count.sum() == 4 and cal.count[14] == 2 and cal.count[8] == 1
    assert calibration(np.array([1.0, 1.0]), np.array([1, 1])).ece == 0.0  # 1.0: last bin


# --------------------------------------------------------------------------- several runs


def test_compare_page(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["report", str(runs["a"]), str(runs["b"]), "--output", str(out)]) == 0
    rows = _csv(out / "compare.csv")
    assert [r["run"] for r in rows] == ["a", "b"] and [r["epochs"] for r in rows] == ["3", "2"]
    best = max(json.loads(x)["val_acc"] for x in (runs["a"] / "metrics.jsonl").read_text()
               .splitlines())
    assert float(rows[0]["best_val_acc"]) == pytest.approx(best)
    source = (out / "index.html").read_text(encoding="utf-8")
    dom, log = render_in_browser(out / "index.html", tmp_path / "cmp.png")
    check_rendered_page(dom, log, source, ("curves", "metrics"), tmp_path / "cmp.png")


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_exit_2(runs, tmp_path, capsys):
    (tmp_path / "nockpt" / "checkpoints").mkdir(parents=True)
    (tmp_path / "nodata").mkdir()
    flat = _make_image_folder(tmp_path / "flat", classes=("ant", "bee", "cat", "dog"),
                              per_class=4, size=24)
    cases = [
        (["report", str(tmp_path / "nockpt")], "no checkpoint in"),
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["report", str(runs["a"]), "--data", str(tmp_path / "nodata")], "nodata"),
        (["report", str(runs["a"]), "--data", str(flat), "--split", "test"], "no test split"),
        (["report", str(runs["a"]), str(tmp_path / "nockpt"), "--output", str(tmp_path / "o")],
         "no metrics.jsonl"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("imgcls: error: ") and "\n" not in err and words in err, err


# --------------------------------------------------------------------------- the model card


def test_model_card_numbers_come_from_the_run_files(runs, capsys):
    import yaml

    from imgcls.report.card import wilson

    run = runs["a"]
    assert main(["card", str(run), "--device", "cpu"]) == 0
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"wrote {run / 'MODEL_CARD.md'}" in capsys.readouterr().out
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "imgcls" and front["license"] == "other"
    (entry,) = front["model-index"]
    by_split = {r["dataset"]["split"]: {m["type"]: m["value"] for m in r["metrics"]}
                for r in entry["results"]}
    for split, folder in (("validation", "report"), ("test", "report-test")):
        summary = json.loads((run / folder / "summary.json").read_text())
        assert by_split[split] == {"accuracy": summary["accuracy"], "f1": summary["macro_f1"]}
        n = summary["images"]
        low, high = wilson(summary["accuracy"] * n, n)
        assert f"| {summary['accuracy']:.4f} | [{low:.4f}, {high:.4f}] |" in card
        assert f"{summary['ece']:.4f}" in card
    split = json.loads((run / "split.json").read_text())
    test_images = json.loads((run / "report-test" / "summary.json").read_text())["images"]
    assert f"train {len(split['train'])}, val {len(split['val'])}, test {test_images}" in card
    per_class = _csv(run / "report" / "per_class.csv")
    worst = min((r for r in per_class if "avg" not in r["class"]),
                key=lambda r: float(r["recall"]))
    assert f"| {worst['class']} | {float(worst['recall']):.4f} |" in card
    assert "python: imgcls.api.train" in card  # the exact command of the run
    assert "## Intended use" in card and "## Calibration" in card


@pytest.mark.parametrize(("k", "n"), [(45, 50), (0, 10), (10, 10), (1, 3), (4950, 5000)])
def test_wilson_interval_is_scipys(k, n):
    from scipy.stats import binomtest

    from imgcls.report.card import wilson

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_model_card_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    code = main(["card", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "no metrics.jsonl" in err and len(err.strip().splitlines()) == 1
