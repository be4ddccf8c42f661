"""Where each run of an experiment stands: not started, started but not finished (the normal
``--resume`` continues it), or finished. Read from the run's own files, so a run continued by
hand with ``imgcls train --resume`` counts as well."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.experiments.plan import Experiment, Member
from imgcls.runs.files import read_metrics
from imgcls.runs.record import CheckpointRecord

MISSING, UNFINISHED, FINISHED = "missing", "unfinished", "finished"


@dataclass
class RunStatus:
    member: Member
    run_dir: Path
    state: str  # missing | unfinished | finished
    epoch: int = 0  # epochs saved in last.pt
    epochs: int = 0  # train.epochs of the run (0: not known yet)
    early_stopped: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    saved: bool = False  # last.pt exists (an unfinished run may have stopped before it)
    batches: int = 0  # batches of epoch ``epoch + 1`` in last.pt as well (a mid-epoch save)

    def describe(self) -> str:
        """``fold-3 (not started)``, ``fold-4 (epoch 2 of 5 saved)``, ``fold-0 (stopped
        before its first checkpoint)``."""
        if self.state == MISSING:
            return f"{self.member.name} (not started)"
        if self.state == UNFINISHED and not self.saved:
            return f"{self.member.name} (stopped before its first checkpoint)"
        if self.state == UNFINISHED:
            of = f" of {self.epochs}" if self.epochs else ""
            if self.batches and not self.epoch:
                return f"{self.member.name} (epoch 1{of} up to batch {self.batches} saved)"
            part = (f", and epoch {self.epoch + 1} up to batch {self.batches}"
                    if self.batches else "")
            return f"{self.member.name} (epoch {self.epoch}{of} saved{part})"
        return f"{self.member.name} (finished)"

    def next_step(self) -> str:
        """What running it again does: ``continuing fold-4 (epoch 2 of 5 saved)``, or
        ``starting fold-0 over (it stopped before its first checkpoint)``."""
        if self.state == UNFINISHED and not self.saved:
            return f"starting {self.member.name} over (it stopped before its first checkpoint)"
        return f"continuing {self.describe()}"


def run_status(experiment: Experiment, member: Member) -> RunStatus:
    """Finished: ``last.pt`` holds the run's last epoch, or early stopping ended it."""
    run_dir = experiment.run_dir(member)
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        started = (run_dir / "config.yaml").is_file()
        return RunStatus(member, run_dir, UNFINISHED if started else MISSING)
    record = CheckpointRecord.load(last)
    epoch = record.epoch or 0
    train = record.config.get("train", {})
    epochs = int(train.get("epochs", 0))
    stop = record.callbacks.get("early_stopping", {})
    # stopped, and not resumed since with more patience (which keeps the old stopped_epoch)
    early = stop.get("stopped_epoch") is not None and int(stop.get("wait", 0)) >= int(
        train.get("early_stop_patience", 0))
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    rows = [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    state = FINISHED if epoch >= epochs or early else UNFINISHED
    batches = int((record.progress or {}).get("batches", 0))
    return RunStatus(member, run_dir, state, epoch, epochs, early, rows, saved=True,
                     batches=batches)


def statuses(experiment: Experiment) -> list[RunStatus]:
    return [run_status(experiment, m) for m in experiment.members]
