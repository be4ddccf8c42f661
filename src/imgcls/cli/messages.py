"""How a command ends: an error in one line, an interrupt with what is saved, a lost peer."""

from __future__ import annotations

import shlex
from typing import Any

from imgcls.engine.signals import TERMINATED


def raise_on_sigterm(_signum: int, _frame: Any) -> None:
    # SIGTERM (SLURM, Kubernetes, spot preemption) takes Ctrl-C's road: the run stops between
    # two statements, its files stay whole, and the message says what is saved.
    raise KeyboardInterrupt(TERMINATED)


def interrupted_message(exc: BaseException) -> str:
    reason = str(exc) or "interrupted"
    run_dir, epoch = getattr(exc, "run_dir", None), getattr(exc, "epoch", None)
    if run_dir is None:
        return f"{reason} during start-up: nothing was saved"
    resume = f"`imgcls train --resume {shlex.quote(str(run_dir))}`"
    progress = getattr(exc, "progress", None)
    if epoch is None and progress is None:
        return (f"{reason} before the first epoch was saved: nothing to resume yet; {resume} "
                "starts the run over")
    last = run_dir / "checkpoints" / "last.pt"
    total = getattr(exc, "total_batches", 0)
    if progress is not None:
        saved = f"epoch {epoch + 1} up to batch {progress.batches}" + (
            f" of {total}" if total else "")
    else:
        saved = f"epoch {epoch}"
    phase = getattr(exc, "phase", "")
    if phase == "finished":  # the signal came after the last save: nothing to continue
        epochs = getattr(exc, "epochs", 0)
        return (f"{reason} after the run had finished: {saved}{f' of {epochs}' if epochs else ''}"
                f" is saved in {last}; nothing was lost")
    if phase == "resuming":  # while the resumed run loaded its data and model
        return (f"{reason} while resuming: {saved} is saved in {last} (nothing new since); "
                f"continue with {resume}")
    lost = " (the steps since then are lost)" if "again" in reason else ""
    return f"{reason}: {saved} is saved in {last}{lost}; continue with {resume}"


MAX_ERROR_CHARS = 500


def one_line(exc: BaseException) -> str:
    # An error raised inside a DataLoader worker comes back wrapped in its traceback text.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if len(lines) > 1 else lines[0]
    line = line.removeprefix("imgcls.errors.ImgclsError: ")
    # The last resort against a value printed whole: an error is a line, not a page.
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def peer_lost(exc: RuntimeError) -> bool:
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None),
                              getattr(dist, "DistNetworkError", None)) if k is not None)
    text = str(exc)
    return isinstance(exc, kinds) or any(
        phrase in text for phrase in ("Connection closed by peer", "Connection reset")
    )
