"""``imgcls report``: a run's page (what the model gets right and wrong on one split) and the
page comparing several runs. Each page is ``index.html`` plus the PNGs and CSV/JSON files that
hold every number it shows."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import imgcls
from imgcls.errors import ImgclsError
from imgcls.metric_table import METRICS, names
from imgcls.models.user import CodeConsent
from imgcls.report import figures, heatmaps, page, tables
from imgcls.report.calibration import BINS, calibration
from imgcls.report.folder import Folder
from imgcls.report.multilabel_page import multilabel_sections, summary_html
from imgcls.report.predictions import Predictions, collect_predictions, load_for_report
from imgcls.report.selective import accuracy_coverage, curve_rows, target_rows
from imgcls.runs.files import plot_curves, read_metrics, results_csv_text

SHOWN = 12  # images in each grid: top losses, and correct predictions


# --------------------------------------------------------------------------- one run


def report_run(run_dir: str | Path, *, split: str = "val", data: str | None = None,
               output: str | Path | None = None, device: str = "auto",
               code: CodeConsent | None = None) -> Path:
    """Write ``RUN_DIR/report/index.html`` (or ``output/index.html``) for best.pt (else last.pt)
    on ``split``; returns the page's path.

    >>> report_run("runs/NAME", split="val")  # doctest: +SKIP
    PosixPath('runs/NAME/report/index.html')
    """
    run = Path(run_dir)
    start = time.perf_counter()
    loaded = load_for_report(run, data=data, device=device, code=code)
    preds = collect_predictions(loaded, run, split=split, data=data)
    scored_s = time.perf_counter() - start
    out = Folder(Path(output) if output is not None else run / "report")
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []

    record = loaded.record
    summary: dict[str, Any] = {
        "run": str(run), "checkpoint": str(loaded.path), "epoch": record.epoch,
        "split": split, "data": preds.source, "images": len(preds.labels),
    }
    if preds.multilabel:  # its own sections: a confusion matrix needs one label per image
        scores, middle = multilabel_sections(out, preds)
        summary_section = summary_html
    else:
        scores, middle = _single_label_sections(out, preds, loaded)
        summary_section = _summary_html
    summary.update({
        **scores, "split_sizes": _split_sizes(run, split, len(preds.labels)),
        "provenance": record.provenance, "report_device": str(loaded.device),
        "epoch_time_s_mean": _mean(rows, "epoch_time_s"),
        "elapsed_s": rows[-1].get("elapsed_s") if rows else None,
        "scoring_s": scored_s, "imgcls": imgcls.__version__, "torch": str(torch.__version__),
    })
    sections = [
        ("summary", "Summary", summary_section(summary)),
        ("curves", "Training curves", _curves_html(out, rows, run.name)),
        *middle,
        ("provenance", "Data, provenance and config", _provenance_html(summary, loaded.config)),
    ]
    summary["report_s"] = time.perf_counter() - start
    out.text("summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    kind = "classes, several labels per image" if preds.multilabel else "classes"
    subtitle = (f"{loaded.path} (epoch {record.epoch}) on the {split} split of {preds.source}: "
                f"{len(preds.labels)} images, {len(preds.classes)} {kind}; imgcls "
                f"{imgcls.__version__}")
    out.text("index.html", page.render(f"imgcls report: {run.name}", subtitle, sections))
    return out.path / "index.html"


def _single_label_sections(out: Folder, preds: Predictions, loaded: Any
                           ) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The scores for ``summary.json`` and the sections of a page for one label per image;
    writes ``predictions.csv`` and each section's files."""
    confusion = preds.confusion()
    classes = preds.classes
    per_class, scores = tables.per_class_rows(confusion, classes)
    cal = calibration(preds.confidence, preds.predicted == preds.labels)
    curve = accuracy_coverage(preds.confidence, preds.predicted == preds.labels)
    targets = target_rows(curve)
    pairs = tables.confused_pairs(confusion, classes)
    scores = {**scores, "loss": float(preds.loss.mean()), "ece": cal.ece, "ece_bins": BINS,
              "min_confidence_for": targets}
    out.text("predictions.csv", _predictions_csv(preds))
    return scores, [
        ("confusion", "Confusion matrix", _confusion_html(out, confusion, classes, pairs)
         + heatmaps.confused_pairs_heatmaps_html(loaded, preds, pairs)),
        ("per-class", "Per-class scores", _per_class_html(out, per_class, classes)),
        ("calibration", "Calibration", _calibration_html(out, cal)),
        ("coverage", "Answering only when sure", _coverage_html(out, curve, targets)),
        ("top-losses", "Most confidently wrong", _images_html(out, preds, wrong=True,
                                                              loaded=loaded)),
        ("correct", "A sample of correct predictions", _images_html(out, preds, wrong=False)),
    ]


