"""An experiment's summary: each run's final and best value of ``train.monitor`` (and the other
validation metrics of its last epoch), their mean, standard deviation and 95% confidence
interval over the finished runs, and which runs are missing or unfinished. Written as
``summary.json`` in the experiment folder and printed as a table."""

from __future__ import annotations

import json
from typing import Any

from imgcls.errors import ImgclsError
from imgcls.experiments.plan import KINDS, Experiment
from imgcls.experiments.stats import spread
from imgcls.experiments.status import FINISHED, MISSING, RunStatus, statuses
from imgcls.files import atomic_write_text
from imgcls.metric_table import METRICS, get_monitor, names


def summarize(experiment: Experiment) -> dict[str, Any]:
    """The summary of ``experiment`` as it stands; written to ``summary.json`` when at least
    one run has finished (an ImgclsError naming the runs when none has)."""
    found = statuses(experiment)
    monitor = get_monitor(experiment.monitor)
    rows = [run_row(s, monitor.name, monitor.mode) for s in found]
    done = [r for r in rows if r["status"] == FINISHED and r.get(f"best_{monitor.name}")
            is not None]
    waiting = [s.describe() for s in found if s.state != FINISHED]
    if not done and len(waiting) < len(found):  # finished, but nothing validated
        raise ImgclsError(f"the finished runs in {experiment.path} have no {monitor.name} to "
                          "summarise: they had no validation set")
    if not done:
        raise ImgclsError(f"no finished runs in {experiment.path} yet: {', '.join(waiting)}")
    stat_keys = [f"best_{monitor.name}", f"final_{monitor.name}"]
    summary = {
        "experiment": str(experiment.path), "kind": experiment.kind, "count": experiment.count,
        "monitor": monitor.name, "mode": monitor.mode,
        "model": experiment.config["model"]["name"], "data": experiment.config["data"]["source"],
        "command": experiment.command, "finished": len(done),
        "not_finished": waiting,
        "stats": {k: spread([r[k] for r in done]).to_dict() for k in stat_keys},
        "runs": rows,
    }
    atomic_write_text(experiment.path / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def run_row(status: RunStatus, monitor: str, mode: str) -> dict[str, Any]:
    """One run: its state, epochs, best and final monitored value, final validation metrics."""
    row: dict[str, Any] = {"run": status.member.name, "index": status.member.index,
                           "status": status.state,
                           "epochs": status.epoch if status.state != MISSING else None,
                           "train_epochs": status.epochs, "early_stopped": status.early_stopped}
    scored = [r for r in status.rows if isinstance(r.get(monitor), (int, float))]
    if scored:
        pick = min if mode == "min" else max
        best = pick(scored, key=lambda r: r[monitor])  # the first of equal values, as best.pt
        row["best_epoch"], row[f"best_{monitor}"] = best["epoch"], float(best[monitor])
    last = status.rows[-1] if status.rows else {}
    for key in dict.fromkeys((monitor, *names(summary=True))):  # the table's summary=True
        if isinstance(last.get(key), (int, float)):
            row[f"final_{key}"] = float(last[key])
    return row


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table: one line per run, then mean, std and 95% CI of the monitored metric's
    best and final values, then the runs not finished."""
    monitor, what = summary["monitor"], KINDS[summary["kind"]]
    direction = "lower" if summary["mode"] == "min" else "higher"
    head = (f"{summary['experiment']}: {summary['count']} {what}s of {summary['model']} on "
            f"{summary['data']}; train.monitor {monitor} ({direction} is better)")
    fmt = METRICS[monitor].fmt
    columns = [("run", "run", "s"), ("status", "status", "s"), ("epochs", "epochs", "d"),
               ("best_epoch", "best epoch", "d"), (f"best_{monitor}", f"best {monitor}", fmt),
               (f"final_{monitor}", f"final {monitor}", fmt)]
    other = "val_acc" if monitor == "val_loss" else "val_loss"  # the rest: in summary.json
    if any(f"final_{other}" in r for r in summary["runs"]):
        columns.append((f"final_{other}", f"final {other}", METRICS[other].fmt))
    lines = [head, _table(summary["runs"], columns), ""]
    width = max(len(k) for k in summary["stats"]) + 2
    lines.append(f"{'':<{width}}{'n':>3}  {'mean':>8}  {'std':>8}  95% CI")
    for key, s in summary["stats"].items():
        if s["std"] is None:
            lines.append(f"{key:<{width}}{s['n']:>3}  {s['mean']:>8{fmt}}  {'-':>8}  "
                         "none from one run")
        else:
            lines.append(f"{key:<{width}}{s['n']:>3}  {s['mean']:>8{fmt}}  {s['std']:>8{fmt}}  "
                         f"[{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]")
    if summary["not_finished"]:
        lines.append(f"not finished ({len(summary['not_finished'])} of {summary['count']}, "
                     f"left out above): {', '.join(summary['not_finished'])}")
    lines.append(f"summary: {summary['experiment']}/summary.json")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Columns are (key, title, kind): kind "s" (text), "d" (a count) or a number format."""
    def cell(value: Any, kind: str) -> str:
        if value is None:
            return "-"
        return str(value) if kind in ("s", "d") else f"{value:{kind}}"

    cells = [[cell(r.get(key), kind) for key, _, kind in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in
              enumerate(columns)]
    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if columns[i][2] == "s" else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line([t for _, t, _ in columns]), *(line(c) for c in cells)])
