"""Where a run's numbers go: the console, ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.metric_table import tb_tags

# The per-epoch metrics' TensorBoard tags are in metric_table.METRICS (metrics.jsonl keeps the
# plain names). Per-class precision, recall and F1 go to "val_class_<metric>/<class>", up to this
# many classes (beyond it TensorBoard's scalar list stops being readable; metrics.jsonl keeps them
# all).
MAX_CLASS_SCALARS = 100


def logged_epochs(metrics_path: Path) -> set[int]:
    """The epochs that have a whole row in ``metrics.jsonl`` (a line cut off by a kill is not)."""
    if not metrics_path.exists():
        return set()
    epochs = set()
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            epochs.add(int(json.loads(line)["epoch"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return epochs


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunLogger:
    """Appends one JSON object per epoch to ``metrics.jsonl`` and mirrors it to TensorBoard.

    On resume, epochs after ``resume_epoch`` (written by a run that died before its checkpoint)
    are dropped from ``metrics.jsonl`` and TensorBoard purges them too, so both match the weights.
    """

    def __init__(
        self, run_dir: Path, *, tensorboard: bool, resume_epoch: int | None = None
    ) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        if resume_epoch is not None:
            self._truncate(resume_epoch)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Scalars are logged against the epoch number, so the purge point is an epoch too.
            purge = resume_epoch + 1 if resume_epoch is not None else None
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    @classmethod
    def reopen(cls, run_dir: Path, *, tensorboard: bool, resume_epoch: int,
               resume_row: dict[str, Any] | None) -> tuple[RunLogger, bool]:
        """The logger of a resumed run whose last.pt holds epoch ``resume_epoch``. When a kill
        came between last.pt and its metrics row, the row (``resume_row``, kept in the
        checkpoint) is written now; returns (logger, whether it was)."""
        missing = (resume_epoch > 0 and resume_row is not None
                   and resume_row.get("epoch") == resume_epoch
                   and resume_epoch not in logged_epochs(run_dir / "metrics.jsonl"))
        if not missing:
            return cls(run_dir, tensorboard=tensorboard, resume_epoch=resume_epoch), False
        # drop the epoch from TensorBoard too (a kill may have left part of it), then log it
        logger = cls(run_dir, tensorboard=tensorboard, resume_epoch=resume_epoch - 1)
        logger.log_epoch(resume_row)  # type: ignore[arg-type]
        return logger, True

    def _truncate(self, last_epoch: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= last_epoch:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash
        self.metrics_path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            step = metrics["epoch"]
            for key, tag in tb_tags().items():
                value = metrics.get(key)
                if value is not None:
                    self.writer.add_scalar(tag, value, global_step=step)
            per_class = metrics.get("val_per_class") or {}
            if len(per_class) <= MAX_CLASS_SCALARS:
                for name, scores in per_class.items():
                    for metric in ("precision", "recall", "f1"):
                        self.writer.add_scalar(f"val_class_{metric}/{name}", scores[metric],
                                               global_step=step)
            self.writer.flush()

    def log_images(self, tag: str, images: torch.Tensor, step: int = 0) -> None:
        if self.writer is not None:
            from torchvision.utils import make_grid

            self.writer.add_image(tag, make_grid(images[:64], nrow=8), global_step=step)

    def log_graph(self, model: nn.Module, example: torch.Tensor) -> None:
        if self.writer is None:
            return
        was_training = model.training
        model.eval()  # tracing runs a forward pass: keep BatchNorm statistics untouched
        try:
            # add_graph traces with torch.jit, which warns that tracing is deprecated.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example)
        finally:
            model.train(was_training)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
