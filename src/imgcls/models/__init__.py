"""Model zoo: imgcls's seed CNNs plus every torchvision classifier, built from ``ModelConfig``.

>>> from imgcls.config import ModelConfig
>>> model = create_model(ModelConfig(name="lenet"), num_classes=10)
>>> get_model_info("resnet18").input_size
224

``model.pretrained``: ``""`` random init; ``"default"`` or a weights name (``IMAGENET1K_V1``)
for torchvision models (downloaded by torchvision); or a local ``torch.save``-d state_dict (any
model), loaded by :func:`load_pretrained_file` (``model.strict_load``).

Fine-tuning options (the seeds' recipes):

* ``model.head``: ``replace`` the last classifier layer with a ``num_classes`` one, or
  ``append`` ``Linear(1000, num_classes)`` after the kept 1000-way layer (seed 001's
  ``vgg.classifier.add_module('add_linear', ...)``; imgcls's CNNs keep their 10-way CIFAR layer
  and append ``Linear(10, num_classes)``). :func:`find_head` then finds the appended layer: it
  alone is the head for ``freeze`` and ``optim.head_lr_mult``.
* ``model.freeze``: ``none``, ``backbone`` (train the head only) or ``N`` (freeze the first N
  stages, :func:`backbone_stages`), or a list of parameter-name patterns (``[conv, 'fc1.*']``,
  :func:`freeze_matching`); frozen BatchNorm stays in eval mode (:func:`set_train_mode`).
* ``model.head_pool``: ``avg`` / ``max`` global pooling in front of the classifier, for models
  with a global ``avgpool`` layer (:func:`~imgcls.models.torchvision_models.set_global_pool`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from imgcls.config import ModelConfig
from imgcls.errors import ImgclsError, short_repr

# Importing the model modules registers their models (the seed CNNs first: cifar_resnets imports
# seed_cnns before registering its own).
from imgcls.models import cifar_resnets, fast_nets, seed_cnns, user  # noqa: F401
from imgcls.models import torchvision_models as tvm
from imgcls.models.finetune import (
    FrozenParams,
    Stage,
    apply_freeze,
    backbone_stages,
    freeze_matching,
)
from imgcls.registry import MODELS, unknown_name_error
from imgcls.runtime import detect_dist
from imgcls.tracking import echo

__all__ = [
    "HEADS",
    "HEAD_POOLS",
    "MODELS",
    "FrozenParams",
    "LoadReport",
    "ModelInfo",
    "Stage",
    "apply_freeze",
    "backbone_stages",
    "count_parameters",
    "STATE_DICT_KEYS",
    "create_model",
    "extract_state_dict",
    "find_head",
    "freeze_matching",
    "get_model_info",
    "head_parameters",
    "list_models",
    "load_pretrained_file",
    "set_train_mode",
]

HEADS = ("replace", "append")
HEAD_POOLS = ("default", "avg", "max")

log = logging.getLogger("imgcls")

find_head = tvm.find_head


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_size: int  # the image size the model is meant for (the weights' eval crop size)
    default_normalize: str  # "dataset" (seed CNNs) | "imagenet" (torchvision models)
    source: str  # "imgcls" | "torchvision"
    fixed_size: bool = False  # True: only input_size works (flatten sizes, ViT position embeddings)
    min_size: int = 1  # smallest input the architecture accepts
    resize_size: int | None = None  # torchvision eval recipe: resize to this, then center-crop


def _source(name: str, key: str = "model.name") -> str:
    if name in MODELS:
        return "imgcls"
    if user.is_user_model(name):
        return "user"
    if tvm.is_available(name):
        return "torchvision"
    raise unknown_name_error("model", name, [*MODELS.names(), *tvm.available()], key)


def get_model_info(name: str, pretrained: str = "") -> ModelInfo:
    """Sizes and normalisation of ``name``; ``pretrained`` picks a torchvision weights' sizes
    (``vit_b_16`` with ``IMAGENET1K_SWAG_E2E_V1`` wants 384, not 224)."""
    source = _source(name)
    if source == "user":  # sizes from a class attribute `input_size`, else the tutorials' 32
        return ModelInfo(name=name, source=source, input_size=user.input_size(name),
                         default_normalize="dataset")
    if source == "imgcls":
        meta: dict[str, Any] = MODELS.meta(name)
        meta.setdefault("min_size", meta["input_size"] if meta.get("fixed_size") else 1)
    else:
        meta = tvm.meta(name, tvm.resolve_weights(name, pretrained))
    return ModelInfo(name=name, source=source, **meta)


def list_models(include_torchvision: bool = True) -> list[ModelInfo]:
    """imgcls's models (registration order), then torchvision's (alphabetical)."""
    names = MODELS.names() + (list(tvm.available()) if include_torchvision else [])
    return [get_model_info(n) for n in names]


def _build(
    name: str, num_classes: int, in_channels: int, weights: Any = None, head: str = "replace",
    kwargs: dict[str, Any] | None = None, quiet: bool = False,
) -> nn.Module:
    if _source(name) == "user":
        return user.build(name, num_classes, in_channels, kwargs or {}, quiet=quiet)
    if kwargs:
        raise ImgclsError(f"model.kwargs is for your own model class (model.name=FILE.py:CLASS); "
                          f"{name} takes none")
    if _source(name) == "imgcls":
        if head == "replace":
            return MODELS.get(name)(num_classes, in_channels)
        model = MODELS.get(name)(seed_cnns.ORIGINAL_CLASSES, in_channels)
        tvm.append_head(model, num_classes, name)
        return model
    return tvm.build(name, num_classes, in_channels, weights, head)


def _check_options(cfg: ModelConfig, source: str) -> None:
    # config.validate() checks these for configs; ModelConfig can also be built by hand.
    if cfg.head not in HEADS:
        raise ImgclsError(f"model.head={short_repr(cfg.head)}: expected one of {', '.join(HEADS)}")
    if cfg.head_pool not in HEAD_POOLS:
        raise ImgclsError(
            f"model.head_pool={short_repr(cfg.head_pool)}: expected one of {', '.join(HEAD_POOLS)}"
        )
    if source == "user" and (cfg.head != "replace" or cfg.head_pool != "default"):
        raise ImgclsError(f"model.head and model.head_pool are for imgcls's and torchvision's "
                          f"models; {cfg.name} is built as its class defines it")
    if cfg.head_pool != "default" and source == "imgcls":
        raise ImgclsError(
            f"model.head_pool={cfg.head_pool} is not supported for {cfg.name}: imgcls's CNNs "
            "flatten a fixed-size feature map into their first Linear layer; use "
            "model.head_pool=default, or a torchvision model such as resnet18"
        )


def create_model(
    cfg: ModelConfig, num_classes: int, *, from_checkpoint: bool = False
) -> nn.Module:
    """Build ``cfg.name`` with a ``num_classes`` head (``cfg.head``, ``cfg.head_pool``), load
    ``cfg.pretrained``, apply ``cfg.freeze``.

    A pretrained file's :class:`LoadReport` is attached as ``model.pretrained_report``. Raises
    ImgclsError for an unknown name or option, a failed weights download, a pretrained file that
    does not fit the architecture (``strict_load``), or more frozen stages than the model has.

    >>> model = create_model(ModelConfig(name="resnet18", freeze="2"), 3)  # doctest: +SKIP
    """
    if num_classes < 1:
        raise ImgclsError(f"cannot build model {short_repr(cfg.name)} for {num_classes} classes")
    source = _source(cfg.name)
    _check_options(cfg, source)
    weights = tvm.resolve_weights(cfg.name, cfg.pretrained) if source == "torchvision" else None
    path = _pretrained_path(cfg, source) if cfg.pretrained and weights is None else None

    model = _build(cfg.name, num_classes, cfg.in_channels, weights, cfg.head, cfg.kwargs,
                   quiet=from_checkpoint)
    tvm.set_global_pool(model, cfg.head_pool, cfg.name)
    if weights is not None:
        log.info("model %s: pretrained weights %s, %s %d-class head", cfg.name, weights,
                 "appended" if cfg.head == "append" else "new", num_classes)
    if path is not None:
        model.pretrained_report = load_pretrained_file(
            model, path, cfg.name, strict=cfg.strict_load
        )
    if cfg.freeze not in ("none", "0"):
        # A checkpoint's weights replace random ones right after: no warning then.
        if weights is None and path is None and not from_checkpoint:
            log.warning("model.freeze=%s without model.pretrained: the frozen layers are "
                        "random", cfg.freeze)
        if isinstance(cfg.freeze, list):  # parameter-name patterns
            report = freeze_matching(model, cfg.freeze, cfg.name)
            # Said once, for a new model: a rebuilt checkpoint (resume, evaluate, predict) and
            # the other ranks of a distributed run stay quiet.
            if not from_checkpoint and detect_dist().is_main:
                echo(report.describe())
            return model
        frozen = apply_freeze(model, cfg.freeze, cfg.name)
        log.info("model.freeze=%s: froze %d stage(s) (%s); the rest and the head (%s) train",
                 cfg.freeze, len(frozen), ", ".join(s.name for s in frozen) or "none",
                 find_head(model)[0])
    return model


def _pretrained_path(cfg: ModelConfig, source: str) -> Path:
    path = Path(cfg.pretrained).expanduser()
    if path.is_file():
        return path
    if source == "torchvision":
        known = ", ".join(tvm.weights_names(cfg.name))
        raise ImgclsError(
            f"model.pretrained={short_repr(cfg.pretrained)}: no such file, and not a weights "
            f"name of {cfg.name} ({known})"
        )
    raise ImgclsError(
        f"model.pretrained={short_repr(cfg.pretrained)}: no such file ({cfg.name} has no "
        "downloadable weights; pass a state_dict saved with torch.save)"
    )


# --------------------------------------------------------------------------- pretrained files

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
    head_name, _ = find_head(model)
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


# --------------------------------------------------------------------------- fine-tuning


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head's parameters (what ``freeze`` leaves trainable)."""
    return list(find_head(model)[1].parameters())


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but BatchNorm layers whose parameters are all frozen stay in eval mode.

    A frozen BatchNorm in train mode would still update its running mean/var from the new data
    (and normalise with batch statistics), silently changing the "frozen" backbone. Call this
    instead of ``model.train()`` in the training loop.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            # affine=False BatchNorm has no parameters to tell frozen from trained: leave it.
            if params and not any(p.requires_grad for p in params):
                module.eval()


class _WeightsOnMeta(TorchFunctionMode):
    """Allocate ``torch.empty`` tensors (how nn layers create their weights) on the meta device
    and leave every other tensor factory on the CPU.

    RegNet builders compute layer widths with ``torch.arange``/``pow``/``tolist`` at build time,
    which a plain ``with torch.device("meta")`` cannot answer (meta tensors hold no values).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def count_parameters(name: str, num_classes: int = 10, in_channels: int = 3) -> int:
    """Number of parameters of ``name`` built for ``num_classes``, without allocating weights.

    Built on the "meta" device (shapes only), so vgg16, vit_h_14 or regnet_y_128gf count at once.
    """
    try:
        with torch.device("meta"):
            model = _build(name, num_classes, in_channels)
    except NotImplementedError:  # "Cannot copy out of meta tensor": see _WeightsOnMeta
        with _WeightsOnMeta():
            model = _build(name, num_classes, in_channels)
    return sum(p.numel() for p in model.parameters())
