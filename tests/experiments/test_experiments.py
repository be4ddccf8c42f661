"""imgcls cv and imgcls repeat: disjoint stratified seeded folds for every kind of source, the
statistics against a hand computation, a cross-validation run as a user runs it (one fold as a
job of an array, --summarize naming the missing ones, a fold interrupted mid-epoch and resumed
by rerunning the command), its evaluation with the ensemble, and its page in a browser."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
import yaml
from conftest import (
    InterruptDuringEpoch,
    _make_cifar_batches,
    _make_image_folder,
    _make_list_file,
    assert_one_line_error,
    check_rendered_page,
    render_in_browser,
    run_cli,
)
from sklearn import metrics as skm

from imgcls import api
from imgcls.config import build_config
from imgcls.data import create_datasets
from imgcls.data.sources import dataset_labels
from imgcls.deploy.load import load_model
from imgcls.experiments.stats import spread
from imgcls.report.predictions import collect_predictions

FAST = ["--model", "lenet", "--epochs", "2", "loader.batch_size=16", "sched.warmup_epochs=0",
        "log.progress=off", "log.tensorboard=false", "optim.lr=0.02"]


@pytest.fixture(autouse=True)
def _no_curves_png(monkeypatch):
    """Each epoch's curves.png takes seconds of matplotlib on 2 shared cores, more than the tiny
    epochs here; the run's own files are test_report's subject, not this file's."""
    monkeypatch.setattr("imgcls.runs.files.refresh_run_files", lambda run_dir: None)


def _labels_of(record: dict, part: str, labels: dict) -> Counter:
    return Counter(labels[k] for k in record[part])


# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize("kind", ["folder", "list", "cifar"])
def test_folds_are_disjoint_stratified_and_seeded(tmp_path, kind):
    """K folds cover the pool once, each holds n_c / K of every class, and the seed decides."""
    if kind == "cifar":  # 50 images of each of 3 classes
        source = _make_cifar_batches(tmp_path, n_train=150, num_classes=3)
    elif kind == "list":
        source = _make_list_file(tmp_path, classes=("x", "y", "z"), per_class=15, size=8)
    else:
        source = _make_image_folder(tmp_path / "imgs", classes=("x", "y", "z"), per_class=15,
                                    size=8)
    per_fold = 10 if kind == "cifar" else 3

    def split(fold: int, seed: int = 0, **extra: object):
        cfg = build_config(overrides={"data.source": str(source), "data.folds": 5,
                                      "data.fold": fold, "data.root": str(tmp_path), **extra})
        return create_datasets(cfg.data, seed)

    splits = [split(i) for i in range(5)]
    records = [s.split_record for s in splits]
    vals = [set(r["val"]) for r in records]
    pool = vals[0] | set(records[0]["train"])
    assert all(not (a & b) for a, b in itertools.combinations(vals, 2))
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool) == 15 * per_fold
    for s, r in zip(splits, records, strict=True):
        assert not set(r["train"]) & set(r["val"]) and set(r["train"]) | set(r["val"]) == pool
        assert r["folds"] == 5 and r["val_fraction"] == pytest.approx(0.2)
        assert Counter(dataset_labels(s.val)) == {0: per_fold, 1: per_fold, 2: per_fold}
        assert Counter(dataset_labels(s.train)) == {k: 4 * per_fold for k in range(3)}
    assert split(2).split_record == records[2]  # seeded
    assert split(2, seed=1).split_record["val"] != records[2]["val"]
    assert split(2, seed=1, **{"data.split_seed": 0}).split_record["val"] == records[2]["val"]


def test_folds_leave_the_test_part_alone_and_keep_stratification(tmp_path):
    source = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=20, size=8)
    parts = []
    for fold in range(4):
        cfg = build_config(overrides={"data.source": str(source), "data.folds": 4,
                                      "data.fold": fold, "data.test_fraction": 0.2})
        parts.append(create_datasets(cfg.data, 0).split_record)
    tests = {tuple(r["test"]) for r in parts}
    assert len(tests) == 1 and len(parts[0]["test"]) == 8  # one test part for every fold
    for r in parts:
        assert not set(r["test"]) & (set(r["train"]) | set(r["val"]))
        labels = {k: k.split("/")[0] for k in r["val"]}
        assert _labels_of(r, "val", labels) == {"a": 4, "b": 4}


