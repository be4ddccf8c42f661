"""Where a run lives: ``runs/NAME`` with ``checkpoints/``, ``config.yaml``, ``split.json``,
``metrics.jsonl`` and ``tensorboard/``. Made once, by rank 0, only after everything the run
needs has been checked, so a bad option never leaves an empty run folder behind. One training
at a time writes it: rank 0 holds its :class:`~imgcls.runs.lock.RunLock` for the whole
run."""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from imgcls import runtime
from imgcls.config import Config, ModelConfig, load_yaml
from imgcls.data.splits import load_split
from imgcls.errors import ImgclsError, short_repr
from imgcls.models.timm_models import is_timm_name
from imgcls.models.user import is_user_model
from imgcls.runs.checkpoint import FORMAT
from imgcls.runs.lock import RunLock, in_use, require_free
from imgcls.runs.record import CheckpointRecord
from imgcls.runs.repair import remove_temporary_files


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
    check_run_folder(run_dir, ckpt, record)
    return Resume(run_dir, ckpt, record)


# What builds the architecture: the same in the run's config.yaml, last.pt and best.pt (a
# resume may change the rest of model.*, head_pool or freeze say, as it may change the epochs)
ARCHITECTURE = ("name", "in_channels", "head", "kwargs")


def _architecture(config: Any) -> dict[str, Any]:
    section = config.get("model") if isinstance(config, dict) else None
    section = section if isinstance(section, dict) else {}
    defaults = ModelConfig()
    return {key: _plain(section.get(key, getattr(defaults, key))) for key in ARCHITECTURE}


def _plain(value: Any) -> Any:
    """Tuples as lists, as config.yaml holds them (a checkpoint keeps a tuple)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _differs(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first architecture key on which ``a`` and ``b`` differ. Of the user's own class
    only the class counts: ``--model-code`` may name its file where it now lies (its content is
    checked against the recorded hash), and config.yaml takes that path before last.pt does."""
    def same(key: str) -> bool:
        x, y = a[key], b[key]
        if key == "name" and isinstance(x, str) and isinstance(y, str) and is_user_model(x) \
                and is_user_model(y):
            return x.rpartition(":")[2] == y.rpartition(":")[2]
        return bool(x == y)

    return next((key for key in ARCHITECTURE if not same(key)), None)


def check_run_folder(run_dir: Path, ckpt: Path, record: CheckpointRecord) -> None:
    """The checkpoint to resume belongs to its run folder: config.yaml and best.pt are of the
    same model (:data:`ARCHITECTURE`) and split.json names the same classes; else a one-line
    error naming both files and what differs, before anything is read or written. A file that
    is missing or unreadable is left to the repair and the data loading that follow."""
    mine = _architecture(record.config)
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        try:
            theirs: dict[str, Any] | None = _architecture(load_yaml(config_file))
        except ImgclsError:  # rewritten by the resume, as a kill may have left it
            theirs = None
        if theirs is not None and (key := _differs(theirs, mine)) is not None:
            raise ImgclsError(
                f"{config_file} and {ckpt} are of different models: model.{key} is "
                f"{short_repr(theirs[key])} in {config_file.name} and {short_repr(mine[key])} in "
                f"{ckpt.name}; {ckpt.name} comes from another run: put this run's own back, or "
                "train a new run"
            )
    split_file = run_dir / "split.json"
    if split_file.is_file():
        try:
            split: dict[str, Any] | None = load_split(split_file)
        except ImgclsError:  # the data loading says what is wrong with it
            split = None
        if split is not None and [str(c) for c in split["classes"]] != record.classes:
            raise ImgclsError(
                f"{split_file} and {ckpt} name different classes ({short_repr(split['classes'])}"
                f" and {short_repr(record.classes)}); {ckpt.name} comes from another run: put "
                "this run's own back, or train a new run"
            )
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file() and best.resolve() != ckpt.resolve():
        other = _peek(best)
        if other is None:
            return
        theirs = _architecture(other.get("config"))
        if (key := _differs(theirs, mine)) is not None:
            raise ImgclsError(
                f"{best} and {ckpt} are of different models: model.{key} is "
                f"{short_repr(theirs[key])} in {best.name} and {short_repr(mine[key])} in "
                f"{ckpt.name}; one of them comes from another run"
            )
        classes = other.get("classes")
        if isinstance(classes, (list, tuple)) and [str(c) for c in classes] != record.classes:
            raise ImgclsError(
                f"{best} and {ckpt} name different classes ({short_repr(list(classes))} and "
                f"{short_repr(record.classes)}); one of them comes from another run"
            )


def _peek(path: Path) -> dict[str, Any] | None:
    """An imgcls checkpoint's fields, its tensors memory-mapped rather than read; None when it
    is damaged or not one (the resume's repair rewrites a damaged best.pt)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated, empty, foreign: not this check's to report
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    return payload


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


def holds_a_run(run_dir: Path) -> ImgclsError:
    """The error for a new run (``--name``) pointed at a folder that holds a saved run."""
    return ImgclsError(f"run folder {run_dir} already holds a run; continue it with "
                       f"`imgcls train --resume {run_dir}` or choose another --name")


def name_stem(model_name: str) -> str:
    """The model's part of a default run-folder name: timm's ``timm/NAME`` (``timm:NAME``) is
    ``timm-NAME``, one folder, not a ``timm/`` subfolder."""
    return f"timm-{model_name[len('timm/'):]}" if is_timm_name(model_name) else model_name


def prepare_run_dir(cfg: Config, resume_dir: Path | None) -> tuple[Path, RunLock]:
    """Create (or, on resume, reuse) the run folder, check that it can be written, and lock it
    for this process."""
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = cfg.log.name or f"{name_stem(cfg.model.name)}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(cfg.log.output) / name
        # A folder whose run stopped before its first checkpoint holds nothing to keep: it is
        # started over (its metrics rows and events are dropped by the logger), not refused.
        # One that another process is training is never taken over.
        if cfg.log.name:
            require_free(run_dir)
        if (run_dir / "checkpoints" / "last.pt").exists() or in_use(run_dir):
            if cfg.log.name:
                raise holds_a_run(run_dir)
            run_dir = Path(f"{run_dir}-{datetime.now():%f}")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(run_dir)
    except OSError as exc:
        raise ImgclsError(
            f"cannot write to output folder {run_dir}: {exc.strerror or exc}"
        ) from None
    try:  # under the lock: no other process's probe or checkpoint comes in between
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        if resume_dir is None and (run_dir / "checkpoints" / "last.pt").exists():
            raise holds_a_run(run_dir)  # one started and saved while this one was checking
    except OSError as exc:
        lock.release()
        raise ImgclsError(
            f"cannot write to output folder {run_dir}: {exc.strerror or exc}"
        ) from None
    except ImgclsError:
        lock.release()
        raise
    if resume_dir is None:  # a folder started over (a resume's repair does this on its own)
        remove_temporary_files(run_dir)
    return run_dir, lock


def shared_run_dir(cfg: Config, resume_dir: Path | None, info: runtime.DistInfo,
                   held: contextlib.ExitStack) -> Path:
    """Rank 0 makes the run folder and holds its lock until ``held`` closes; every rank gets
    its path (one timestamp for all), or rank 0's error, so that no rank waits for a folder
    that will never come."""
    run_dir: Path | None = None
    error: str | None = None
    if info.is_main:
        try:
            run_dir = held.enter_context(prepare_run_dir(cfg, resume_dir)[1]).run_dir
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
