"""What ``imgcls tune`` leaves behind: the table of trials (``trials.csv`` and a printed table)
and the best trial as a recipe (``best.yaml``, for ``imgcls train --config``). Built from the
study alone, so any worker on any machine writes the same files."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import Config, build_config
from imgcls.files import atomic_write_text

# A trial's user attribute: why it does not count toward --trials (interrupted, error, surplus).
UNCOUNTED = "imgcls_uncounted"
ERROR = "error"  # a trial's one-line failure reason
RUN_DIR = "run_dir"
BEST_EPOCH = "best_epoch"


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it; ``state`` is Optuna's, lower-case, or why the trial
    does not count (``interrupted``, ``error``)."""

    number: int
    state: str
    value: float | None
    epochs: int  # epochs run: the last epoch it reported
    params: dict[str, Any]
    seconds: float | None
    run_dir: str
    note: str


def trial_rows(trials: Iterable[Any]) -> list[TrialRow]:
    """Optuna's FrozenTrials -> rows, by trial number; trials cut as surplus are left out (they
    never ran: two workers asked for the study's last trial at once)."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        why = t.user_attrs.get(UNCOUNTED)
        if why == "surplus":
            continue
        state = why or t.state.name.lower()
        epochs = max(t.intermediate_values, default=0)
        note = t.user_attrs.get(ERROR, "")
        seconds = t.duration.total_seconds() if t.duration is not None else None
        rows.append(TrialRow(t.number, state, t.value, epochs, dict(t.params), seconds,
                             t.user_attrs.get(RUN_DIR, ""), note))
    return rows


def counts_toward_budget(trial: Any) -> bool:
    """--trials counts trials run or running, whatever their outcome, except those stopped by
    Ctrl-C or a setup error: rerunning the command runs those again."""
    return trial.state.name != "WAITING" and UNCOUNTED not in trial.user_attrs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def param_keys(rows: Iterable[TrialRow]) -> list[str]:
    return sorted({key for row in rows for key in row.params})


def format_table(rows: list[TrialRow], metric: str, best: int | None) -> str:
    """A fixed-width table; ``*`` marks the best trial."""
    keys = param_keys(rows)
    header = ["trial", "state", metric, "epochs", "seconds", *keys, "note"]
    body = [[f"{'*' if r.number == best else ' '} {r.number}", r.state,
             "-" if r.value is None or math.isnan(r.value) else f"{r.value:.4f}",
             str(r.epochs), "-" if r.seconds is None else f"{r.seconds:.1f}",
             *[_fmt(r.params.get(k)) for k in keys], r.note] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {1, len(header) - 1}  # state and note read left-aligned, numbers right-aligned
    return "\n".join(
        "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in [header, *body])


def write_csv(rows: list[TrialRow], metric: str, path: Path) -> None:
    """``trials.csv``: one row per trial, one column per searched key."""
    keys = param_keys(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", metric, "epochs", "seconds", *keys, "run_dir", "note"])
    for r in rows:
        writer.writerow([r.number, r.state, "" if r.value is None else r.value, r.epochs,
                         "" if r.seconds is None else round(r.seconds, 3),
                         *["" if r.params.get(k) is None else r.params[k] for k in keys],
                         r.run_dir, r.note])
    atomic_write_text(path, out.getvalue())


def best_config(base: Config, row: TrialRow) -> Config:
    """The base config with the best trial's values; ``log.name`` left to its default, so that
    training it makes a new run folder rather than colliding with the trial's."""
    return build_config(base, {**row.params, "log.name": ""})


def write_best_recipe(path: Path, base: Config, row: TrialRow, metric: str, study: str,
                      best_epoch: int | None) -> Config:
    """``best.yaml``: the resolved config of the best trial (as ``--print-config`` writes one),
    under a recipe header; ``imgcls train --config best.yaml`` trains it again."""
    cfg = best_config(base, row)
    at = f" at epoch {best_epoch} of {cfg.train.epochs}" if best_epoch else ""
    chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(row.params.items()))
    header = [
        f"# best trial of imgcls tune study {study!r}: trial {row.number} ({chosen})",
        f"# measured: {metric} {row.value:.4f}{at} on the validation split ({row.run_dir})",
        f"# train it: imgcls train --config {path}",
    ]
    text = yaml.safe_dump(cfg.to_saved(), sort_keys=False)
    atomic_write_text(path, "\n".join(header) + "\n" + text)
    return cfg
