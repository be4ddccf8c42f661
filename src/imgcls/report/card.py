"""``imgcls card RUN``: ``RUN/MODEL_CARD.md``, a model card in Hugging Face's format (YAML front
matter with the metrics, then Markdown), every number read from the run's own files.

Sources: ``split.json`` (split sizes; a ``test/`` folder's from its report), ``config.yaml``
and the checkpoint's record (classes, model, input size, provenance: the exact command and
library versions), the report's
``summary.json``, ``per_class.csv``, ``confused_pairs.csv`` (the validation scores, the weak
spots, calibration; the report is built first when the run has none), the test split's report
when the run has a test split, and the experiment's ``summary.json`` when the run is one of an
experiment's (``imgcls repeat`` / ``cv``): the spread over its runs.

Accuracy intervals are Wilson score intervals at 95% over the images scored (Wilson, 1927),
which stay inside [0, 1] and are honest at small n, unlike the normal approximation.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import ImgclsError
from imgcls.files import atomic_write_text
from imgcls.models.user import CodeConsent
from imgcls.report.predictions import find_checkpoint
from imgcls.runs.record import CheckpointRecord

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
WEAK = 3  # classes and pairs listed as weak spots


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``.

    >>> [round(v, 4) for v in wilson(45, 50)]
    [0.7864, 0.9565]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _report(run: Path, split: str, device: str, code: CodeConsent | None) -> Path | None:
    """The run's report folder for ``split`` (``report``, ``report-test``), built if absent;
    None for a test split the run does not have."""
    from imgcls.report.build import report_run

    folder = run / ("report" if split == "val" else f"report-{split}")
    if not (folder / "summary.json").is_file():
        try:
            report_run(run, split=split, output=folder, device=device, code=code)
        except ImgclsError:
            if split == "val":
                raise
            return None
    return folder


def _experiment(run: Path) -> dict[str, Any] | None:
    summary = run.parent / "summary.json"
    if not (run.parent / "experiment.json").is_file() or not summary.is_file():
        return None
    return json.loads(summary.read_text(encoding="utf-8"))


def card_facts(run: Path, *, device: str = "cpu", code: CodeConsent | None = None
               ) -> dict[str, Any]:
    """Everything the card states, read from the run's files (the report built if needed)."""
    if not (run / "metrics.jsonl").is_file():
        raise ImgclsError(f"{run} is not a run folder: no metrics.jsonl in it")
    record = CheckpointRecord.load(find_checkpoint(run))
    if record.multilabel:
        raise ImgclsError(f"{run} has several labels per image; model cards cover one label "
                          "per image so far: its report (imgcls report) has the scores")
    val_folder = _report(run, "val", device, code)
    assert val_folder is not None
    test_folder = _report(run, "test", device, code)  # None: the run has no test split
    scored = {}
    for split, folder in (("val", val_folder), ("test", test_folder)):
        if folder is None:
            continue
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        n = int(summary["images"])
        scored[split] = {**summary, "accuracy_ci": wilson(summary["accuracy"] * n, n),
                         "per_class": _csv(folder / "per_class.csv"),
                         "pairs": _csv(folder / "confused_pairs.csv")}
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    sizes = _split_sizes(run)
    for split, summary in scored.items():  # a test/ folder is not in split.json
        sizes.setdefault(split, int(summary["images"]))
    return {"run": run, "record": record, "config": config, "scored": scored,
            "split_sizes": sizes, "experiment": _experiment(run)}


def _split_sizes(run: Path) -> dict[str, int]:
    try:
        record = json.loads((run / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {p: len(record[p]) for p in ("train", "val", "test") if isinstance(record.get(p), list)}


def write_card(run_dir: str | Path, *, device: str = "cpu",
               code: CodeConsent | None = None) -> Path:
    """Write ``RUN/MODEL_CARD.md``; returns its path."""
    from imgcls.report.card_text import card_markdown

    run = Path(run_dir)
    path = run / "MODEL_CARD.md"
    atomic_write_text(path, card_markdown(card_facts(run, device=device, code=code)))
    return path
