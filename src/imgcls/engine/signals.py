"""Stopping a run from outside without losing work.

While the training loop runs, the first SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes, spot
preemption) only asks for a stop: the trainer saves a resumable state after the current
optimizer step and then stops (:class:`StopRequested`). A second SIGINT or SIGTERM stops at once;
files are written atomically, so that leaves the last saved state whole. With
``train.requeue=true``, SIGUSR1 (``#SBATCH --signal=USR1@120``) saves the same way and then asks
SLURM to requeue the job (:func:`requeue_slurm_job`).

Outside the loop (start-up, the final messages) the usual behaviour stands: Ctrl-C is a
``KeyboardInterrupt`` at once, and nothing is half-written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from types import FrameType, TracebackType

TERMINATED = "terminated (SIGTERM)"
INTERRUPTED = "interrupted"
REQUEUE = "SIGUSR1 (requeue)"
_REASONS = {signal.SIGTERM: TERMINATED, signal.SIGINT: INTERRUPTED}


class StopRequested(KeyboardInterrupt):
    """Raised by the trainer once the state asked for by a signal is saved."""


class GracefulStop:
    """Signal handlers for the training loop: ``with GracefulStop(requeue=...) as stop:`` then
    ``stop.requested`` after each step. Installs nothing outside the main thread (Python only
    delivers signals there), so the loop then behaves as before."""

    def __init__(self, *, requeue: bool = False) -> None:
        self.signals = [signal.SIGINT, signal.SIGTERM]
        if requeue and hasattr(signal, "SIGUSR1"):
            self.signals.append(signal.SIGUSR1)
        self.reason: str = ""
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.reason)

    @property
    def requeue(self) -> bool:
        return self.reason == REQUEUE

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested and signum != getattr(signal, "SIGUSR1", None):
            # asked twice: the person (or scheduler) wants out now
            raise KeyboardInterrupt(f"{_REASONS.get(signum, INTERRUPTED)} again: stopped at once")
        self.reason = _REASONS.get(signum, REQUEUE)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self.previous.clear()


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (``scontrol requeue $SLURM_JOB_ID``); the result in words."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}")
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not requeued: SLURM_JOB_ID is not set (not a SLURM job)"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"not requeued: scontrol is not on PATH (job {job})"
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"requeue of job {job} failed: {detail[-1][:200] if detail else done.returncode}"
    return f"job {job} requeued"