def test_too_few_images_per_class_and_bad_keys_are_one_line(tmp_path, capsys):
    source = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3, size=8)
    out = ["--data", str(source), "--output", str(tmp_path / "runs"), *FAST]
    cases = [
        (["cv", "--folds", "4", *out], ("data.folds=4", "'a'", "only 3")),
        (["cv", "--folds", "1", *out], ("--folds 1",)),
        (["cv", "--folds", "3", "data.folds=3", *out], ("--folds K",)),
        (["cv", "--folds", "3", "--only", "3", *out], ("--only 3", "0 to 2")),
        (["train", "data.folds=3", "data.fold=3", *out], ("data.fold",)),
        (["train", "data.folds=3", "data.val_split=test", *out], ("data.val_split",)),
        (["cv", "--folds", "3", "--summarize", *out], ("not an experiment folder",)),
    ]
    for argv, needles in cases:
        code, _, err = run_cli(capsys, *argv)
        # the error may follow the line that names the fold being started
        assert_one_line_error(code, err.splitlines()[-1], *needles)
    assert not (tmp_path / "runs").exists()  # a refused command leaves no experiment behind


# --------------------------------------------------------------------------- statistics


def test_statistics_by_hand():
    values = [0.70, 0.75, 0.80, 0.72, 0.78]
    mean = sum(values) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)  # ddof=1
    half = 2.776445 * std / math.sqrt(5)  # t(0.975, 4) from a table
    s = spread(values)
    assert (s.n, s.mean, s.std) == (5, pytest.approx(0.75), pytest.approx(std))
    assert std == pytest.approx(0.0412311, abs=1e-6)
    assert (s.ci_low, s.ci_high) == (pytest.approx(mean - half, abs=1e-6),
                                     pytest.approx(mean + half, abs=1e-6))
    two = spread([1.0, 3.0])  # t(0.975, 1) = 12.706: two runs say little
    assert two.ci_high - two.mean == pytest.approx(12.7062, rel=1e-4)  # std sqrt(2), n 2
    one = spread([0.9])
    assert (one.std, one.ci_low, one.ci_high) == (None, None, None) and "n=1" in one.describe()


# --------------------------------------------------------------------------- cv end to end


