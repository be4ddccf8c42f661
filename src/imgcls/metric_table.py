"""The one table of what a training epoch logs: each metric's name, direction, label, TensorBoard
tag and format, declared once.

Everything that lists metrics reads it: ``train.monitor``'s and ``sched.plateau_metric``'s
choices (``config/train_keys.py``), :func:`imgcls.engine.metrics.get_monitor` (best.pt, the plateau
scheduler, early stopping, tuning), the validation keys of a metrics row (``engine/trainer.py``),
the console line and TensorBoard tags (``engine/callbacks.py``, ``tracking.py``), experiment
summaries, the report pages and the curves. Adding a validation metric is its computation
(``epoch_metrics_from_eval`` in ``engine/metrics.py``) and one entry here.

No torch import: the config schema reads this module, and validating a config must stay cheap.

    >>> METRICS["val_loss"].direction, METRICS["val_loss"].tb_tag
    ('min', 'val/loss')
    >>> monitor_names()[:2]
    ('val_loss', 'val_acc')
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from imgcls.errors import ImgclsError

# The bookkeeping fields of a metrics.jsonl row that are not metrics: counters, and the nested
# per-class scores (TensorBoard gets those as val_class_<score>/<class>).
ROW_FIELDS = ("epoch", "step", "val_per_class")


@dataclass(frozen=True)
class MetricSpec:
    """One column of ``metrics.jsonl`` and everything that shows or compares it."""

    name: str  # the key in metrics.jsonl ("val_" first: measured on the validation set)
    direction: str | None  # "max" | "min": which way is better; None: not a score (lr, times)
    label: str  # for people: plot titles and pages
    tb_tag: str | None  # the TensorBoard scalar tag; None: metrics.jsonl only
    fmt: str = ".4f"  # how a value prints (the console line, summary tables)
    monitor: bool = False  # train.monitor and sched.plateau_metric may watch it
    console: bool = False  # in each epoch's console line
    summary: bool = False  # final and best values in experiment summaries and compared runs
    panel: str | None = None  # the panel of curves.png it is drawn in (report/curves.py)
    # which runs measure it: None both, False one label per image only, True several (a label
    # CSV) only; a run's metrics rows hold the keys of its kind
    multilabel: bool | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min", None):
            raise ValueError(f"metric {self.name}: direction must be 'max', 'min' or None, "
                             f"got {self.direction!r}")
        if (self.monitor or self.summary) and self.direction is None:
            raise ValueError(f"metric {self.name}: a monitored or summarised metric needs a "
                             "direction")

    @property
    def validation(self) -> bool:
        """Measured on the validation set (None in a run without one)."""
        return self.name.startswith("val_")

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values`` in this metric's direction (highest, or lowest for "min")."""
        return min(values) if self.direction == "min" else max(values)


