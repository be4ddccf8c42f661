"""``imgcls evaluate EXPERIMENT``: each finished run's ``best.pt`` scored on one split, the mean,
std and 95% CI of its scores, and the ensemble of the runs' models (their softmax probabilities
averaged per image) when they all scored the same images (a test split, or a repeat's shared
validation split; a cross-validation's folds each validate on other images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.data.splits import load_split
from imgcls.deploy.load import evaluation_overrides, load_model
from imgcls.engine.metrics import classification_metrics
from imgcls.engine.multilabel_metrics import multilabel_metrics
from imgcls.errors import ImgclsError
from imgcls.experiments.plan import KINDS, load_experiment
from imgcls.experiments.stats import Spread, spread
from imgcls.experiments.status import FINISHED, statuses
from imgcls.files import atomic_write_text
from imgcls.models.user import CodeConsent
from imgcls.report.multilabel import binary_cross_entropy
from imgcls.report.predictions import collect_predictions
from imgcls.report.tables import csv_text

SCORES = ("accuracy", "loss", "macro_f1", "balanced_acc")
# several labels per image: exact match, binary cross-entropy, threshold-free mAP, the F1s
MULTILABEL_SCORES = ("map", "micro_f1", "macro_f1", "exact_match", "loss")


def evaluate_experiment(path: str | Path, *, split: str = "test", device: str = "auto",
                        batch_size: int | None = None, tta: str | None = None,
                        output: str | Path | None = None,
                        code: CodeConsent | None = None) -> dict[str, Any]:
    """Score every finished run's best.pt on ``split``; writes ``evaluation.json`` and
    ``runs.csv`` to ``output`` (default ``EXPERIMENT/eval/<split>``) and returns the first."""
    experiment = load_experiment(path)
    found = statuses(experiment)
    done = [s for s in found if s.state == FINISHED]
    if not done:
        raise ImgclsError(f"no finished runs in {experiment.path} to evaluate: "
                          f"{', '.join(s.describe() for s in found)}")
    overrides = evaluation_overrides(batch_size=batch_size, tta=tta)
    rows, probs, thresholds, shared = [], [], [], None
    for status in done:
        best = status.run_dir / "checkpoints" / "best.pt"
        loaded = load_model(best, device=device, overrides=overrides, code=code)
        preds = collect_predictions(loaded, status.run_dir, split=split)
        rows.append({"run": status.member.name, "images": len(preds.labels),
                     **scores(preds.probs, preds.labels, preds.classes, preds.thresholds)})
        key = (_images(status.run_dir, split), preds.labels.tobytes(), tuple(preds.classes))
        shared = key if shared is None or shared == key else False
        probs.append(preds.probs)
        thresholds.append(preds.thresholds)
    names = MULTILABEL_SCORES if preds.multilabel else SCORES
    result: dict[str, Any] = {
        "experiment": str(experiment.path), "kind": experiment.kind, "split": split,
        "checkpoint": "best.pt", "runs": rows, "scores": list(names),
        "not_evaluated": [s.describe() for s in found if s.state != FINISHED],
        "stats": {k: spread([r[k] for r in rows]).to_dict() for k in names},
    }
    if shared:
        # several labels: the ensemble decides at the runs' mean thresholds
        mean_thresholds = np.mean(thresholds, axis=0) if preds.multilabel else None
        result["ensemble"] = {"models": len(probs), "images": len(preds.labels),
                              **scores(np.mean(probs, axis=0), preds.labels, preds.classes,
                                       mean_thresholds)}
    else:
        result["ensemble"] = None
        result["ensemble_note"] = (f"no ensemble: the {KINDS[experiment.kind]}s scored "
                                   f"different {split} images")
    _write(Path(output) if output else experiment.path / "eval" / split, result)
    return result


def scores(probs: np.ndarray, labels: np.ndarray, classes: list[str],
           thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, mean cross-entropy, macro-F1 and balanced accuracy of N x K probabilities; with
    ``thresholds`` (several labels per image: ``labels`` are 0/1 rows) :data:`MULTILABEL_SCORES`
    at them."""
    if thresholds is not None:
        m = multilabel_metrics(torch.from_numpy(probs), torch.from_numpy(labels), thresholds)
        return {"map": m["map"], "micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"],
                "exact_match": m["subset_accuracy"],
                "loss": binary_cross_entropy(probs, labels)}
    k = len(classes)
    flat = labels.astype(np.int64) * k + probs.argmax(axis=1)
    confusion = torch.from_numpy(np.bincount(flat, minlength=k * k).reshape(k, k))
    metrics = classification_metrics(confusion, classes)
    p_true = probs[np.arange(len(labels)), labels]
    return {"accuracy": metrics["accuracy"],
            "loss": float(-np.log(np.clip(p_true, 1e-12, None)).mean()),
            "macro_f1": metrics["macro_f1"], "balanced_acc": metrics["balanced_acc"]}


def _images(run_dir: Path, split: str) -> Any:
    """What identifies the images a run scores on ``split``: the list split.json keeps for it,
    else the source's own (fixed) test split."""
    record = load_split(run_dir / "split.json") if (run_dir / "split.json").is_file() else {}
    if split in record:
        return tuple(record[split])
    return f"own {split} split of {record.get('source', '?')}"


def _write(folder: Path, result: dict[str, Any]) -> None:
    result["output"] = str(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "evaluation.json", json.dumps(result, indent=2) + "\n")
        ensemble = [{"run": "ensemble", **result["ensemble"]}] if result["ensemble"] else []
        atomic_write_text(folder / "runs.csv", csv_text(result["runs"] + ensemble,
                                                        ["run", "images", *result["scores"]]))
    except OSError as exc:
        raise ImgclsError(f"cannot write the evaluation to {folder}: "
                          f"{exc.strerror or exc}") from None


def format_evaluation(result: dict[str, Any]) -> str:
    """The printed table: each run and the ensemble, then each score's mean ± std and 95% CI
    over the runs."""
    names = result.get("scores", SCORES)
    lines = [f"{result['experiment']}: best.pt of {len(result['runs'])} "
             f"{KINDS[result['kind']]}s on the {result['split']} split",
             f"{'run':<10}{'images':>7}" + "".join(f"{k:>14}" for k in names)]
    ensemble = result["ensemble"]
    shown = result["runs"] + ([{"run": "ensemble", **ensemble}] if ensemble else [])
    for r in shown:
        lines.append(f"{r['run']:<10}{r['images']:>7}"
                     + "".join(f"{r[k]:>14.4f}" for k in names))
    if ensemble:
        lines.append(f"ensemble: the mean probabilities of the {ensemble['models']} models")
    else:
        lines.append(result["ensemble_note"])
    for key in names:
        lines.append(f"{key + ':':<14}{Spread(**result['stats'][key]).describe()}")
    if result["not_evaluated"]:
        lines.append(f"not evaluated (not finished): {', '.join(result['not_evaluated'])}")
    lines.append(f"evaluation: {result['output']}/evaluation.json")
    return "\n".join(lines)
