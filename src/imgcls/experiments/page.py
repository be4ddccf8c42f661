"""``imgcls report EXPERIMENT``: one page for a cross-validation or a repeat over seeds: the
summary (mean, std and 95% CI of the monitored metric), each run's numbers, the runs' curves
side by side and, when ``imgcls evaluate EXPERIMENT`` has been run, their scores and the
ensemble's. Every number is in a CSV or JSON file beside the page."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml

import imgcls
from imgcls.experiments.plan import KINDS, load_experiment
from imgcls.experiments.status import statuses
from imgcls.experiments.summary import summarize
from imgcls.files import atomic_write
from imgcls.metric_table import METRICS, names
from imgcls.report import page, tables
from imgcls.report.folder import Folder


def report_experiment(path: str | Path, *, output: str | Path | None = None) -> Path:
    """Write ``EXPERIMENT/report/index.html`` (or ``output/index.html``); returns its path."""
    experiment = load_experiment(path)
    summary = summarize(experiment)  # also refreshes EXPERIMENT/summary.json
    out = Folder(Path(output) if output is not None else experiment.path / "report")
    out.text("summary.json", json.dumps(summary, indent=2) + "\n")
    rows = {s.member.name: s.rows for s in statuses(experiment) if s.rows}
    what = KINDS[experiment.kind]
    sections = [
        ("summary", "Summary", _summary_html(summary)),
        ("runs", f"Each {what}", _runs_html(out, summary)),
        ("curves", f"Curves of each {what}", _curves_html(out, rows, summary["monitor"])),
        ("evaluation", "Evaluation and ensemble", _evaluation_html(out, experiment.path)),
        ("provenance", "Command and config",
         page.key_values([("command", experiment.command or "not recorded"),
                          ("created", experiment.created), ("folder", experiment.path)])
         + f"<pre>{page.esc(yaml.safe_dump(experiment.config, sort_keys=False))}</pre>"),
    ]
    title = f"imgcls report: {experiment.path.name}"
    subtitle = (f"{summary['count']} {what}s of {summary['model']} on {summary['data']} "
                f"({summary['finished']} finished); imgcls {imgcls.__version__}")
    out.text("index.html", page.render(title, subtitle, sections))
    return out.path / "index.html"


def _summary_html(summary: dict[str, Any]) -> str:
    stats = [{"value": key, **s} for key, s in summary["stats"].items()]
    html = page.table(stats, ["value", "n", "mean", "std", "ci_low", "ci_high"],
                      headers=["value", "runs", "mean", "std (ddof=1)", "95% CI from",
                               "95% CI to"])
    note = (f"best: each run's best epoch by train.monitor={summary['monitor']} (the epoch "
            "best.pt holds; chosen on the validation images, so optimistic); final: its last "
            "epoch. The interval is Student's t interval of the mean.")
    if summary["not_finished"]:
        note += f" Not finished, left out: {', '.join(summary['not_finished'])}."
    return html + f'<p class="note">{page.esc(note)}</p>' + page.files_note(["summary.json"])


def _runs_html(out: Folder, summary: dict[str, Any]) -> str:
    columns = ["run", "status", "epochs", "best_epoch"] + sorted(
        {k for r in summary["runs"] for k in r if k.startswith(("best_val", "final_"))},
        key=lambda k: (not k.startswith("best"), k))
    name = out.text("runs.csv", tables.csv_text(summary["runs"], columns))
    return page.table(summary["runs"], columns) + page.files_note([name])


def _curves_html(out: Folder, rows: dict[str, list[dict[str, Any]]], monitor: str) -> str:
    if not rows:
        return '<p class="note">no run has finished an epoch yet: no curves.</p>'
    # the monitored metric, then the losses (metric_table's loss panel), one panel each
    keys = tuple(dict.fromkeys((monitor, *names(panel="loss"))))
    png = _curves_png(rows, keys)
    atomic_write(out.path / "curves.png", lambda handle: handle.write(png))
    flat = [{"run": run, **r} for run, epochs in rows.items() for r in epochs]
    name = out.text("curves.csv", tables.csv_text(flat, ["run", "epoch", *keys]))
    return (page.image(png, f"{', '.join(keys)} per epoch, one line per run", "curves.png")
            + page.files_note([name]))


def _curves_png(rows: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> bytes:
    """One panel per metric, one line per run: the spread between runs, epoch by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (run, epochs) in enumerate(rows.items()):
            points = [(r["epoch"], r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=f"C{i % 10}", marker="o", markersize=3, label=run)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(METRICS[key].label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _evaluation_html(out: Folder, experiment: Path) -> str:
    found = sorted((experiment / "eval").glob("*/evaluation.json"))
    if not found:
        return (f'<p class="note">not evaluated yet: `imgcls evaluate {page.esc(experiment)} '
                "--split test` scores each run's best.pt and their ensemble.</p>")
    return "".join(_one_evaluation(out, json.loads(p.read_text(encoding="utf-8")))
                   for p in found)


def _one_evaluation(out: Folder, result: dict[str, Any]) -> str:
    """One split's scores: each run and the ensemble, then mean, std and CI over the runs."""
    ensemble = result.get("ensemble")
    shown = result["runs"] + ([{"run": "ensemble", **ensemble}] if ensemble else [])
    # the scores the evaluation computed, in its order (they differ by kind of labels)
    columns = ["run", "images", *result["stats"]]
    name = out.text(f"evaluation_{result['split']}.csv", tables.csv_text(shown, columns))
    spreads = [{"score": k, **s} for k, s in result["stats"].items()]
    note = result.get("ensemble_note") or (
        f"ensemble: the {ensemble['models']} models' probabilities averaged per image")
    return (f"<h3>{page.esc(result['split'])} split</h3>"
            + page.table(shown, columns, avg_rows=("ensemble",))
            + page.table(spreads, ["score", "n", "mean", "std", "ci_low", "ci_high"],
                         headers=["score", "runs", "mean", "std", "95% CI from", "95% CI to"])
            + f'<p class="note">{page.esc(note)}</p>' + page.files_note([name]))
