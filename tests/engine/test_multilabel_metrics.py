"""Multi-label metrics checked number by number against scikit-learn on random data (ties in the
scores, per-class thresholds, an all-negative class, images without labels), and the F1-optimal
thresholds against a brute-force search over every cut."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from imgcls.engine.multilabel_metrics import (
    average_precision,
    best_thresholds,
    multilabel_metrics,
)

SEEDS = [0, 1, 2, 3]
SCALARS = ("subset_accuracy", "hamming_loss", "micro_f1", "micro_precision", "micro_recall",
           "macro_f1", "macro_precision", "macro_recall")  # fmt: skip


def _data(
    seed: int, n: int = 60, k: int = 5, decimals: int | None = None, empty_class: bool = False
):
    """Probabilities loosely correlated with random 0/1 targets; rounding makes ties."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, k, generator=g) < 0.3).to(torch.int64)
    targets[: n // 10] = 0  # some images carry no label at all
    if empty_class:
        targets[:, 1] = 0
    probs = (0.35 * targets + 0.65 * torch.rand(n, k, generator=g)).clamp(0, 1)
    if decimals is not None:
        probs = torch.round(probs, decimals=decimals)
    return probs, targets


def _sk(probs: torch.Tensor, targets: torch.Tensor, thresholds) -> dict[str, float]:
    y, p = targets.numpy(), probs.numpy()
    pred = (p >= np.asarray(thresholds)).astype(int)
    out = {
        "subset_accuracy": skm.accuracy_score(y, pred),
        "hamming_loss": skm.hamming_loss(y, pred),
    }
    for avg in ("micro", "macro"):
        out[f"{avg}_f1"] = skm.f1_score(y, pred, average=avg, zero_division=0)
        out[f"{avg}_precision"] = skm.precision_score(y, pred, average=avg, zero_division=0)
        out[f"{avg}_recall"] = skm.recall_score(y, pred, average=avg, zero_division=0)
    out["per_class_f1"] = skm.f1_score(y, pred, average=None, zero_division=0)
    out["per_class_precision"] = skm.precision_score(y, pred, average=None, zero_division=0)
    out["per_class_recall"] = skm.recall_score(y, pred, average=None, zero_division=0)
    return out


def _check_against_sklearn(probs, targets, thresholds) -> None:
    m = multilabel_metrics(probs, targets, thresholds)
    sk = _sk(probs, targets, thresholds)
    for key in SCALARS:
        assert m[key] == pytest.approx(sk[key], abs=1e-12), key
    y, p = targets.numpy(), probs.numpy()
    aps = []
    for i, (name, c) in enumerate(m["per_class"].items()):
        assert name == str(i)
        assert c["support"] == int(y[:, i].sum())
        for key in ("f1", "precision", "recall"):
            assert c[key] == pytest.approx(sk[f"per_class_{key}"][i], abs=1e-12), (i, key)
        if y[:, i].any():
            aps.append(skm.average_precision_score(y[:, i], p[:, i]))
            assert c["ap"] == pytest.approx(aps[-1], abs=1e-12), i
        else:
            assert c["ap"] is None
    assert m["map"] == pytest.approx(float(np.mean(aps)), abs=1e-12)
    assert m["label_cardinality"] == pytest.approx(y.sum(1).mean())
    pred = p >= np.asarray(thresholds)
    assert m["predicted_cardinality"] == pytest.approx(pred.sum(1).mean())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1])
