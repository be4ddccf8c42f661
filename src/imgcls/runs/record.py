"""The checkpoint record: one type for what a checkpoint holds, written and read in one place.

Training, resume, ``convert``, ``inference.load_model``, ``export`` and the benchmarks all go
through :class:`CheckpointRecord`, so a field is named once. On disk it is a plain dict of
tensors, numbers, strings, lists and dicts (``torch.load(weights_only=True)`` reads it back without
running any code), written atomically by :func:`imgcls.runs.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import torch

import imgcls
from imgcls.config.sizes import size_hw, size_text
from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.runs.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint

# What every record needs to rebuild and use a model; the rest has defaults.
REQUIRED = ("model", "config", "classes", "input_size")


@dataclass
class CheckpointRecord:
    """A trained (or converted) model with everything needed to use it, and, when it came from
    training, everything needed to resume that training exactly.

    >>> record = CheckpointRecord.load("runs/NAME/checkpoints/best.pt")  # doctest: +SKIP
    >>> record.classes, record.epoch, record.resumable                    # doctest: +SKIP
    """

    model: dict[str, torch.Tensor]  # the unwrapped model's state_dict
    config: dict[str, Any]  # Config.to_dict() of the run
    classes: list[str]
    input_size: int | list[int]  # an int when square (as always), else [height, width]
    in_channels: int = 3
    mean: list[float] | None = None  # normalisation of the evaluation transform (None: [0, 1])
    std: list[float] | None = None
    native_size: int | None = None  # the data's own image size, when all images share one
    epoch: int | None = None  # epochs completed (None: unknown, for converted files)
    step: int = 0  # optimizer steps completed
    best_metric: float | None = None  # the best value of `monitor` so far
    best_epoch: int | None = None
    monitor: str = "val_acc"  # the metric best_metric and best.pt refer to
    metrics: dict[str, Any] = field(default_factory=dict)  # the epoch's metrics row
    provenance: dict[str, Any] = field(default_factory=dict)
    # the user's own model class: its name and file's sha256 ({} for imgcls's own models)
    model_code: dict[str, Any] = field(default_factory=dict)
    # ---- training state: present in training checkpoints, absent in converted ones
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None  # AveragedModel state (train.ema > 0)
    scaler: dict[str, Any] | None = None  # GradScaler state (fp16 autocast)
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by callback key
    weight_hooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by hook key
    # a state saved inside an epoch: how far epoch `epoch + 1` had come (EpochProgress)
    progress: dict[str, Any] | None = None
    # several labels per image (a label CSV): sigmoid scores, and each class's decision
    # threshold, chosen on the validation images to maximise its F1 (None: 0.5 for every class)
    multilabel: bool = False
    thresholds: list[float] | None = None

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None and self.scheduler is not None

    @property
    def mean_std(self) -> tuple[list[float], list[float]] | None:
        if self.mean is None or self.std is None:
            return None
        return list(self.mean), list(self.std)

    def decision_thresholds(self, override: float | None = None) -> list[float]:
        """A multi-label model's threshold per class: ``override`` (``--threshold``) for every
        class, else the checkpoint's (chosen on its validation images), else 0.5."""
        if override is not None:
            if not 0 < override < 1:
                raise ImgclsError(f"--threshold must be between 0 and 1, got {override:g}")
            return [float(override)] * len(self.classes)
        return [float(t) for t in self.thresholds or [0.5] * len(self.classes)]

    def inference_weights(self) -> dict[str, torch.Tensor]:
        """The weights to predict with: the EMA average when the run kept one (``train.ema``; it
        is what validation measured), else the trained weights."""
        if self.ema:  # AveragedModel's state_dict: "module."-prefixed weights plus its counter
            return {k.removeprefix("module."): v for k, v in self.ema.items()
                    if k.startswith("module.")}
        return self.model

    # ------------------------------------------------------------------ to and from a dict

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk (without the format marker, which save adds)."""
        # not dataclasses.asdict: it would deep-copy every tensor
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # Optional training state is left out rather than stored as None: a converted
        # checkpoint says plainly that it has no optimiser.
        for key in ("optimizer", "scheduler", "rng", "ema", "scaler", "progress"):
            if payload[key] is None:
                del payload[key]
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: str | Path) -> CheckpointRecord:
        """A record from a loaded dict; a missing required field is a one-line error naming it.

        Records written before a field existed get its default (``monitor``: val_acc, the only
        metric best.pt followed then)."""
        for key in REQUIRED:
            if key not in payload:
                raise ImgclsError(f"checkpoint {path} has no {key!r} field; it is damaged or "
                                  "was not written by imgcls")
        names = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in payload.items() if k in names})
        if not isinstance(record.config, dict) or not isinstance(record.classes, (list, tuple)):
            raise ImgclsError(f"checkpoint {path}: field 'config' or 'classes' has the wrong type")
        record.classes = [str(c) for c in record.classes]
        configured = _model_config(record.config).get("in_channels")
        if "in_channels" not in payload and isinstance(configured, int):
            record.in_channels = configured  # a record without the field: its config's value
        record.check(path)
        return record

    def check(self, path: str | Path) -> None:
        """The record against itself, before anything is built from it: a one-line error naming
        the first field that cannot be right. Classes: at least one, each name once. Input size
        and channels: positive whole numbers, the channels those of its config. Mean and std: one
        finite value per channel (or one for all), every std > 0 (a zero std divides by zero,
        a negative one flips the image). Whether the model fits them is
        :meth:`check_model`'s part."""
        where = f"checkpoint {path}"
        if not self.classes:
            raise ImgclsError(f"{where} has no classes")
        seen: set[str] = set()
        for name in self.classes:
            if name in seen:
                raise ImgclsError(f"{where} names class {short_repr(name)} twice; each class "
                                  "needs a name of its own (the checkpoint is damaged or was "
                                  "edited)")
            seen.add(name)
        for key in ("input_size", "in_channels"):
            value = getattr(self, key)
            if key == "input_size" and isinstance(value, (list, tuple)):
                if len(value) != 2 or not all(_positive_int(v) for v in value):
                    raise ImgclsError(f"{where}: input_size must be a positive whole number or "
                                      f"[height, width] of them, got {short_repr(value)}")
            elif not _positive_int(value):
                raise ImgclsError(f"{where}: {key} must be a positive whole number, got "
                                  f"{short_repr(value)}")
        configured = _model_config(self.config).get("in_channels", self.in_channels)
        if configured != self.in_channels:
            raise ImgclsError(f"{where} records in_channels={self.in_channels} but its config "
                              f"says model.in_channels={short_repr(configured)}")
        if (self.mean is None) != (self.std is None):
            raise ImgclsError(f"{where} has a {'mean' if self.std is None else 'std'} "
                              f"without a {'std' if self.std is None else 'mean'}")
        # one value per channel; one for all channels; RGB statistics averaged for greyscale
        lengths = {1, self.in_channels} | ({3} if self.in_channels == 1 else set())
        for key, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                continue
            if not isinstance(values, (list, tuple)) or len(values) not in lengths:
                raise ImgclsError(f"{where}: {key} {short_repr(values)} does not fit "
                                  f"{self.in_channels}-channel images (one value per channel)")
            for i, value in enumerate(values):
                number = (isinstance(value, (int, float)) and not isinstance(value, bool)
                          and math.isfinite(value))
                if not number or (key == "std" and value <= 0):
                    need = "a finite number > 0" if key == "std" else "a finite number"
                    raise ImgclsError(f"{where}: {key}[{i}] is {short_repr(value)}, not {need} "
                                      "(the checkpoint is damaged or was edited)")
        if self.mean is not None and len(self.mean) != len(self.std or ()):
            raise ImgclsError(f"{where}: mean and std have different lengths "
                              f"({len(self.mean)} and {len(self.std or ())})")

    def check_model(self, model: torch.nn.Module, path: str | Path,
                    device: torch.device | str = "cpu") -> None:
        """Run one zero image of the recorded size through ``model`` (eval mode, no gradients,
        each module's mode put back after): a model that cannot take that size, or that gives
        another number of scores than there are classes, is a one-line error here instead of a
        shape traceback (or scores for the wrong classes) on the first real batch."""
        shape = (1, self.in_channels, *size_hw(self.input_size))
        size = f"1x{self.in_channels}x{size_text(self.input_size)}"
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(shape, device=device))
        except (ImgclsError, torch.cuda.OutOfMemoryError):  # already one line / not a misfit
            raise
        except Exception as exc:
            raise ImgclsError(
                f"checkpoint {path}: the model does not run on its recorded input size {size} "
                f"({first_line(exc, limit=160)}); it was not trained at that size"
            ) from None
        finally:
            for module, training in modes:
                module.training = training
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if got != (1, len(self.classes)):
            raise ImgclsError(
                f"checkpoint {path}: the model gives output {got} for one {size} image, not one "
                f"score for each of its {len(self.classes)} classes"
            )

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        save_checkpoint(self.to_payload(), path)

    @classmethod
    def load(cls, path: str | Path) -> CheckpointRecord:
        """Read safely (``weights_only=True``); nothing in the file runs."""
        return cls.from_payload(load_checkpoint(path), path)

    def require_resumable(self, path: str | Path) -> None:
        if self.resumable and self.rng is not None and self.epoch is not None:
            return
        source = self.provenance.get("converted_from")
        origin = f" (converted from {source})" if source else ""
        raise ImgclsError(
            f"{path} holds weights only{origin} and cannot be resumed; start a new run from it "
            f"with model.pretrained={path}"
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _model_config(config: Any) -> dict[str, Any]:
    """The ``model`` section of a config dict ({} when there is none)."""
    section = config.get("model") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def provenance(device: torch.device | str, world_size: int = 1,
               command: str | None = None) -> dict[str, Any]:
    """Which software and hardware made a checkpoint, and the command that ran it (results
    carry their provenance); ``command`` None: this process's, by :func:`command_line`."""
    return {
        "imgcls": imgcls.__version__,
        "torch": str(torch.__version__),  # a TorchVersion object would not load weights_only
        "python": platform.python_version(),
        "device": str(device),
        "world_size": world_size,
        "command": command_line() if command is None else command,
    }


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process (``argv``: ``sys.argv``), shell-quoted, to run it
    again: the ``imgcls`` command (console script, ``python -m imgcls``, torchrun's ``-m
    imgcls``) as ``imgcls ...``; anything else trained from Python, through ``imgcls.api``.

    >>> command_line(["/venv/bin/imgcls", "train", "--data", "my images"])
    "imgcls train --data 'my images'"
    >>> command_line(["fit.py", "--fast"])
    'python: imgcls.api.train, in fit.py --fast'
    """
    argv = list(sys.argv if argv is None else argv)
    program = PurePath(argv[0]) if argv and argv[0] else None
    if program is not None and (program.stem == "imgcls" or (
            program.name == "__main__.py" and program.parent.name == "imgcls")):
        return shlex.join(["imgcls", *argv[1:]])
    if program is None or argv[0] == "-c":  # an interactive session, python -c
        return "python: imgcls.api.train"
    return f"python: imgcls.api.train, in {shlex.join([program.name, *argv[1:]])}"


__all__ = ["FORMAT", "REQUIRED", "VERSION", "CheckpointRecord", "provenance"]
