"""The one model lookup: a name -> its sizes (:class:`ModelInfo`), the model built for a run
(:func:`create_model`), its parameter count.

Every model is in the one registry, ``imgcls.registry.MODELS``: imgcls's own register themselves
when their modules are imported here (the seed CNNs first), then torchvision's classifiers
(:func:`~imgcls.models.torchvision_models.register`). Two kinds of name are routed elsewhere:
a user's own class (``FILE.py:CLASS``, ``MODULE:CLASS``; ``models/user.py``) and timm's models
(``timm/NAME``, ``timm:NAME``; ``models/timm_models.py``, timm imported only then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from imgcls.config import ModelConfig, choices
from imgcls.config.sizes import ImageSize, size_hw
from imgcls.errors import ImgclsError, short_repr

# Importing the model modules registers their models (the seed CNNs first: cifar_resnets imports
# seed_cnns before registering its own); torchvision's are registered after them, below.
from imgcls.models import cifar_resnets, fast_nets, seed_cnns, user  # noqa: F401
from imgcls.models import timm_models as timm_zoo
from imgcls.models import torchvision_models as tvm
from imgcls.models.finetune import apply_freeze, freeze_matching
from imgcls.models.pretrained import load_pretrained_file, pretrained_path
from imgcls.registry import MODELS
from imgcls.runtime import detect_dist
from imgcls.tracking import echo

tvm.register(MODELS)

__all__ = ["HEADS", "HEAD_POOLS", "ModelInfo", "build_on_meta", "count_parameters",
           "create_model", "get_model_info", "list_models", "model_names"]

HEADS = choices("model.head")
HEAD_POOLS = choices("model.head_pool")

log = logging.getLogger("imgcls")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_size: int  # the image size the model is meant for (the weights' eval crop size)
    default_normalize: str  # "dataset" (seed CNNs) | "imagenet" (torchvision and timm models)
    source: str  # "imgcls" | "torchvision" | "timm" | "user"
    fixed_size: bool = False  # True: only input_size works (flatten sizes, ViT position embeddings)
    min_size: int = 1  # smallest input the architecture accepts
    resize_size: int | None = None  # torchvision eval recipe: resize to this, then center-crop
    # The weights' own mean and std (timm's pretrained config: 0.5/0.5 for many ViTs), which
    # transforms.normalize=auto uses; None: default_normalize decides.
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def check_size(self, size: ImageSize, option: str) -> None:
        """An ImgclsError when ``size`` pixel inputs (an int: square; or ``(H, W)``) do not suit
        the model; ``option`` is the setting as the message names it (``"--input-size 64"``)."""
        if self.fixed_size and size_hw(size) != size_hw(self.input_size):
            raise ImgclsError(
                f"{option} does not suit {self.name}, which takes "
                f"{self.input_size}x{self.input_size} images only"
            )
        if min(size_hw(size)) < self.min_size:
            raise ImgclsError(f"{option}: {self.name} needs at least {self.min_size}")


def _source(name: str) -> str:
    """"imgcls" or "torchvision" (the registry's metadata), "timm" for ``timm/NAME``, or "user"
    for ``FILE.py:CLASS``."""
    if timm_zoo.is_timm_name(name):
        return "timm"
    if name not in MODELS and user.is_user_model(name):
        return "user"
    MODELS.get(name, "model.name")  # an unknown name: one line with close matches
    return MODELS.meta(name).get("source", "imgcls")


def model_names(source: str | None = None) -> list[str]:
    """Registered names: imgcls's (registration order), then torchvision's (alphabetical);
    ``source`` (``"imgcls"``, ``"torchvision"``) keeps only those; ``"timm"``: timm's
    architectures as ``timm/NAME`` (read from timm's registry, never with the others)."""
    if source == "timm":
        return timm_zoo.names()
    return [n for n in MODELS.names() if source is None or _source(n) == source]


def get_model_info(name: str, pretrained: str = "") -> ModelInfo:
    """Sizes and normalisation of ``name``; ``pretrained`` picks a torchvision weights' sizes
    (``vit_b_16`` with ``IMAGENET1K_SWAG_E2E_V1`` wants 384, not 224)."""
    source = _source(name)
    if source == "user":  # sizes from a class attribute `input_size`, else the tutorials' 32
        return ModelInfo(name=name, source=source, input_size=user.input_size(name),
                         default_normalize="dataset")
    if source == "torchvision":
        meta = tvm.meta(name, tvm.resolve_weights(name, pretrained))
    elif source == "timm":
        meta = timm_zoo.meta(name, pretrained)
    else:
        meta = MODELS.meta(name)
        meta.pop("source", None)
        meta.setdefault("min_size", meta["input_size"] if meta.get("fixed_size") else 1)
    return ModelInfo(name=name, source=source, **meta)


def list_models(include_torchvision: bool = True) -> list[ModelInfo]:
    """imgcls's models (registration order), then torchvision's (alphabetical)."""
    return [get_model_info(n) for n in model_names(None if include_torchvision else "imgcls")]


def _build(
    name: str, num_classes: int, in_channels: int, weights: Any = None, head: str = "replace",
    kwargs: dict[str, Any] | None = None, quiet: bool = False, drop_path: float | None = None,
    head_pool: str = "default",
) -> nn.Module:
    source = _source(name)
    if drop_path is not None and source not in ("torchvision", "timm"):
        raise ImgclsError(f"model.drop_path is for torchvision's and timm's models with "
                          f"stochastic depth; {name} has none (your own class: pass it in "
                          "model.kwargs)")
    if source == "user":
        return user.build(name, num_classes, in_channels, kwargs or {}, quiet=quiet)
    if kwargs:
        raise ImgclsError(f"model.kwargs is for your own model class (model.name=FILE.py:CLASS); "
                          f"{name} takes none")
    if source == "timm":
        return timm_zoo.build(name, num_classes, in_channels, weights, head, drop_path, head_pool)
    factory = MODELS.get(name)
    if source == "torchvision":
        return factory(num_classes, in_channels, weights, head, drop_path)
    if head == "replace":
        return factory(num_classes, in_channels)
    model = factory(seed_cnns.ORIGINAL_CLASSES, in_channels)
    tvm.append_head(model, num_classes, name)
    return model


def _check_options(cfg: ModelConfig, source: str) -> None:
    # model.head and model.head_pool are one of their choices: the schema checks every
    # ModelConfig, one built by hand included.
    if source == "user" and (cfg.head != "replace" or cfg.head_pool != "default"):
        raise ImgclsError(f"model.head and model.head_pool are for imgcls's, torchvision's and "
                          f"timm's models; {cfg.name} is built as its class defines it")
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

    A pretrained file's :class:`~imgcls.models.pretrained.LoadReport` is attached as
    ``model.pretrained_report``. Raises ImgclsError for an unknown name or option, a failed
    weights download, a pretrained file that does not fit the architecture (``strict_load``),
    or more frozen stages than the model has.

    >>> model = create_model(ModelConfig(name="resnet18", freeze="2"), 3)  # doctest: +SKIP
    """
    if num_classes < 1:
        raise ImgclsError(f"cannot build model {short_repr(cfg.name)} for {num_classes} classes")
    source = _source(cfg.name)
    _check_options(cfg, source)
    weights = _weights(cfg.name, cfg.pretrained, source)
    path = pretrained_path(cfg, source) if cfg.pretrained and weights is None else None

    model = _build(cfg.name, num_classes, cfg.in_channels, weights, cfg.head, cfg.kwargs,
                   quiet=from_checkpoint, drop_path=cfg.drop_path, head_pool=cfg.head_pool)
    if source != "timm":  # timm builds its own pooling (global_pool)
        tvm.set_global_pool(model, cfg.head_pool, cfg.name)
    if weights is not None:
        log.info("model %s: pretrained weights %s, %s %d-class head", cfg.name, weights,
                 "appended" if cfg.head == "append" else "new", num_classes)
    if path is not None:
        model.pretrained_report = load_pretrained_file(
            model, path, cfg.name, strict=cfg.strict_load
        )
    if cfg.freeze not in ("none", "0"):
        _freeze(model, cfg, pretrained=weights is not None or path is not None,
                from_checkpoint=from_checkpoint)
    return model


def _weights(name: str, pretrained: str, source: str) -> Any:
    """The downloadable weights ``pretrained`` names: torchvision's enum member, timm's
    pretrained tag; None for none or a local file."""
    if source == "torchvision":
        return tvm.resolve_weights(name, pretrained)
    if source == "timm":
        return timm_zoo.resolve_tag(name, pretrained)
    return None


def _freeze(model: nn.Module, cfg: ModelConfig, *, pretrained: bool,
            from_checkpoint: bool) -> None:
    """``cfg.freeze`` applied to a new model, said in the log (or once on the terminal)."""
    # A checkpoint's weights replace random ones right after: no warning then.
    if not pretrained and not from_checkpoint:
        log.warning("model.freeze=%s without model.pretrained: the frozen layers are "
                    "random", cfg.freeze)
    if isinstance(cfg.freeze, list):  # parameter-name patterns
        report = freeze_matching(model, cfg.freeze, cfg.name)
        # Said once, for a new model: a rebuilt checkpoint (resume, evaluate, predict) and
        # the other ranks of a distributed run stay quiet.
        if not from_checkpoint and detect_dist().is_main:
            echo(report.describe())
        return
    frozen = apply_freeze(model, cfg.freeze, cfg.name)
    log.info("model.freeze=%s: froze %d stage(s) (%s); the rest and the head (%s) train",
             cfg.freeze, len(frozen), ", ".join(s.name for s in frozen) or "none",
             tvm.find_head(model)[0])


# --------------------------------------------------------------------------- shapes only


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


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the "meta" device: parameter names and shapes, no memory, no init time.

    Builders that compute with tensor values (RegNet) get their weights on meta only
    (:class:`_WeightsOnMeta`); the model is then moved there whole.
    """
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:  # "Cannot copy out of meta tensor": see _WeightsOnMeta
        with _WeightsOnMeta():
            model = build()
        return model.to("meta")


def count_parameters(name: str, num_classes: int = 10, in_channels: int = 3) -> int:
    """Number of parameters of ``name`` built for ``num_classes``, without allocating weights.

    Built on the "meta" device (shapes only), so vgg16, vit_h_14 or regnet_y_128gf count at once.
    """
    model = build_on_meta(lambda: _build(name, num_classes, in_channels))
    return sum(p.numel() for p in model.parameters())