def test_scores_match_sklearn_with_one_threshold(seed, decimals):
    probs, targets = _data(seed, decimals=decimals)
    _check_against_sklearn(probs, targets, 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_scores_match_sklearn_with_per_class_thresholds(seed):
    probs, targets = _data(seed, decimals=1)
    thresholds = [0.2, 0.5, 0.4, 0.7, 0.55]
    _check_against_sklearn(probs, targets, thresholds)
    m = multilabel_metrics(probs, targets, torch.tensor(thresholds))
    assert [c["threshold"] for c in m["per_class"].values()] == pytest.approx(thresholds)


@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_matches_sklearn_with_ties(seed):
    for decimals in (None, 1, 0):
        probs, targets = _data(seed, n=80, k=6, decimals=decimals)
        ours = average_precision(probs, targets)
        assert ours.dtype == torch.float64 and ours.shape == (6,)
        for k in range(6):
            expected = skm.average_precision_score(targets[:, k].numpy(), probs[:, k].numpy())
            assert float(ours[k]) == pytest.approx(expected, abs=1e-12), (decimals, k)


def test_all_negative_class_is_left_out_of_the_map():
    probs, targets = _data(5, empty_class=True, decimals=1)
    ap = average_precision(probs, targets.bool())
    assert math.isnan(float(ap[1])) and not torch.isnan(ap[[0, 2, 3, 4]]).any()
    m = multilabel_metrics(probs, targets.float())
    assert m["classes_without_positives"] == 1
    assert m["per_class"]["1"]["ap"] is None and m["per_class"]["1"]["support"] == 0
    keep = [0, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_map = skm.average_precision_score(
            targets[:, keep].numpy(), probs[:, keep].numpy(), average="macro"
        )
    assert m["map"] == pytest.approx(sk_map, abs=1e-12)
    _check_against_sklearn(probs, targets, 0.5)


def test_result_is_json_serialisable_and_named():
    probs, targets = _data(7, k=3)
    m = multilabel_metrics(probs, targets, 0.4, classes=["cat", "dog", "car"])
    assert list(m["per_class"]) == ["cat", "dog", "car"]
    json.dumps(m)
    for key, value in m.items():
        if key != "per_class":
            assert type(value) in (float, int), key


def test_no_images_does_not_crash():
    m = multilabel_metrics(torch.zeros(0, 3), torch.zeros(0, 3))
    assert m["map"] == 0.0 and m["classes_without_positives"] == 3
    assert m["micro_f1"] == 0.0 and m["hamming_loss"] == 0.0 and m["subset_accuracy"] == 0.0
    assert m["per_class"]["0"]["ap"] is None
    json.dumps(m)
    assert best_thresholds(torch.zeros(0, 3), torch.zeros(0, 3)).tolist() == [0.5] * 3


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        multilabel_metrics(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        multilabel_metrics(torch.zeros(4, 3), torch.zeros(4, 3), thresholds=[0.5, 0.5])
    with pytest.raises(ValueError):
        multilabel_metrics(torch.zeros(4, 3), torch.zeros(4, 3), classes=["a"])


def _f1_at(p: np.ndarray, y: np.ndarray, t: float) -> float:
    return skm.f1_score(y, (p >= t).astype(int), zero_division=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1])
def test_best_thresholds_reach_the_best_f1(seed, decimals):
    probs, targets = _data(seed, decimals=decimals, empty_class=True)
    t = best_thresholds(probs, targets, default=0.3)
    assert t.shape == (5,) and float(t[1]) == 0.3  # no positive: the default
    for k in [0, 2, 3, 4]:
        p, y = probs[:, k].double().numpy(), targets[:, k].numpy()
        cuts = np.unique(p)
        best = max(_f1_at(p, y, c) for c in cuts)
        assert _f1_at(p, y, float(t[k])) == pytest.approx(best, abs=1e-12)
        # Strictly between the lowest score kept and the next lower distinct score.
        kept, dropped = p[p >= float(t[k])], p[p < float(t[k])]
        assert 0 < float(t[k]) <= 1
        assert kept.min() > float(t[k])
        if dropped.size:
            assert dropped.max() < float(t[k])
            assert float(t[k]) == pytest.approx((kept.min() + dropped.max()) / 2)
        # Ties in F1 go to the higher threshold: no higher cut reaches the same F1.
        higher = cuts[cuts > kept.min()]
        assert all(_f1_at(p, y, c) < best - 1e-12 for c in higher)


def test_best_threshold_hand_example():
    probs = torch.tensor([[0.9, 0.8], [0.7, 0.1], [0.4, 0.2], [0.2, 0.6]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1]])
    # Class 0: cuts 0.9 (F1 2/4), 0.7 (4/5), 0.4 (4/6), 0.2 (6/7): best keeps all, t = 0.2 / 2.
    # Class 1: cuts 0.8 (0), 0.6 (2/3), 0.2 (2/4), 0.1 (2/5): t = (0.6 + 0.2) / 2.
    t = best_thresholds(probs, targets)
    assert t.tolist() == pytest.approx([0.1, 0.4])
