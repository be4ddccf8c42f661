"""A multi-label run's sections of ``imgcls report RUN``: the scores at the checkpoint's
thresholds (as ``imgcls evaluate`` computes them: :func:`multilabel_metrics`), per class with
AP and calibration, precision-recall curves, label co-occurrence (true and predicted), and the
images with the worst misses. Every number is also in a CSV or JSON file beside the page."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imgcls.engine.multilabel_metrics import multilabel_metrics
from imgcls.report import figures, page, tables
from imgcls.report import multilabel as ml
from imgcls.report import multilabel_figures as mlf
from imgcls.report.calibration import BINS, Calibration
from imgcls.report.folder import Folder
from imgcls.report.predictions import Predictions

SHOWN = 12  # images in the worst-misses grid
MAX_CLASS_RELIABILITY = 12  # classes given their own reliability diagram; more: pooled only
Section = tuple[str, str, str]


def multilabel_sections(out: Folder, preds: Predictions) -> tuple[dict[str, Any], list[Section]]:
    """The scores for ``summary.json`` and the page's multi-label sections (between the
    training curves and the provenance); writes ``predictions.csv`` and each section's files."""
    assert preds.thresholds is not None
    probs, targets, classes = preds.probs, preds.labels, preds.classes
    m = multilabel_metrics(torch.from_numpy(probs), torch.from_numpy(targets), preds.thresholds,
                           classes)
    cals = ml.class_calibrations(probs, targets)
    pooled = ml.pooled_calibration(probs, targets)
    for cal, values in zip(cals, m["per_class"].values(), strict=True):
        values["ece"] = cal.ece
    predicted = probs >= preds.thresholds
    scores = {"multilabel": True, **{k: v for k, v in m.items() if k != "per_class"},
              "loss": ml.binary_cross_entropy(probs, targets), "ece": pooled.ece,
              "ece_bins": BINS, "per_class": m["per_class"]}
    out.text("predictions.csv", _predictions_csv(preds, predicted))
    sections = [
        ("per-class", "Per-class scores", _per_class_html(out, m)),
        ("pr-curves", "Precision-recall curves", _pr_html(out, preds, m)),
        ("cooccurrence", "Label co-occurrence", _cooccurrence_html(out, targets, predicted,
                                                                   classes)),
        ("worst-misses", "Worst misses", _misses_html(out, preds, predicted)),
        ("calibration", "Calibration per class", _calibration_html(out, cals, pooled, classes)),
    ]
    return scores, sections


def summary_html(s: dict[str, Any]) -> str:
    """The headline scores of a multi-label page, at its top."""
    pairs = [("images scored", s["images"]), ("mAP (mean average precision)", s["map"]),
             ("micro-F1", s["micro_f1"]), ("macro-F1", s["macro_f1"]),
             ("exact match (all of an image's labels right)", s["subset_accuracy"]),
             ("Hamming loss (labels wrong)", s["hamming_loss"]),
             ("micro precision", s["micro_precision"]), ("micro recall", s["micro_recall"]),
             ("labels per image: true / predicted",
              f"{s['label_cardinality']:.3f} / {s['predicted_cardinality']:.3f}"),
             ("mean binary cross-entropy", s["loss"]),
             (f"expected calibration error, all labels ({s['ece_bins']} bins)", s["ece"])]
    if s["classes_without_positives"]:
        pairs.append(("classes without a positive image (no AP)",
                      s["classes_without_positives"]))
    note = ('<p class="note">F1s, exact match and Hamming loss count a label as predicted when '
            "its probability (sigmoid) is at least its class's threshold, chosen on the "
            "validation images to maximise that class's F1 (the checkpoint's; scores of the "
            "validation split are hence optimistic). mAP averages AP over the classes with a "
            "positive image; it needs no threshold.</p>")
    return page.key_values(pairs) + note + page.files_note(["summary.json", "predictions.csv"])


def _predictions_csv(preds: Predictions, predicted: np.ndarray) -> str:
    """Every scored image: its index in the split, true and predicted labels, summed error and
    each class's probability."""
    names = [tables.csv_cell(f"p_{c}") for c in preds.classes]
    lines = [",".join(["index", "true", "predicted", "error", *names])]
    error = ml.miss_error(preds.probs, preds.labels)
    for i, (y, p, e, row) in enumerate(zip(preds.labels, predicted, error, preds.probs,
                                           strict=True)):
        cells = [tables.csv_cell(ml.label_set(y, preds.classes)),
                 tables.csv_cell(ml.label_set(p, preds.classes)), f"{e:.6g}"]
        lines.append(",".join([str(i), *cells, *(f"{q:.6g}" for q in row)]))
    return "\n".join(lines) + "\n"