def test_cv_array_job_interrupt_resume_evaluate_report(tmp_path, capsys, monkeypatch):
    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=6, size=16,
                              layout="train_test")
    argv = ["cv", "--folds", "3", "--data", str(data), "--output", str(tmp_path / "runs"),
            "--name", "exp", f"data.root={tmp_path / 'cache'}", *FAST]
    exp = tmp_path / "runs" / "exp"

    # one fold as a job of an array; --summarize names the two not started, exit 1
    code, out, err = run_cli(capsys, *argv, "--only", "2")
    assert code == 0 and "fold-2  finished" in out
    code, out, err = run_cli(capsys, *argv, "--summarize")
    assert code == 1 and "fold-0 (not started), fold-1 (not started)" in err

    # the whole command, with fold-1 stopped by Ctrl-C in the middle of its second epoch
    real, calls = api.train, []

    def train(cfg=None, **kw):
        calls.append((cfg.log.name if cfg is not None else None, kw.get("resume")))
        if cfg is not None and cfg.log.name == "fold-1":
            kw["callbacks"] = [InterruptDuringEpoch(1)]
        return real(cfg, **kw)

    monkeypatch.setattr(api, "train", train)
    code, out, err = run_cli(capsys, *argv)
    assert code == 130 and "rerun the same `imgcls cv` command" in err
    first_epoch = (exp / "fold-1" / "metrics.jsonl").read_text().splitlines()
    assert len(first_epoch) == 1
    code, out, err = run_cli(capsys, *argv)  # rerun: fold-1 resumes, the rest is done
    assert code == 0, err
    assert calls == [("fold-0", None), ("fold-1", None), (None, exp / "fold-1")]
    assert "fold-0 (1 of 3): finished, skipped" in err and "fold-2 (3 of 3): finished" in err
    lines = (exp / "fold-1" / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first_epoch[0] and len(lines) == 2  # continued, not started over

    # the summary against a hand computation from each fold's metrics.jsonl
    summary = json.loads((exp / "summary.json").read_text())
    runs = [[json.loads(x) for x in (exp / f"fold-{i}" / "metrics.jsonl").read_text()
             .splitlines()] for i in range(3)]
    best = [max(r["val_acc"] for r in rows) for rows in runs]
    final = [rows[-1]["val_acc"] for rows in runs]
    for key, values in (("best_val_acc", best), ("final_val_acc", final)):
        s = summary["stats"][key]
        assert s["mean"] == pytest.approx(np.mean(values))
        assert s["std"] == pytest.approx(np.std(values, ddof=1))
        assert s["ci_high"] - s["mean"] == pytest.approx(
            4.302653 * np.std(values, ddof=1) / math.sqrt(3), abs=1e-6)
    assert f"{summary['stats']['best_val_acc']['mean']:.4f}" in out
    splits = [json.loads((exp / f"fold-{i}" / "split.json").read_text()) for i in range(3)]
    assert sum(len(s["val"]) for s in splits) == 18 and splits[0]["fold"] == 0

    # evaluation: each fold's best.pt and the ensemble of averaged probabilities
    monkeypatch.setattr(api, "train", real)
    code, out, err = run_cli(capsys, "evaluate", str(exp), "--split", "test", "--device", "cpu")
    assert code == 0, err
    result = json.loads((exp / "eval" / "test" / "evaluation.json").read_text())
    probs = []
    for i, row in enumerate(result["runs"]):
        loaded = load_model(exp / f"fold-{i}" / "checkpoints" / "best.pt", device="cpu")
        preds = collect_predictions(loaded, exp / f"fold-{i}", split="test")
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(preds.labels,
                                                                   preds.predicted))
        probs.append(preds.probs)
    mean = np.mean(probs, axis=0)
    ensemble = result["ensemble"]
    assert ensemble["images"] == 18 and ensemble["models"] == 3
    assert ensemble["accuracy"] == pytest.approx(skm.accuracy_score(preds.labels,
                                                                    mean.argmax(1)))
    assert ensemble["loss"] == pytest.approx(skm.log_loss(preds.labels, mean, labels=[0, 1, 2]))
    assert "ensemble" in out and "accuracy:" in out

    # the page, in a browser
    code, out, err = run_cli(capsys, "report", str(exp))
    page = exp / "report" / "index.html"
    assert code == 0 and f"wrote {page}" in out
    source = page.read_text(encoding="utf-8")
    dom, log = render_in_browser(page, tmp_path / "shot.png")
    check_rendered_page(dom, log, source, ("summary", "runs", "curves", "evaluation",
                                           "provenance"), tmp_path / "shot.png")
    assert f"{summary['stats']['best_val_acc']['mean']:.4f}" in dom
    assert f"{ensemble['accuracy']:.4f}" in dom
    assert {"runs.csv", "curves.csv", "curves.png", "evaluation_test.csv"} <= {
        p.name for p in (exp / "report").iterdir()}

    # another recipe under the same name is refused
    code, _, err = run_cli(capsys, *argv, "optim.lr=0.1")
    assert_one_line_error(code, err, "optim.lr=0.02", "0.1")


def test_repeat_varies_the_seed_on_one_split(tmp_path, capsys):
    data = _make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=10, size=16)
    argv = ["repeat", "--seeds", "2", "--seed", "3", "--data", str(data), "--output",
            str(tmp_path / "runs"), f"data.root={tmp_path / 'cache'}", *FAST, "--epochs", "1"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    (exp,) = (tmp_path / "runs").iterdir()
    assert exp.name.startswith("repeat-lenet-")
    configs = [yaml.safe_load((exp / f"seed-{s}" / "config.yaml").read_text()) for s in (3, 4)]
    assert [c["train"]["seed"] for c in configs] == [3, 4]
    splits = [json.loads((exp / f"seed-{s}" / "split.json").read_text()) for s in (3, 4)]
    assert splits[0]["val"] == splits[1]["val"] and splits[0]["seed"] == 3
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["stats"]["final_val_acc"]["n"] == 2 and "seed-4" in out
    code, _, err = run_cli(capsys, *argv)  # the same command again: nothing left to train
    assert code == 0 and err.count("finished, skipped") == 2
    # a model card of one of its runs carries the spread over the experiment's runs
    code, _, err = run_cli(capsys, "card", str(exp / "seed-3"), "--device", "cpu")
    assert code == 0, err
    card = (exp / "seed-3" / "MODEL_CARD.md").read_text()
    stat = summary["stats"]["best_val_acc"]
    assert "one of 2 finished runs of an `imgcls repeat` experiment" in card
    assert f"{stat['mean']:.4f} ± {stat['std']:.4f} (std), 95% CI [{stat['ci_low']:.4f}, " \
        f"{stat['ci_high']:.4f}]" in card
