"""``imgcls evaluate CHECKPOINT``: a checkpoint scored on a split of its data
(:func:`imgcls.deploy.scoring.score`), its metrics and their report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgcls.deploy.load import LoadedModel, evaluation_overrides, load_model
from imgcls.deploy.scoring import SPLITS, score
from imgcls.engine.evaluation import EvalResult, eval_result
from imgcls.engine.metrics import classification_metrics
from imgcls.engine.multilabel_metrics import multilabel_metrics
from imgcls.engine.report import write_eval_report
from imgcls.engine.setup import progress_enabled
from imgcls.errors import ImgclsError
from imgcls.losses import create_loss
from imgcls.models.user import CodeConsent
from imgcls.runs.folder import run_dir_of


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "val",
    output: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    trust_pickle: bool = False,
    tta: str | None = None,
    code: CodeConsent | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes the metrics JSON and the confusion matrix (CSV,
    PNG) of a single-label model.

    Returns ``{"top1", "top5", "loss", "n", "macro_f1", "balanced_acc", "per_class", ...}``
    with ``per_class`` holding each class's precision, recall, F1 and support. A multi-label
    model's (:func:`multilabel_summary`) has ``map`` and the scores at its decision thresholds
    (the checkpoint's, or ``threshold`` for every class).
    """
    if split not in SPLITS:
        raise ImgclsError(f"--split must be val or test, got {split!r}")
    path = Path(checkpoint)
    overrides = evaluation_overrides(data=data, batch_size=batch_size, tta=tta)
    loaded = load_model(path, device=device, trust_pickle=trust_pickle, overrides=overrides,
                        code=code)
    cfg = loaded.config
    # The training run's evaluation: the same speed switches and test-time augmentation.
    scores = score(loaded, split=split, data=data, progress=progress_enabled(cfg))
    multilabel = loaded.record.multilabel
    if threshold is not None and not multilabel:
        raise ImgclsError("--threshold is for models with several labels per image; "
                          f"{path} picks one class per image")
    result = eval_result(scores.batches, create_loss(cfg.optim, multilabel=multilabel).to(
        loaded.device), len(scores.classes), loaded.device)
    out_dir = Path(output) if output is not None else (
        run_dir_of(path) / "eval" / f"{path.stem}-{split}")
    if result.multilabel:
        summary = multilabel_summary(loaded, split, result, scores.classes, out_dir, threshold)
    else:
        summary = _summary(loaded, split, result, scores.classes, out_dir)
    try:
        write_eval_report(out_dir, summary, None if result.multilabel else result.confusion,
                          scores.classes)
    except OSError as exc:
        raise ImgclsError(f"cannot write the evaluation report to {out_dir}: {exc}") from None
    return summary


def _summary(loaded: LoadedModel, split: str, result: EvalResult, classes: list[str],
             out_dir: Path) -> dict[str, Any]:
    scores = classification_metrics(result.confusion, classes)
    return {
        "checkpoint": str(loaded.path), "data": loaded.config.data.source, "split": split,
        "epoch": loaded.record.epoch,
        "top1": result.top1, "top5": result.top5, "loss": result.loss, "n": result.n,
        **{key: scores[key] for key in ("macro_f1", "balanced_acc", "macro_precision",
                                         "macro_recall", "weighted_f1")},
        "per_class": scores["per_class"],
        "output": str(out_dir),
    }


def multilabel_summary(loaded: LoadedModel, split: str, result: EvalResult, classes: list[str],
                       out_dir: Path, threshold: float | None = None) -> dict[str, Any]:
    """A multi-label evaluation: mAP, micro and macro F1 (precision, recall) at the decision
    thresholds, exact-match (subset) accuracy as ``top1`` too, Hamming loss, per-class AP, P,
    R, F1, threshold and support."""
    assert result.scores is not None and result.targets is not None
    thresholds = loaded.record.decision_thresholds(threshold)
    m = multilabel_metrics(result.scores, result.targets, thresholds, classes)
    return {
        "checkpoint": str(loaded.path), "data": loaded.config.data.source, "split": split,
        "epoch": loaded.record.epoch, "multilabel": True,
        "threshold": "override" if threshold is not None else (
            "checkpoint" if loaded.record.thresholds else "0.5"),
        "top1": m["subset_accuracy"], "top5": None, "loss": result.loss, "n": result.n,
        **{key: m[key] for key in ("map", "micro_f1", "macro_f1", "subset_accuracy",
                                   "hamming_loss", "micro_precision", "micro_recall",
                                   "macro_precision", "macro_recall", "label_cardinality",
                                   "predicted_cardinality", "classes_without_positives")},
        "per_class": m["per_class"],
        "output": str(out_dir),
    }


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=None)