def _predictions_csv(preds: Predictions) -> str:
    """Every scored image: its index in the split, true and predicted class, probabilities."""
    predicted, confidence, loss = preds.predicted, preds.confidence, preds.loss
    p_true = preds.probs[np.arange(len(preds.labels)), preds.labels]
    lines = ["index,true,predicted,p_predicted,p_true,loss"]
    names = [tables.csv_cell(c) for c in preds.classes]
    lines += [f"{i},{names[t]},{names[p]},{c:.6g},{q:.6g},{x:.6g}" for i, (t, p, c, q, x) in
              enumerate(zip(preds.labels, predicted, confidence, p_true, loss, strict=True))]
    return "\n".join(lines) + "\n"


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return float(np.mean(values)) if values else None


def _split_sizes(run: Path, split: str, scored: int) -> dict[str, int]:
    sizes: dict[str, int] = {}
    try:
        record = json.loads((run / "split.json").read_text(encoding="utf-8"))
        sizes = {p: len(record[p]) for p in ("train", "val", "test")
                 if isinstance(record.get(p), list)}
    except (OSError, ValueError):
        pass
    sizes[f"{split} (scored here)"] = scored
    return sizes


def _summary_html(s: dict[str, Any]) -> str:
    pairs = [("images scored", s["images"]), ("accuracy", s["accuracy"]),
             ("balanced accuracy", s["balanced_acc"]), ("macro-F1", s["macro_f1"]),
             ("weighted F1", s["weighted_f1"]), ("mean cross-entropy", s["loss"]),
             (f"expected calibration error ({s['ece_bins']} bins)", s["ece"])]
    return page.key_values(pairs) + page.files_note(["summary.json", "predictions.csv"])


def _curves_html(out: Folder, rows: list[dict[str, Any]], name: str) -> str:
    if not rows:
        return '<p class="note">no metrics.jsonl in the run folder: no curves.</p>'
    csv_name = out.text("results.csv", results_csv_text(rows))
    plot_curves({name: rows}, out.path / "curves.png")
    png = (out.path / "curves.png").read_bytes()
    return (page.image(png, "loss, accuracy and learning rate per epoch", "curves.png")
            + page.files_note([csv_name]))


def _confusion_html(out: Folder, confusion: torch.Tensor, classes: list[str],
                    pairs: list[dict]) -> str:
    counts = confusion.to(torch.int64)
    rates = (counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)).tolist()
    names = [
        out.text("confusion_matrix.csv", tables.matrix_csv_text(counts.tolist(), classes)),
        out.text("confusion_matrix_normalized.csv", tables.matrix_csv_text(rates, classes)),
        out.text("confused_pairs.csv", tables.csv_text(
            pairs, ["true", "predicted", "count", "fraction_of_true"])),
    ]
    raw = out.png("confusion_matrix.png", figures.confusion_png(confusion, classes,
                                                                normalized=False))
    norm = out.png("confusion_matrix_normalized.png", figures.confusion_png(
        confusion, classes, normalized=True))
    pair_html = (page.table(pairs, ["true", "predicted", "count", "fraction_of_true"],
                            headers=["true", "predicted as", "images", "fraction of true class"])
                 if pairs else '<p class="note">no confusions: every image was right.</p>')
    return (page.row(page.image((out.path / raw).read_bytes(), "confusion matrix, counts", raw),
                     page.image((out.path / norm).read_bytes(), "confusion matrix, row-normalised",
                                norm))
            + "<h3>Most-confused pairs</h3>" + pair_html + page.files_note(names))


def _per_class_html(out: Folder, rows: list[dict], classes: list[str]) -> str:
    columns = ["class", "precision", "recall", "f1", "support"]
    name = out.text("per_class.csv", tables.csv_text(rows, columns))
    return (page.table(rows, columns, headers=["class", "precision", "recall", "F1", "support"],
                       avg_rows=("macro avg", "weighted avg"))
            + '<p class="note">Zero divisions count as 0 (scikit-learn\'s zero_division=0); the '
            "macro average weighs every class equally, the weighted one by support.</p>"
            + page.files_note([name]))


