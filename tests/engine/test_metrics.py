"""Confusion-matrix metrics checked against hand computations, and the monitor directions."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from imgcls.engine.metrics import classification_metrics, epoch_metrics_from_eval
from imgcls.engine.multilabel_metrics import multilabel_epoch_metrics
from imgcls.errors import ImgclsError
from imgcls.metric_table import METRICS, MONITORS, Monitor, get_monitor

# Rows = true class, columns = predicted class.
#   a: 5 right, 2 called b, 1 called d        support 8
#   b: 1 called a, 3 right                    support 4
#   c: 2 called a, 1 called d, never right    support 3, and c is never predicted (column 0s)
#   d: no samples at all                      support 0, but predicted twice
HAND = [
    [5, 2, 0, 1],
    [1, 3, 0, 0],
    [2, 0, 0, 1],
    [0, 0, 0, 0],
]
CLASSES = ["a", "b", "c", "d"]

# Worked on paper. Column sums (predictions): a 8, b 5, c 0, d 2. Total 15, diagonal 8.
#   precision: a 5/8, b 3/5, c 0 (never predicted), d 0/2
#   recall:    a 5/8, b 3/4, c 0/3, d 0 (no support)
#   f1:        a 5/8, b 2*(3/5)(3/4)/(3/5+3/4) = 2/3, c 0, d 0
EXPECTED_PER_CLASS = {
    "a": {"precision": 5 / 8, "recall": 5 / 8, "f1": 5 / 8, "support": 8},
    "b": {"precision": 3 / 5, "recall": 3 / 4, "f1": 2 / 3, "support": 4},
    "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3},
    "d": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
}
EXPECTED = {
    "accuracy": 8 / 15,
    "macro_precision": (5 / 8 + 3 / 5) / 4,  # 49/160, over all 4 classes
    "macro_recall": (5 / 8 + 3 / 4) / 4,  # 11/32, d's 0 counts
    "macro_f1": (5 / 8 + 2 / 3) / 4,  # 31/96
    "weighted_f1": (8 * 5 / 8 + 4 * 2 / 3 + 3 * 0) / 15,  # 23/45
    "balanced_acc": (5 / 8 + 3 / 4 + 0) / 3,  # 11/24, d has no support so is left out
}


def test_hand_computed_matrix() -> None:
    m = classification_metrics(torch.tensor(HAND), CLASSES)
    for key, value in EXPECTED.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert set(m["per_class"]) == set(CLASSES)
    for name, expected in EXPECTED_PER_CLASS.items():
        got = m["per_class"][name]
        assert got["support"] == expected["support"]
        assert isinstance(got["support"], int)
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12), (name, key)
    # Exact fractions written out, so a change of convention cannot hide in the expressions.
    assert m["macro_precision"] == pytest.approx(49 / 160)
    assert m["macro_recall"] == pytest.approx(11 / 32)
    assert m["macro_f1"] == pytest.approx(31 / 96)
    assert m["weighted_f1"] == pytest.approx(23 / 45)
    assert m["balanced_acc"] == pytest.approx(11 / 24)
    # Balanced accuracy ignores the support-0 class; macro recall does not.
    assert m["balanced_acc"] != pytest.approx(m["macro_recall"])


def test_plain_python_and_json_serialisable() -> None:
    m = classification_metrics(torch.tensor(HAND, dtype=torch.int32))
    assert list(m["per_class"]) == ["0", "1", "2", "3"]
    for key in EXPECTED:
        assert type(m[key]) is float
    for stats in m["per_class"].values():
        assert type(stats["precision"]) is float and type(stats["support"]) is int
    assert json.loads(json.dumps(m)) == m


def test_imbalanced_averages_differ() -> None:
    # 100 samples of class 0, 10 of class 1.
    m = classification_metrics(torch.tensor([[90, 10], [5, 5]]))
    # f1_0 = 2*90/(180+10+5) = 12/13, f1_1 = 2*5/(10+10+5) = 2/5
    assert m["accuracy"] == pytest.approx(95 / 110)
    assert m["macro_f1"] == pytest.approx((12 / 13 + 2 / 5) / 2)  # 43/65
    assert m["weighted_f1"] == pytest.approx((100 * 12 / 13 + 10 * 2 / 5) / 110)  # 626/715
    assert m["balanced_acc"] == pytest.approx((90 / 100 + 5 / 10) / 2)  # 0.7
    values = [m["macro_f1"], m["weighted_f1"], m["balanced_acc"]]
    assert len({round(v, 9) for v in values}) == 3
    assert m["weighted_f1"] > m["balanced_acc"] > m["macro_f1"]


def test_perfect_and_empty() -> None:
    perfect = classification_metrics(torch.diag(torch.tensor([3, 4, 5])))
    for key in EXPECTED:
        assert perfect[key] == pytest.approx(1.0)
    empty = classification_metrics(torch.zeros(3, 3, dtype=torch.long))
    for key in EXPECTED:
        assert empty[key] == 0.0
    assert all(s["support"] == 0 for s in empty["per_class"].values())


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        classification_metrics(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(torch.zeros(2, 2), ["only-one"])


def test_any_integer_dtype_and_layout() -> None:
    # all-reduced confusion matrices arrive as int64; a transposed view must not confuse it
    hand = torch.tensor(HAND, dtype=torch.int32)
    m = classification_metrics(hand.t().contiguous().t(), CLASSES)
    assert m["macro_f1"] == pytest.approx(31 / 96)


def test_epoch_metrics_keys() -> None:
    out = epoch_metrics_from_eval(0.75, 0.5, 0.9, torch.tensor(HAND))
    assert out == pytest.approx(
        {
            "val_loss": 0.75,
            "val_acc": 0.5,
            "val_top5": 0.9,
            "val_macro_f1": 31 / 96,
            "val_balanced_acc": 11 / 24,
            "val_macro_precision": 49 / 160,
            "val_macro_recall": 11 / 32,
        }
    )
    assert all(type(v) is float for v in out.values())
    # Every monitor names a key an epoch of its kind logs: one label per image, or several.
    assert {n for n in MONITORS if METRICS[n].multilabel is not True} <= set(out)
    several = multilabel_epoch_metrics(0.5, torch.tensor([[0.9, 0.2], [0.4, 0.7]]),
                                       torch.tensor([[1, 0], [0, 1]]), [0.5, 0.5])
    assert {n for n in MONITORS if METRICS[n].multilabel is not False} <= set(several)


def test_monitor_directions() -> None:
    assert {name: m.mode for name, m in MONITORS.items()} == {
        "val_acc": "max",
        "val_loss": "min",
        "val_top5": "max",
        "val_macro_f1": "max",
        "val_balanced_acc": "max",
        "val_map": "max",
        "val_micro_f1": "max",
        "val_hamming_loss": "min",
    }
    acc, loss = get_monitor("val_acc"), get_monitor("val_loss")
    assert acc.worst() == -math.inf and loss.worst() == math.inf

    assert acc.better(0.6, 0.5) and not acc.better(0.4, 0.5) and not acc.better(0.5, 0.5)
    assert loss.better(0.4, 0.5) and not loss.better(0.6, 0.5) and not loss.better(0.5, 0.5)

    # min_delta: must improve by strictly more than it.
    assert acc.better(0.53, 0.5, min_delta=0.02)
    assert not acc.better(0.51, 0.5, min_delta=0.02)
    assert loss.better(0.47, 0.5, min_delta=0.02)
    assert not loss.better(0.49, 0.5, min_delta=0.02)

    # No best yet: anything real improves; worst() behaves the same way.
    assert acc.better(0.0, None) and loss.better(1e9, None)
    assert acc.better(0.0, acc.worst()) and loss.better(1e9, loss.worst())

    # NaN never improves, whatever the direction or the best so far.
    for m in (acc, loss):
        assert not m.better(math.nan, None)
        assert not m.better(math.nan, 0.5)


def test_monitor_rejects_bad_mode() -> None:
    with pytest.raises(ValueError):
        Monitor("val_acc", "maximum")


def test_get_monitor_unknown_name() -> None:
    with pytest.raises(ImgclsError) as info:
        get_monitor("val_acuracy")
    message = str(info.value)
    assert "train.monitor='val_acuracy'" in message
    assert "val_acc" in message and "val_loss" in message
    assert "\n" not in message


def test_matches_sklearn() -> None:
    """scikit-learn (a dev dependency) is the reference implementation."""
    from sklearn import metrics as skm

    y_true, y_pred = [], []
    for i, row in enumerate(HAND):
        for j, n in enumerate(row):
            y_true += [i] * n
            y_pred += [j] * n
    labels = list(range(len(HAND)))
    m = classification_metrics(torch.tensor(HAND))
    kw = {"labels": labels, "zero_division": 0}
    assert m["macro_precision"] == pytest.approx(
        skm.precision_score(y_true, y_pred, average="macro", **kw)
    )
    assert m["macro_recall"] == pytest.approx(
        skm.recall_score(y_true, y_pred, average="macro", **kw)
    )
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", **kw))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted", **kw))
    with warnings.catch_warnings():  # class d is predicted but never true: sklearn says so
        warnings.simplefilter("ignore", UserWarning)
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_acc"] == pytest.approx(balanced)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
