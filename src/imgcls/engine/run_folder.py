"""Where a run lives: ``runs/NAME`` with ``checkpoints/``, ``config.yaml``, ``split.json``,
``metrics.jsonl`` and ``tensorboard/``. Made once, by rank 0, only after everything the run
needs has been checked, so a bad option never leaves an empty run folder behind."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imgcls import runtime
from imgcls.config import Config
from imgcls.engine.record import CheckpointRecord
from imgcls.errors import ImgclsError


@dataclass
class Resume:
    """A run to continue: its folder, the checkpoint file and what it holds."""

    run_dir: Path
    path: Path
    record: CheckpointRecord


def resolve_resume(path: str | Path) -> Resume:
    """``runs/NAME`` or ``runs/NAME/checkpoints/last.pt`` -> the run folder and its checkpoint,
    read and checked to be resumable."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.exists():
            raise ImgclsError(f"nothing to resume in {path}: {ckpt} does not exist (a run "
                              "stopped before its first epoch is started over by rerunning "
                              "its command, or by --resume when its config.yaml was written)")
        run_dir = path
    elif not path.exists():
        raise ImgclsError(f"nothing to resume: {path} does not exist")
    else:
        ckpt, run_dir = path, run_dir_of(path)
    record = CheckpointRecord.load(ckpt)
    record.require_resumable(ckpt)
    return Resume(run_dir, ckpt, record)


def unsaved_run(path: str | Path) -> Path | None:
    """A run folder with its config.yaml but no checkpoint yet (killed during its first epoch):
    ``--resume`` starts it over instead of finding nothing to resume."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file() and not (
            path / "checkpoints" / "last.pt").exists():
        return path
    return None


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``)."""
    in_checkpoints = checkpoint.parent.name == "checkpoints"
    return checkpoint.parent.parent if in_checkpoints else checkpoint.parent


def prepare_run_dir(cfg: Config, resume_dir: Path | None) -> Path:
    """Create (or, on resume, reuse) the run folder and check that it can be written."""
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = cfg.log.name or f"{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(cfg.log.output) / name
        # A folder whose run stopped before its first checkpoint holds nothing to keep: it is
        # started over (its metrics rows and events are dropped by the logger), not refused.
        if (run_dir / "checkpoints" / "last.pt").exists():
            if cfg.log.name:
                raise ImgclsError(
                    f"run folder {run_dir} already holds a run; continue it with "
                    f"`imgcls train --resume {run_dir}` or choose another --name"
                )
            run_dir = Path(f"{run_dir}-{datetime.now():%f}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ImgclsError(
            f"cannot write to output folder {run_dir}: {exc.strerror or exc}"
        ) from None
    return run_dir


def shared_run_dir(cfg: Config, resume_dir: Path | None, info: runtime.DistInfo) -> Path:
    """Rank 0 makes the run folder; every rank gets its path (one timestamp for all), or rank
    0's error, so that no rank waits for a folder that will never come."""
    run_dir: Path | None = None
    error: str | None = None
    if info.is_main:
        try:
            run_dir = prepare_run_dir(cfg, resume_dir)
        except ImgclsError as exc:
            if not info.distributed:
                raise
            error = str(exc)
    run_dir, error = runtime.broadcast_object((run_dir, error))
    if error is not None:
        raise ImgclsError(error)
    assert run_dir is not None
    return run_dir


def next_steps(run_dir: Path, resume: tuple[str, str]) -> list[str]:
    """The commands a person runs next on the run just made (printed at the end of train);
    ``resume`` is (what, KEY=VALUE) for the line that continues it."""
    run = shlex.quote(str(run_dir))
    best = shlex.quote(str(run_dir / "checkpoints" / "best.pt"))
    what, extra = resume
    return [
        f"evaluate it:  imgcls evaluate {best} [--split test]",
        f"predict:      imgcls predict {best} IMAGE_OR_FOLDER ...",
        f"export:       imgcls export {best} --format onnx",
        f"{what + ':':<13} imgcls train --resume {run}{' ' + extra if extra else ''}",
        f"TensorBoard:  tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}",
    ]