def _calibration_html(out: Folder, cal: Any) -> str:
    rows = cal.rows()
    name = out.text("calibration.csv", tables.csv_text(rows))
    png = out.png("reliability.png", figures.reliability_png(cal))
    note = (f"<p>Expected calibration error <b>{cal.ece:.4f}</b>: the standard definition "
            f"(Guo et al., 2017) with {len(rows)} equal-width bins of the top-1 confidence over "
            "(0, 1], ECE = &sum;<sub>m</sub> |B<sub>m</sub>|/n &middot; |accuracy(B<sub>m</sub>)"
            " &minus; mean confidence(B<sub>m</sub>)|. 0 is perfectly calibrated.</p>")
    shown = [r for r in rows if r["count"]]
    return (note + page.image((out.path / png).read_bytes(), "reliability diagram", png)
            + page.table(shown, ["bin_lower", "bin_upper", "count", "accuracy",
                                 "mean_confidence"],
                         headers=["bin from (excl.)", "to (incl.)", "images", "accuracy",
                                  "mean confidence"])
            + page.files_note([name]))


def _coverage_html(out: Folder, curve: Any, targets: list[dict]) -> str:
    columns = ["target_accuracy", "min_confidence", "coverage", "accuracy", "kept"]
    names = [out.text("accuracy_coverage.csv", tables.csv_text(curve_rows(curve))),
             out.text("min_confidence.csv", tables.csv_text(targets, columns))]
    png = out.png("accuracy_coverage.png", figures.accuracy_coverage_png(curve, targets))
    note = ("<p><code>imgcls predict --min-confidence P</code> answers <i>unknown</i> when the "
            "top-1 probability is below P. Below: the accuracy of the images it would still "
            "answer against their share, and the lowest P that keeps each target accuracy on "
            "this split (none: no P reaches it). P is chosen on these images, so expect a little "
            "less on new ones.</p>")
    return (note + page.image((out.path / png).read_bytes(), "accuracy against coverage", png)
            + page.table(targets, columns, headers=["target accuracy", "min confidence P",
                                                    "coverage", "accuracy", "images kept"])
            + page.files_note(names))


def _images_html(out: Folder, preds: Predictions, *, wrong: bool, loaded: Any = None) -> str:
    predicted, labels, probs, loss = preds.predicted, preds.labels, preds.probs, preds.loss
    if wrong:
        candidates = np.flatnonzero(predicted != labels)
        chosen = candidates[np.argsort(-loss[candidates], kind="stable")][:SHOWN]
    else:
        candidates = np.flatnonzero(predicted == labels)
        rng = np.random.default_rng(0)  # the same sample every time the page is rebuilt
        chosen = np.sort(rng.choice(candidates, size=min(SHOWN, len(candidates)),
                                    replace=False)) if len(candidates) else candidates
    stem = "top_losses" if wrong else "correct_samples"
    rows = [{"index": int(i), "true": preds.classes[labels[i]],
             "predicted": preds.classes[predicted[i]], "p_predicted": float(probs[i].max()),
             "p_true": float(probs[i, labels[i]]), "loss": float(loss[i])} for i in chosen]
    columns = ["index", "true", "predicted", "p_predicted", "p_true", "loss"]
    name = out.text(f"{stem}.csv", tables.csv_text(rows, columns))
    if not rows:
        what = "no wrong predictions" if wrong else "no correct predictions"
        return f'<p class="note">{what} on this split.</p>' + page.files_note([name])
    captions = [f"true {r['true']} ({r['p_true']:.2f})\npred {r['predicted']} "
                f"({r['p_predicted']:.2f})" for r in rows]
    thumbs = [preds.thumbnail(int(i)) for i in chosen]
    png = out.png(f"{stem}.png", figures.grid_png(thumbs, captions))
    cells = [(figures.thumbnail_png(t), f"image {r['index']}: true {r['true']}, predicted "
              f"{r['predicted']}", c, not wrong) for t, r, c in zip(thumbs, rows, captions,
                                                                   strict=True)]
    lead = (f"<p>The {len(rows)} wrong predictions with the highest loss (&minus;log p(true)) of "
            f"{len(candidates)} wrong in all; each shows the true class and its probability, "
            "then the predicted class and its probability.</p>" if wrong else
            f"<p>{len(rows)} of the {len(candidates)} correct predictions, drawn at random "
            "(seed 0).</p>")
    # the PNG holds pictures, the CSV the numbers: each note says which
    explained = heatmaps.top_loss_heatmaps_html(loaded, preds, chosen) if loaded else ""
    return (lead + page.thumbnails(cells) + page.files_note([png], "the grid as one picture")
            + explained
            + page.table(rows, columns, headers=["index in split", "true", "predicted",
                                                 "p(predicted)", "p(true)", "loss"])
            + page.files_note([name]))


