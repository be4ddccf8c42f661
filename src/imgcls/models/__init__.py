"""Model zoo: imgcls's seed CNNs plus every torchvision classifier, built from ``ModelConfig``.

>>> from imgcls.config import ModelConfig
>>> model = create_model(ModelConfig(name="lenet"), num_classes=10)
>>> get_model_info("resnet18").input_size
224

``model.pretrained``: ``""`` random init; ``"default"`` or a weights name (``IMAGENET1K_V1``)
for torchvision models (downloaded by torchvision); or a local ``torch.save``-d state_dict (any
model). ``model.freeze``: train the classifier head only (see :func:`set_train_mode`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from imgcls.config import ModelConfig
from imgcls.errors import ImgclsError
from imgcls.models import seed_cnns  # noqa: F401  (importing it registers the seed CNNs)
from imgcls.models import torchvision_models as tvm
from imgcls.registry import MODELS, unknown_name_error

__all__ = [
    "MODELS",
    "ModelInfo",
    "count_parameters",
    "create_model",
    "find_head",
    "get_model_info",
    "head_parameters",
    "list_models",
    "load_pretrained_file",
    "set_train_mode",
]

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
    if tvm.is_available(name):
        return "torchvision"
    raise unknown_name_error("model", name, [*MODELS.names(), *tvm.available()], key)


def get_model_info(name: str, pretrained: str = "") -> ModelInfo:
    """Sizes and normalisation of ``name``; ``pretrained`` picks a torchvision weights' sizes
    (``vit_b_16`` with ``IMAGENET1K_SWAG_E2E_V1`` wants 384, not 224)."""
    source = _source(name)
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


def _build(name: str, num_classes: int, in_channels: int, weights: Any = None) -> nn.Module:
    if _source(name) == "imgcls":
        return MODELS.get(name)(num_classes, in_channels)
    return tvm.build(name, num_classes, in_channels, weights)


def create_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build ``cfg.name`` with a ``num_classes`` head, load ``cfg.pretrained``, apply ``freeze``.

    Raises ImgclsError for an unknown name, a failed weights download, or a pretrained file that
    does not fit the architecture.
    """
    if num_classes < 1:
        raise ImgclsError(f"cannot build model {cfg.name!r} for {num_classes} classes")
    source = _source(cfg.name)
    weights = tvm.resolve_weights(cfg.name, cfg.pretrained) if source == "torchvision" else None
    path = _pretrained_path(cfg, source) if cfg.pretrained and weights is None else None

    model = _build(cfg.name, num_classes, cfg.in_channels, weights)
    if weights is not None:
        log.info("model %s: pretrained weights %s, new %d-class head", cfg.name, weights,
                 num_classes)
    if path is not None:
        load_pretrained_file(model, path, cfg.name)
    if cfg.freeze:
        if weights is None and path is None:
            log.warning("model.freeze=true without model.pretrained: the frozen backbone is "
                        "random, only the head will learn")
        freeze_backbone(model)
    return model


def _pretrained_path(cfg: ModelConfig, source: str) -> Path:
    path = Path(cfg.pretrained).expanduser()
    if path.is_file():
        return path
    if source == "torchvision":
        known = ", ".join(tvm.weights_names(cfg.name))
        raise ImgclsError(
            f"model.pretrained={cfg.pretrained!r}: no such file, and not a weights name of "
            f"{cfg.name} ({known})"
        )
    raise ImgclsError(
        f"model.pretrained={cfg.pretrained!r}: no such file ({cfg.name} has no downloadable "
        "weights; pass a state_dict saved with torch.save)"
    )


# --------------------------------------------------------------------------- pretrained files

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
# DataParallel/DDP and torch.compile wrap the model and prefix every key.
_KEY_PREFIXES = ("module.", "_orig_mod.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``path``: a bare one, or one inside a checkpoint dict (``"model"``...)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all mean "not a usable file"
        raise ImgclsError(
            f"model.pretrained file {path}: cannot load it with torch.load(weights_only=True): "
            f"{_load_error_reason(exc)}"
        ) from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ImgclsError(
            f"model.pretrained file {path}: not a state_dict (expected a dict of tensors, as "
            "saved by torch.save(model.state_dict(), PATH))"
        )
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _load_error_reason(exc: Exception) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error: "
    # torch's weights_only message is a page of advice; the cause is on the marker's line.
    detail = text.split(marker, 1)[-1].strip()
    detail = (detail.splitlines() or [type(exc).__name__])[0].split(". ", 1)[0][:160]
    if detail.startswith("Unsupported global"):  # pickled classes, numpy arrays...
        return f"it holds objects other than tensors ({detail})"
    return f"not a file written by torch.save ({type(exc).__name__}: {detail})"


def load_pretrained_file(model: nn.Module, path: str | Path, name: str | None = None) -> list[str]:
    """Load a local state_dict into ``model``; return (and log) the head keys it skipped.

    Every key whose shape matches is loaded. The head's keys are skipped when their shape differs
    (a 1000-class file into a 5-class model) and then keep their fresh initialisation. A 3-channel
    first conv is summed over RGB for a 1-channel model. Any other missing, mismatched or extra
    key means the file is for another architecture: ImgclsError, and nothing is loaded.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    head_name, _ = find_head(model)
    first = tvm.find_first_conv(model)
    first_weight = f"{first[0]}.weight" if first else None

    merged: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    problems: list[str] = []
    for key, target in own.items():
        src = state.get(key)
        if src is not None and src.shape == target.shape:
            merged[key] = src
        elif (
            src is not None and key == first_weight and src.dim() == 4
            and target.shape[1] == 1 and src.shape[0] == target.shape[0]
            and src.shape[2:] == target.shape[2:]
        ):
            merged[key] = src.sum(dim=1, keepdim=True)  # see tvm.adapt_first_conv
        elif key.startswith(head_name + "."):
            skipped.append(key)
        elif src is None:
            problems.append(f"{key} missing")
        else:
            problems.append(f"{key} is {list(src.shape)} in the file, {list(target.shape)} here")
    extra = [k for k in state if k not in own and not k.startswith(tvm.AUX_PREFIXES)]
    problems += [f"unexpected {k}" for k in extra]
    if problems:
        raise ImgclsError(
            f"model.pretrained file {path} does not fit model {name or type(model).__name__}: "
            f"{len(problems)} problem(s), e.g. {'; '.join(problems[:3])} "
            "(saved from another architecture or in_channels?)"
        )
    model.load_state_dict({**own, **merged})
    log.info("model.pretrained: loaded %d tensors from %s; new head, not loaded: %s",
             len(merged), path, ", ".join(skipped) or "none")
    return skipped


# --------------------------------------------------------------------------- fine-tuning


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head's parameters (what ``freeze`` leaves trainable)."""
    return list(find_head(model)[1].parameters())


def freeze_backbone(model: nn.Module) -> None:
    """``requires_grad=False`` everywhere except the head."""
    model.requires_grad_(False)
    for p in head_parameters(model):
        p.requires_grad_(True)


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
