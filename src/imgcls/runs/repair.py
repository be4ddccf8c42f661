"""Bringing a run folder's records back in line with its ``last.pt`` after a kill.

An epoch ends with three writes: ``last.pt`` (atomic), the copy to ``best.pt`` when the epoch
improved (atomic), the metrics row. A kill between two of them leaves the folder behind its
``last.pt``; ``--resume`` repairs it from what ``last.pt`` holds (its epoch, whether that epoch
was the best, its metrics row) instead of refusing a finished run or forgetting a row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.runs.checkpoint import copy_checkpoint, load_checkpoint
from imgcls.runs.files import refresh_run_files
from imgcls.runs.record import CheckpointRecord
from imgcls.tracking import RunLogger, logged_epochs

# The temporary files of a training's own atomic writes: its records in the run folder, and
# last.pt / best.pt (an export writes its own beside them, which is not the training's to remove).
TRAINING_TEMPORARIES = ((".", ".*.tmp"), ("checkpoints", ".last.pt.*.tmp"),
                        ("checkpoints", ".best.pt.*.tmp"))


def remove_temporary_files(run_dir: Path) -> int:
    """Delete the ``.NAME.XXXX.tmp`` files a training's atomic write killed half-way leaves (a
    SIGKILL gives it no chance to clean up); returns how many. Call it while holding the run
    folder's lock: then no live write's file is taken away."""
    removed = 0
    for folder, pattern in TRAINING_TEMPORARIES:
        for tmp in (run_dir / folder).glob(pattern):
            try:
                tmp.unlink(missing_ok=True)
                removed += 1
            except OSError:  # not removable after all: the run goes on without it
                pass
    return removed


def _saved_epoch(path: Path) -> int | None:
    try:
        return load_checkpoint(path).get("epoch")
    except ImgclsError:  # missing, truncated or foreign: it needs rewriting all the same
        return None


def repair_best(last: Path, record: CheckpointRecord) -> bool:
    """Copy ``last.pt`` to ``best.pt`` when last.pt's epoch is the best one (an epoch boundary,
    not a mid-epoch save) and best.pt does not hold it; whether it did."""
    if record.progress is not None or record.epoch is None or record.best_epoch != record.epoch:
        return False
    best = last.parent / "best.pt"
    if best.exists() and _saved_epoch(best) == record.epoch:
        return False
    copy_checkpoint(last, best)
    return True


def repair_run_folder(run_dir: Path, last: Path, record: CheckpointRecord,
                      say: Callable[[str], None]) -> list[str]:
    """Temporary files and best.pt (metrics rows are the logger's, see
    :meth:`RunLogger.reopen`); returns what was repaired, each said through ``say``."""
    done = []
    if removed := remove_temporary_files(run_dir):
        done.append(f"removed {removed} temporary file(s) left by a kill")
    if repair_best(last, record):
        done.append(f"best.pt: copied from last.pt (epoch {record.epoch}, the best, whose copy "
                    "a kill had stopped)")
    for line in done:
        say(f"repaired {run_dir}: {line}")
    return done


def repair_finished_run(run_dir: Path, last: Path, record: CheckpointRecord, *,
                        tensorboard: bool, say: Callable[[str], None]) -> list[str]:
    """A finished run (nothing left to train): the same repairs, its last metrics row, and
    results.csv/curves.png when a row was written."""
    done = repair_run_folder(run_dir, last, record, say)
    epoch = int(record.epoch or 0)
    if epoch in logged_epochs(run_dir / "metrics.jsonl"):
        return done
    logger, wrote_row = RunLogger.reopen(run_dir, tensorboard=tensorboard, resume_epoch=epoch,
                                         resume_row=record.metrics or None)
    logger.close()
    if wrote_row:
        refresh_run_files(run_dir)
        line = f"metrics.jsonl: wrote epoch {record.epoch}'s row, which a kill had kept out"
        say(f"repaired {run_dir}: {line}")
        done.append(line)
    return done