# In metrics.jsonl's column order (the console line and the curves' line order follow it).
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("train_loss", "min", "training loss", "train/loss", console=True,
                   summary=True, panel="loss"),
        MetricSpec("train_acc", "max", "training accuracy", "train/acc", console=True,
                   panel="accuracy"),
        MetricSpec("val_loss", "min", "validation loss", "val/loss", monitor=True, console=True,
                   summary=True, panel="loss"),
        # multi-label runs: exact-match (subset) accuracy, all of an image's labels right
        MetricSpec("val_acc", "max", "validation accuracy", "val/acc", monitor=True,
                   console=True, summary=True, panel="accuracy"),
        MetricSpec("val_map", "max", "validation mAP", "val/map", monitor=True, console=True,
                   summary=True, panel="accuracy", multilabel=True),
        MetricSpec("val_top5", "max", "validation top-5 accuracy", "val/top5", monitor=True,
                   console=True, multilabel=False),
        MetricSpec("val_macro_f1", "max", "validation macro-F1", "val/macro_f1", monitor=True,
                   console=True, summary=True, panel="accuracy"),
        MetricSpec("val_micro_f1", "max", "validation micro-F1", "val/micro_f1", monitor=True,
                   summary=True, panel="accuracy", multilabel=True),
        MetricSpec("val_hamming_loss", "min", "validation Hamming loss", "val/hamming_loss",
                   monitor=True, multilabel=True),
        MetricSpec("val_balanced_acc", "max", "validation balanced accuracy",
                   "val/balanced_acc", monitor=True, summary=True, panel="accuracy",
                   multilabel=False),
        MetricSpec("val_macro_precision", "max", "validation macro precision",
                   "val/macro_precision"),
        MetricSpec("val_macro_recall", "max", "validation macro recall", "val/macro_recall"),
        MetricSpec("lr", None, "learning rate", "lr", fmt=".3g", console=True,
                   panel="learning rate"),
        MetricSpec("epoch_time_s", None, "epoch time (s)", "time/epoch_s", fmt=".1f"),
        MetricSpec("train_time_s", None, "training time (s)", None, fmt=".1f"),
        MetricSpec("train_images_per_s", None, "training images per second", None, fmt=".0f"),
        MetricSpec("elapsed_s", None, "time since the start (s)", "time/elapsed_s", fmt=".1f"),
    )
}


def monitor_names() -> tuple[str, ...]:
    """What ``train.monitor`` may name, in table order."""
    return tuple(name for name, spec in METRICS.items() if spec.monitor)


def names(*, validation: bool | None = None, summary: bool | None = None,
          console: bool | None = None, panel: str | None = None,
          multilabel: bool | None = None) -> tuple[str, ...]:
    """The table's names, in order, that match every filter given (None: no filter);
    ``multilabel``: the metrics a run of that kind measures."""
    wanted = {"validation": validation, "summary": summary, "console": console, "panel": panel}
    return tuple(name for name, spec in METRICS.items()
                 if all(getattr(spec, k) == v for k, v in wanted.items() if v is not None)
                 and (multilabel is None or spec.multilabel in (None, multilabel)))


def tb_tags() -> dict[str, str]:
    """metrics.jsonl key -> TensorBoard tag, for the metrics TensorBoard gets."""
    return {name: spec.tb_tag for name, spec in METRICS.items() if spec.tb_tag is not None}


# --------------------------------------------------------------------------- monitors


@dataclass(frozen=True)
class Monitor:
    """A metric a run can watch, and which direction counts as better.

    Best-checkpoint selection, plateau scheduling and early stopping all ask the same
    question ("did this epoch improve?"), so they share one definition of it.
    """

    name: str
    mode: str  # "max" or "min"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"Monitor mode must be 'max' or 'min', got {self.mode!r}")

    def better(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """True when ``value`` beats ``best`` by more than ``min_delta`` in this direction.

        No best yet always counts as an improvement; a NaN value never does, so a diverged
        epoch cannot become the best checkpoint.
        """
        if math.isnan(value):
            return False
        if best is None or math.isnan(best):
            return True
        if self.mode == "max":
            return value > best + min_delta
        return value < best - min_delta

    def worst(self) -> float:
        """The starting 'best' value that any real value improves on."""
        return -math.inf if self.mode == "max" else math.inf


# The metrics a run may monitor, with their direction: the entries of metric_table.METRICS marked
# monitor=True (that table is the one place to add one).
MONITORS: dict[str, Monitor] = {
    name: Monitor(name, str(METRICS[name].direction)) for name in monitor_names()
}


def get_monitor(name: str) -> Monitor:
    """Look up a monitor by name, failing with a user-facing error for a typo in the config."""
    spec = METRICS.get(name)
    if spec is None or not spec.monitor:
        choices = ", ".join(monitor_names())
        raise ImgclsError(
            f"train.monitor={name!r} is not a metric imgcls measures; choose one of {choices}"
        )
    return Monitor(name, str(spec.direction))
