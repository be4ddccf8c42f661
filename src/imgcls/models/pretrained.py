"""Pretrained weights from local files: reading a state_dict, fitting it to a model.

``model.pretrained=PATH`` (any model; a ``.safetensors`` file too, as timm's Hub weights are)
goes through :func:`load_pretrained_file`; torchvision's downloadable weights are torchvision's
(``torchvision_models.build``), timm's are timm's (``timm_models.build``). ``imgcls convert``
(``imgcls.deploy.legacy``) reads old files with the same :func:`extract_state_dict`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import ModelConfig
from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.models import timm_models
from imgcls.models import torchvision_models as tvm

__all__ = ["STATE_DICT_KEYS", "LoadReport", "extract_state_dict", "load_pretrained_file",
           "pretrained_path"]

log = logging.getLogger("imgcls")

# Where training scripts tuck the weights inside a checkpoint dict.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net")
# DataParallel/DDP and torch.compile wrap the model and prefix every key.
_KEY_PREFIXES = ("module.", "_orig_mod.")


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict in ``obj`` (bare, or inside a checkpoint dict), with wrapper prefixes
    stripped; None when ``obj`` holds no dict of tensors."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        return None
    state = dict(obj)
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``path``: a bare one, or one inside a checkpoint dict (``"model"``...)."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all mean "not a usable file"
        raise ImgclsError(
            f"model.pretrained file {path}: cannot load it with torch.load(weights_only=True): "
            f"{_load_error_reason(exc)}"
        ) from None
    state = extract_state_dict(obj)
    if state is None:
        raise ImgclsError(
            f"model.pretrained file {path}: not a state_dict (expected a dict of tensors, as "
            "saved by torch.save(model.state_dict(), PATH))"
        )
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (timm's weights on the Hugging Face Hub)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImgclsError(f"model.pretrained file {path}: reading .safetensors needs the "
                          "safetensors package (pip install safetensors; timm brings it)") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # a truncated or foreign file: the library's own one-line reason
        raise ImgclsError(f"model.pretrained file {path}: not a safetensors file "
                          f"({first_line(exc, 160)})") from None


def _load_error_reason(exc: Exception) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error: "
    # torch's weights_only message is a page of advice; the cause is on the marker's line.
    detail = text.split(marker, 1)[-1].strip()
    detail = (detail.splitlines() or [type(exc).__name__])[0].split(". ", 1)[0][:160]
    if detail.startswith("Unsupported global"):  # pickled classes, numpy arrays...
        return f"it holds objects other than tensors ({detail})"
    return f"not a file written by torch.save ({type(exc).__name__}: {detail})"


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained_file` did with a file (``model.pretrained_report``).

    Key lists, in the model's order (the file's for ``unexpected``). The new head's keys are
    expected to be missing from the file or to have another shape there (``head``); every other
    missing, mismatched or unexpected key is a problem: an error with ``strict_load``, a
    warning without.
    """

    path: str
    loaded: tuple[str, ...]  # model keys filled from the file
    missing: tuple[str, ...]  # in the model, not in the file: they keep their initialisation
    unexpected: tuple[str, ...]  # in the file, not in the model: ignored
    mismatched: tuple[str, ...]  # in both with other shapes: not loaded
    head: tuple[str, ...] = ()  # the head's keys among missing + mismatched (a new head)
    adapted: tuple[str, ...] = ()  # loaded after summing RGB filters for a 1-channel model
    ignored: tuple[str, ...] = ()  # unexpected keys of disabled aux heads (googlenet...)

    @property
    def problems(self) -> tuple[str, ...]:
        """Missing, mismatched and unexpected keys that are not the new head's or an aux head's."""
        return tuple(
            k for k in (*self.missing, *self.mismatched, *self.unexpected)
            if k not in self.head and k not in self.ignored
        )

    @property
    def complete(self) -> bool:
        """Every key but the new head's came from the file."""
        return not self.problems


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _first(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_pretrained_file(
    model: nn.Module, path: str | Path, name: str | None = None, *, strict: bool = True
) -> LoadReport:
    """Load a local state_dict into ``model``; return (and log) a :class:`LoadReport`.

    Every key whose shape matches is loaded. The head's keys are skipped when missing or of
    another shape (a 1000-class file into a 5-class model) and then keep their fresh
    initialisation (logged at INFO). A 3-channel first conv is summed over RGB for a 1-channel
    model. Any other missing, mismatched or unexpected key means the file is for another
    architecture: with ``strict`` (``model.strict_load``, the default) an ImgclsError and
    nothing is loaded; without, what fits is loaded and the rest logged at WARNING (seed 002's
    partial loading). A file of which nothing fits is an error either way.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    head_name, _ = tvm.find_head(model)
    first = tvm.find_first_conv(model)
    first_weight = f"{first[0]}.weight" if first else None
    label = name or type(model).__name__

    match = _match_keys(own, state, first_weight)
    unexpected = [k for k in state if k not in own]
    report = LoadReport(
        path=str(path),
        loaded=tuple(match.merged),
        missing=tuple(match.missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(match.mismatched),
        head=tuple(
            k for k in (*match.missing, *match.mismatched) if k.startswith(head_name + ".")
        ),
        adapted=tuple(match.adapted),
        ignored=tuple(k for k in unexpected if k.startswith(tvm.AUX_PREFIXES)),
    )
    problems = [
        f"{k} missing" if k in match.missing else match.shapes.get(k, f"unexpected {k}")
        for k in report.problems
    ]
    _check_fit(path, label, problems, report, strict=strict)
    model.load_state_dict({**own, **match.merged})
    log.info("model.pretrained: loaded %d tensors from %s; new head, not loaded: %s",
             len(match.merged), path, ", ".join(report.head) or "none")
    if problems:
        _warn_partial_fit(path, label, report, match.shapes)
    return report


@dataclass
class _KeyMatch:
    """How a file's state_dict lines up with the model's, key by key (model order)."""

    merged: dict[str, torch.Tensor] = field(default_factory=dict)  # to load (as is, or summed)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # RGB filters summed for a 1-channel model
    shapes: dict[str, str] = field(default_factory=dict)  # mismatched key -> both shapes, in words


def _match_keys(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], first_weight: str | None
) -> _KeyMatch:
    match = _KeyMatch()
    for key, target in own.items():
        src = state.get(key)
        if src is None:
            match.missing.append(key)
        elif src.shape == target.shape:
            match.merged[key] = src
        elif (
            key == first_weight and src.dim() == 4
            and target.shape[1] == 1 and src.shape[0] == target.shape[0]
            and src.shape[2:] == target.shape[2:]
        ):
            match.merged[key] = src.sum(dim=1, keepdim=True)  # see tvm.adapt_first_conv
            match.adapted.append(key)
        else:
            match.mismatched.append(key)
            match.shapes[key] = f"{key} is {_shape(src)} in the file, {_shape(target)} here"
    return match


def _check_fit(
    path: Path, label: str, problems: list[str], report: LoadReport, *, strict: bool
) -> None:
    """Raise when the file is for another architecture (``strict``) or nothing of it fits."""
    if problems and strict:
        hint = (" or saved with model.head=append?"
                if any(".add_linear." in k for k in (*report.missing, *report.unexpected))
                else "?")
        raise ImgclsError(
            f"model.pretrained file {path} does not fit model {label}: "
            f"{len(problems)} problem(s), e.g. {'; '.join(problems[:3])} "
            f"(saved from another architecture or in_channels{hint} "
            "model.strict_load=false loads what fits)"
        )
    if not report.loaded:
        raise ImgclsError(
            f"model.pretrained file {path}: not one tensor fits model {label} (e.g. "
            f"{'; '.join(problems[:3])}); it was saved from another architecture"
        )


def _warn_partial_fit(path: Path, label: str, report: LoadReport, shapes: dict[str, str]) -> None:
    own_problems = set(report.problems)
    gone = [k for k in report.missing if k in own_problems]
    other = [k for k in report.mismatched if k in own_problems]
    extra = [k for k in report.unexpected if k in own_problems]
    log.warning(
        "model.pretrained file %s only partly fits %s (model.strict_load=false): "
        "%d missing key(s) keep their initialisation: %s; %d key(s) of another shape not "
        "loaded: %s; %d unexpected key(s) ignored: %s",
        path, label, len(gone), _first(gone) or "-", len(other),
        _first([shapes[k] for k in other]) or "-", len(extra), _first(extra) or "-",
    )


def pretrained_path(cfg: ModelConfig, source: str) -> Path:
    """``cfg.pretrained`` as a local file (it is not a weights name); an ImgclsError when there
    is no such file, naming the weights ``cfg.name`` can download instead."""
    path = Path(cfg.pretrained).expanduser()
    if path.is_file():
        return path
    if source in ("torchvision", "timm"):
        zoo = tvm if source == "torchvision" else timm_models
        known = ", ".join(zoo.weights_names(cfg.name))
        raise ImgclsError(
            f"model.pretrained={short_repr(cfg.pretrained)}: no such file, and not a weights "
            f"name of {cfg.name} ({known})"
        )
    raise ImgclsError(
        f"model.pretrained={short_repr(cfg.pretrained)}: no such file ({cfg.name} has no "
        "downloadable weights; pass a state_dict saved with torch.save)"
    )