def _provenance_html(s: dict[str, Any], config: Any) -> str:
    prov = s["provenance"] or {}
    pairs: list[tuple[str, Any]] = [(f"images: {k}", v) for k, v in s["split_sizes"].items()]
    pairs += [("data source scored", s["data"]),
              ("checkpoint", s["checkpoint"]), ("epoch", s["epoch"])]
    pairs += [(f"trained with {k}", v) for k, v in prov.items() if k != "command"]
    pairs += [("mean time per epoch (s)", s["epoch_time_s_mean"]),
              ("training wall time (s)", s["elapsed_s"]),
              ("command", prov.get("command", "not recorded")),
              ("report: imgcls / torch / device", f"{s['imgcls']} / {s['torch']} / "
                                                  f"{s['report_device']}"),
              ("report: scoring the split (s)", s["scoring_s"])]
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return (page.key_values(pairs) + page.files_note(["summary.json"])
            + f"<h3>Config</h3><pre>{page.esc(text)}</pre>")


# --------------------------------------------------------------------------- several runs


def report_compare(run_dirs: Sequence[str | Path], *, output: str | Path) -> Path:
    """One page with the runs' curves overlaid and their final and best metrics side by side;
    returns the page's path."""
    runs: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, str] = {}
    for item in run_dirs:
        run = Path(item)
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            raise ImgclsError(f"{run} is not a run folder: no metrics.jsonl in it")
        rows = read_metrics(metrics)
        if not rows:
            raise ImgclsError(f"{metrics} holds no epochs yet")
        key = run.name if run.name not in runs else str(run)
        runs[key], labels[key] = rows, str(run)
    out = Folder(Path(output))
    table_rows = [_compare_row(name, labels[name], rows) for name, rows in runs.items()]
    compared = names(summary=True)  # the metrics metric_table.METRICS marks summary=True
    columns = ["run", "epochs"] + [f"{p}_{k}" for k in compared for p in ("final", "best")]
    columns += ["best_val_acc_epoch", "epoch_time_s_mean", "path"]
    csv_name = out.text("compare.csv", tables.csv_text(table_rows, columns))
    plot_curves(runs, out.path / "curves.png")
    body = (page.image((out.path / "curves.png").read_bytes(), "curves of every run overlaid",
                       "curves.png"))
    best_note = ('<p class="note">best: the highest value over the epochs (lowest for losses); '
                 "final: the last epoch's.</p>")
    sections = [
        ("curves", "Training curves", body),
        ("metrics", "Final and best metrics",
         _transposed(table_rows, columns) + best_note + page.files_note([csv_name])),
    ]
    subtitle = f"{len(runs)} runs: {', '.join(labels.values())}; imgcls {imgcls.__version__}"
    out.text("index.html", page.render("imgcls report: runs compared", subtitle, sections))
    return out.path / "index.html"


def _transposed(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """One line per metric, one column per run: a dozen metrics fit the page's width, a dozen
    runs would not."""
    lines = [{"metric": c, **{str(i): r.get(c) for i, r in enumerate(rows)}}
             for c in columns[1:]]
    return page.table(lines, ["metric", *(str(i) for i in range(len(rows)))],
                      headers=["metric", *(r["run"] for r in rows)])


def _compare_row(name: str, path: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": name, "path": path, "epochs": rows[-1].get("epoch")}
    for key in names(summary=True):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        row[f"final_{key}"] = values[-1] if values else None
        if values:
            row[f"best_{key}"] = METRICS[key].best(values)
    accs = [(r["val_acc"], r.get("epoch")) for r in rows if isinstance(r.get("val_acc"),
                                                                         (int, float))]
    row["best_val_acc_epoch"] = max(accs, key=lambda a: a[0])[1] if accs else None
    row["epoch_time_s_mean"] = _mean(rows, "epoch_time_s")
    return row