def _per_class_html(out: Folder, m: dict[str, Any]) -> str:
    rows = [{"class": name, **v} for name, v in m["per_class"].items()]
    eces = [r["ece"] for r in rows]
    rows.append({"class": "micro avg", "precision": m["micro_precision"],
                 "recall": m["micro_recall"], "f1": m["micro_f1"],
                 "support": sum(r["support"] for r in rows)})
    rows.append({"class": "macro avg", "ap": m["map"], "precision": m["macro_precision"],
                 "recall": m["macro_recall"], "f1": m["macro_f1"],
                 "ece": float(np.mean(eces)) if eces else None})
    columns = ["class", "ap", "precision", "recall", "f1", "threshold", "support", "ece"]
    name = out.text("per_class.csv", tables.csv_text(rows, columns))
    return (page.table(rows, columns, headers=["class", "AP", "precision", "recall", "F1",
                                               "threshold", "images with it", "ECE"],
                       avg_rows=("micro avg", "macro avg"))
            + '<p class="note">AP: average precision over every threshold (scikit-learn\'s '
            "average_precision_score, no interpolation), empty for a class without a positive "
            "image. Precision, recall and F1 at the class's threshold (zero divisions count as "
            "0). The micro average pools every (image, label) decision; the macro average weighs "
            "each class equally (its AP is the mAP). ECE: the class's expected calibration "
            "error (see Calibration per class).</p>" + page.files_note([name, "summary.json"]))


def _pr_html(out: Folder, preds: Predictions, m: dict[str, Any]) -> str:
    per_class = m["per_class"]
    curves = []
    for k, name in enumerate(preds.classes):
        curve = ml.pr_curve(preds.probs[:, k], preds.labels[:, k])
        if curve is not None:
            v = per_class[name]
            curves.append((name, curve.thinned(), v["ap"], (v["recall"], v["precision"])))
    rows = [{"class": name, "threshold": t, "recall": r, "precision": p}
            for name, c, _, _ in curves
            for t, r, p in zip(c.threshold[1:], c.recall[1:], c.precision[1:], strict=True)]
    csv_name = out.text("pr_curves.csv", tables.csv_text(
        rows, ["class", "threshold", "recall", "precision"]))
    if not curves:
        return ('<p class="note">no class has a positive image in this split: no curves.</p>'
                + page.files_note([csv_name]))
    shown = curves
    lead = f"<p>Each class with a positive image ({len(curves)} of {len(preds.classes)})"
    if len(curves) > mlf.MAX_PANELS:  # the weakest classes: those the reader needs to see
        shown = sorted(curves, key=lambda c: (c[2], c[0]))[:mlf.MAX_PANELS]
        lead = (f"<p>The {len(shown)} classes with the lowest AP of the {len(curves)} with a "
                "positive image")
    png = out.png("pr_curves.png", mlf.pr_curves_png(shown))
    lead += (": precision against recall as the threshold falls from the highest score to the "
             "lowest; the area under each curve is its AP, the dot is where the checkpoint's "
             f"threshold puts it. Curves of over {ml.MAX_POINTS} points are thinned to "
             f"{ml.MAX_POINTS} evenly spaced ones.</p>")
    return (lead + page.image((out.path / png).read_bytes(), "precision-recall curves", png)
            + page.files_note([csv_name]))


def _cooccurrence_html(out: Folder, targets: np.ndarray, predicted: np.ndarray,
                       classes: list[str]) -> str:
    true, pred = ml.cooccurrence(targets), ml.cooccurrence(predicted)
    vmax = float(max(true.max(initial=0), pred.max(initial=0)))  # one colour, one count
    names, figs = [], []
    for what, matrix in (("true", true), ("predicted", pred)):
        names.append(out.text(f"cooccurrence_{what}.csv", tables.matrix_csv_text(
            matrix.tolist(), classes, corner="label \\ label")))
        png = out.png(f"cooccurrence_{what}.png", mlf.cooccurrence_png(
            matrix, classes, f"{what} labels: images with both", vmax))
        figs.append(page.image((out.path / png).read_bytes(), f"co-occurrence, {what} labels",
                               png))
    pairs = ml.top_pairs(true, pred, classes)
    columns = ["label_a", "label_b", "true", "predicted"]
    names.append(out.text("cooccurrence_pairs.csv", tables.csv_text(pairs, columns)))
    lead = ("<p>How many images have both label i and label j (the diagonal: how many have "
            "label i), in the true labels and in the predicted ones (at the thresholds). A pair "
            "predicted together far more often than it is true is a habit the model "
            "learned.</p>")
    pair_html = (page.table(pairs, columns, headers=["label", "with label", "images (true)",
                                                     "images (predicted)"])
                 if pairs else '<p class="note">no image has two labels.</p>')
    return (lead + page.row(*figs) + "<h3>Most frequent pairs</h3>" + pair_html
            + page.files_note(names))


def _misses_html(out: Folder, preds: Predictions, predicted: np.ndarray) -> str:
    probs, targets, classes = preds.probs, preds.labels, preds.classes
    chosen = ml.worst_misses(probs, targets, SHOWN)
    error = ml.miss_error(probs, targets)
    wrong = int((predicted != (targets > 0)).any(axis=1).sum())
    rows = []
    for i in chosen:
        y, p = targets[i] > 0, predicted[i]
        rows.append({"index": int(i), "true": ml.label_set(y, classes),
                     "predicted": ml.label_set(p, classes),
                     "missed": ml.label_set(y & ~p, classes),
                     "extra": ml.label_set(p & ~y, classes), "error": float(error[i])})
    columns = ["index", "true", "predicted", "missed", "extra", "error"]
    name = out.text("worst_misses.csv", tables.csv_text(rows, columns))
    if not rows:
        return '<p class="note">no images in this split.</p>' + page.files_note([name])
    captions = [f"true {_clip(r['true'])}\npred {_clip(r['predicted'])}\nerror "
                f"{r['error']:.2f}" for r in rows]
    thumbs = [preds.thumbnail(int(i)) for i in chosen]
    png = out.png("worst_misses.png", figures.grid_png(thumbs, captions))
    cells = [(figures.thumbnail_png(t), f"image {r['index']}: true {r['true']}, predicted "
              f"{r['predicted']}", c, r["missed"] == r["extra"] == "(none)")
             for t, r, c in zip(thumbs, rows, captions, strict=True)]
    lead = (f"<p>The {len(rows)} images with the largest summed error "
            "&sum;<sub>k</sub> |label<sub>k</sub> &minus; probability<sub>k</sub>| (0: every "
            f"label certain and right; {len(classes)}: every one certain and wrong); {wrong} of "
            f"{len(targets)} images have at least one label wrong at the thresholds. Each shows "
            "its true labels, its predicted ones (green: all right) and its error.</p>")
    return (lead + page.thumbnails(cells) + page.files_note([png], "the grid as one picture")
            + page.table(rows, columns, headers=["index in split", "true labels",
                                                 "predicted labels", "missed", "extra",
                                                 "error"])
            + page.files_note([name]))


def _clip(text: str, most: int = 20) -> str:
    """A label set short enough for a 128 px thumbnail's caption (the table has it whole)."""
    return text if len(text) <= most else text[:most - 3] + "..."


def _calibration_html(out: Folder, cals: list[Calibration], pooled: Calibration,
                      classes: list[str]) -> str:
    pooled_name = out.text("calibration.csv", tables.csv_text(pooled.rows()))
    per_class = [{"class": name, **row} for name, cal in zip(classes, cals, strict=True)
                 for row in cal.rows()]
    class_name = out.text("calibration_per_class.csv", tables.csv_text(per_class))
    summary = [{"class": name, "ece": cal.ece,
                "mean_probability": float(np.sum(cal.count * cal.confidence)
                                          / max(cal.count.sum(), 1)),
                "fraction_positive": float(np.sum(cal.count * cal.accuracy)
                                           / max(cal.count.sum(), 1))}
               for name, cal in zip(classes, cals, strict=True)]
    note = (f"<p>Does a label given probability 0.8 come true eight times in ten? Each class's "
            f"sigmoid probabilities are put in {len(pooled.count)} equal-width bins over (0, 1]; "
            "a bin's fraction of images having the label is compared with its mean probability, "
            "and ECE = &sum;<sub>m</sub> |B<sub>m</sub>|/n &middot; |fraction positive"
            "(B<sub>m</sub>) &minus; mean probability(B<sub>m</sub>)| (Guo et al., 2017, with "
            f"the label as the outcome). All N &times; K label probabilities together: ECE "
            f"<b>{pooled.ece:.4f}</b>.</p>")
    pooled_png = out.png("reliability.png", figures.reliability_png(pooled, figures.LABEL_WORDS))
    shown = [page.image((out.path / pooled_png).read_bytes(), "reliability, all labels",
                        pooled_png)]
    if len(cals) <= MAX_CLASS_RELIABILITY:
        each = out.png("reliability_per_class.png", mlf.class_reliability_png(cals, classes))
        shown.append(page.image((out.path / each).read_bytes(), "reliability per class", each))
    else:
        note += (f'<p class="note">{len(cals)} classes: one diagram for all labels; each '
                 "class's bins are in calibration_per_class.csv.</p>")
    return (note + page.row(*shown)
            + page.table(summary, ["class", "ece", "mean_probability", "fraction_positive"],
                         headers=["class", "ECE", "mean probability", "fraction with the label"])
            + page.files_note([pooled_name, class_name]))
