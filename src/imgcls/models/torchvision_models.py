"""Every torchvision classification model by name, adapted to ``num_classes`` and ``in_channels``.

The names come from ``torchvision.models.list_models(module=torchvision.models)``
(classification models only), so a newer torchvision brings its new models with it; each is
registered in imgcls's one model registry (:func:`register`, called by ``models/factory.py``).

Also holds the layer surgery the model zoo needs (finding and replacing the classifier head and
the first convolution); the seed CNNs use the same helpers for ``freeze`` and pretrained files.
"""

from __future__ import annotations

import functools
import http.client
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from imgcls.errors import ImgclsError
from imgcls.registry import Registry

# googlenet / inception_v3 return (logits, aux1[, aux2]) in training mode while their auxiliary
# heads are on; a plain classifier returns logits only, so the aux heads are always disabled.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False},
    "inception_v3": {"aux_logits": False},
}
# The torchvision families built with stochastic depth (`stochastic_depth_prob`): model.drop_path.
DROP_PATH_PREFIXES = ("convnext_", "efficientnet_", "swin_", "maxvit_")
# Built from scratch, their residual blocks start as the identity (each block's last BatchNorm
# weight zero; Goyal et al. 2017), as timm's ResNets do by default: without it torchvision's
# resnet18 diverged in its first epoch on 449 photos at lr 0.1 (docs/benchmarks.md).
ZERO_INIT_RESIDUAL_PREFIXES = ("resnet", "resnext", "wide_resnet")
# Names of the auxiliary heads' keys in torchvision's weight files (absent once disabled).
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# Models whose positional embeddings / window partitions are built for one input size, and the
# builder keyword that sets it (used for random init so it matches `input_size`).
_FIXED_SIZE_KWARG = {"vit_": "image_size", "maxvit_": "input_size"}


@functools.cache
def available() -> tuple[str, ...]:
    """Names of torchvision's classification models (detection, video... are excluded)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def is_available(name: str) -> bool:
    return name in available()


def register(registry: Registry[Any]) -> None:
    """Add every torchvision classifier to ``registry`` (alphabetical, after what is there):
    the factory ``(num_classes, in_channels=3, weights=None, head="replace")`` is :func:`build`,
    the metadata ``source="torchvision"``; sizes come from the weights (:func:`meta`). A name
    registered before (imgcls's own) keeps its own model."""
    for name in available():
        if name not in registry:
            registry.add(name, functools.partial(build, name), source="torchvision")


def _size_kwarg(name: str) -> str | None:
    return next((kw for prefix, kw in _FIXED_SIZE_KWARG.items() if name.startswith(prefix)), None)


# --------------------------------------------------------------------------- weights


def weights_names(name: str) -> list[str]:
    """The weights a model can be pretrained with, ``DEFAULT`` first (``IMAGENET1K_V1``...)."""
    return ["DEFAULT", *(w.name for w in get_model_weights(name))]


def resolve_weights(name: str, pretrained: str) -> WeightsEnum | None:
    """``"default"`` or a weights name (``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``,
    any case) -> the weights enum member; anything else (``""``, a path) -> None."""
    if not pretrained:
        return None
    enum = get_model_weights(name)
    wanted = pretrained.rpartition(".")[2] if pretrained.startswith(enum.__name__) else pretrained
    if wanted.upper() == "DEFAULT":
        return enum.DEFAULT  # type: ignore[attr-defined]
    return next((w for w in enum if w.name.upper() == wanted.upper()), None)


def meta(name: str, weights: WeightsEnum | None = None) -> dict[str, Any]:
    """Input size and friends from the weights' own eval transforms (``DEFAULT`` when None).

    Random-init models use the DEFAULT weights' sizes too, so that a recipe does not change its
    image size when ``pretrained`` is switched on (inception_v3: 299, efficientnet_b3: 300).
    """
    w = weights or get_model_weights(name).DEFAULT  # type: ignore[attr-defined]
    tf = w.transforms()
    crop = getattr(tf, "crop_size", None) or [224]
    resize = getattr(tf, "resize_size", None)
    return {
        "input_size": int(crop[0]),
        "resize_size": int(resize[0]) if resize else None,
        "min_size": int(w.meta.get("min_size", (1, 1))[0]),
        "default_normalize": "imagenet",
        "fixed_size": _size_kwarg(name) is not None,
    }


# --------------------------------------------------------------------------- layer surgery


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier layer: the last ``nn.Linear`` in module order, else the last ``Conv2d``
    (squeezenet's 1x1 classifier conv). Every torchvision classifier puts its head last."""
    linear = conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = (name, module)
        elif isinstance(module, nn.Conv2d):
            conv = (name, module)
    found = linear or conv
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to use as a head")
    return found


def find_first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``nn.Conv2d`` in module order: the one that sees the image channels."""
    return next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None
    )


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier layer for a freshly initialised one with ``num_classes`` outputs."""
    name, old = find_head(model)
    device = next(old.parameters()).device
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(
            old.in_features, num_classes, bias=old.bias is not None, device=device
        )
    else:
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
            bias=old.bias is not None, device=device,
        )
        # torchvision's own init for squeezenet's final conv: the default (kaiming-uniform) init
        # makes the first logits large and the ReLU after this conv can then die.
        nn.init.normal_(new.weight, mean=0.0, std=0.01)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    model.set_submodule(name, new)
    return name


class AppendedHead(nn.Module):
    """An original classifier ``Linear`` followed by a new ``add_linear`` (``model.head=append``).

    Used where the head is not the last layer of an ``nn.Sequential`` (resnet's ``fc``). It holds
    the original layer's ``weight`` and ``bias`` under the same names, so ``fc.weight`` and
    ``fc.bias`` of a pretrained file still load, and adds ``fc.add_linear.*``.
    """

    def __init__(self, original: nn.Linear, add_linear: nn.Linear) -> None:
        super().__init__()
        self.register_parameter("weight", original.weight)
        self.register_parameter("bias", original.bias)
        self.add_linear = add_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_linear(nn.functional.linear(x, self.weight, self.bias))


def append_head(model: nn.Module, num_classes: int, model_name: str = "") -> str:
    """Keep the classifier ``Linear`` (and its weights) and add ``Linear(out, num_classes)``
    after it; return the new layer's name, which :func:`find_head` then finds as the head.

    As seed 001 does with ``vgg.classifier.add_module('add_linear', nn.Linear(1000, 10))``: when
    the head is the last layer of an ``nn.Sequential``, ``add_linear`` is appended to it (so
    the seed's own state_dicts load); otherwise the head becomes an :class:`AppendedHead`.
    """
    name, old = find_head(model)
    if not isinstance(old, nn.Linear):
        raise ImgclsError(
            f"model.head=append: the classifier of {model_name or type(model).__name__} "
            f"({name}) is a {type(old).__name__}, not a Linear layer; use model.head=replace"
        )
    new = nn.Linear(old.out_features, num_classes, device=old.weight.device,
                    dtype=old.weight.dtype)
    parent_name, _, _ = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential) and list(parent.children())[-1] is old:
        parent.add_module("add_linear", new)
        return f"{parent_name}.add_linear" if parent_name else "add_linear"
    model.set_submodule(name, AppendedHead(old, new))
    return f"{name}.add_linear"


def set_global_pool(model: nn.Module, kind: str, model_name: str = "") -> None:
    """``model.head_pool``: ``default`` leaves the model alone; ``avg`` / ``max`` make the global
    pooling in front of the classifier an average / a max.

    Only models whose ``avgpool`` attribute is a global ``AdaptiveAvgPool2d`` (output 1x1, fed
    straight into the classifier) qualify: resnet, resnext, wide_resnet, regnet, efficientnet,
    mobilenet_v3, convnext, swin, googlenet, inception_v3. Their ``avg`` is what they already
    do; ``max`` swaps in ``AdaptiveMaxPool2d(1)``. Anything else is an ImgclsError: vgg and
    alexnet pool to 7x7 / 6x6 for a classifier built for that many features, other models pool
    inside ``forward`` (densenet, mobilenet_v2, shufflenet, vit...), and imgcls's CNNs flatten a
    fixed-size feature map.
    """
    if kind == "default":
        return
    name = model_name or type(model).__name__
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = pool.output_size
        sizes = size if isinstance(size, tuple) else (size, size)
        if all(s == 1 for s in sizes):
            if kind == "max" and not isinstance(pool, nn.AdaptiveMaxPool2d):
                model.avgpool = nn.AdaptiveMaxPool2d(1)
            elif kind == "avg" and not isinstance(pool, nn.AdaptiveAvgPool2d):
                model.avgpool = nn.AdaptiveAvgPool2d(1)
            return
        why = (f"its avgpool pools to {sizes[0]}x{sizes[1]} for a classifier built for that "
               "many features, not globally")
    else:
        why = "it has no global pooling layer (avgpool) in front of its classifier"
    raise ImgclsError(
        f"model.head_pool={kind} is not supported for {name}: {why}. Supported: models with a "
        "global avgpool (resnet, resnext, wide_resnet, regnet, efficientnet, mobilenet_v3, "
        "convnext, swin, googlenet, inception_v3); or use model.head_pool=default"
    )


def adapt_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Make the first convolution accept ``in_channels`` (1 for grayscale) instead of 3.

    Pretrained: the new filter is the sum of the RGB filters, so a gray image ``x`` gives the same
    response as the RGB image ``(x, x, x)`` did. Random init: the first input channel's slice of
    the architecture's own initialisation, which keeps its init scheme.
    """
    found = find_first_conv(model)
    if found is None or found[1].in_channels == in_channels:
        return
    name, old = found
    if in_channels != 1:
        raise ImgclsError(f"model.in_channels={in_channels}: only 1 (grayscale) or 3 supported")
    new = nn.Conv2d(
        1, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(
            old.weight.sum(dim=1, keepdim=True) if pretrained else old.weight[:, :1]
        )
        if old.bias is not None:
            new.bias.copy_(old.bias)
    model.set_submodule(name, new)
    # googlenet / inception_v3 re-normalise 3 input channels in forward() when transform_input
    # is on (it is with ImageNet weights); that indexing fails on one channel.
    if getattr(model, "transform_input", False):
        model.transform_input = False


# --------------------------------------------------------------------------- building


def build(
    name: str, num_classes: int, in_channels: int = 3, weights: WeightsEnum | None = None,
    head: str = "replace", drop_path: float | None = None,
) -> nn.Module:
    """A torchvision model with a ``num_classes`` head and ``in_channels`` inputs.

    With ``weights`` the model is built as published (1000-class head, downloaded by torchvision
    into ``torch.hub.get_dir()``) and its head replaced: always, even for 1000 classes, because an
    ImageNet head's class order means nothing for another dataset. Without, torchvision builds
    the ``num_classes`` head itself, with the architecture's own head initialisation.
    ``head="append"`` keeps the 1000-class layer (pretrained or not) and adds
    ``Linear(1000, num_classes)`` after it (:func:`append_head`). ``drop_path``: the
    architecture's ``stochastic_depth_prob`` (None: its default).
    """
    kwargs = dict(_EXTRA_KWARGS.get(name, {}))
    if drop_path is not None:
        if not name.startswith(DROP_PATH_PREFIXES):
            raise ImgclsError(f"model.drop_path: {name} has no stochastic depth (torchvision "
                              f"builds it for {', '.join(p + '*' for p in DROP_PATH_PREFIXES)})")
        kwargs["stochastic_depth_prob"] = drop_path
    if weights is None:
        if name.startswith(ZERO_INIT_RESIDUAL_PREFIXES):
            kwargs["zero_init_residual"] = True
        if "aux_logits" in kwargs:
            kwargs["init_weights"] = True  # today's default, passed to silence a FutureWarning
        size_kw = _size_kwarg(name)
        if size_kw:
            size = meta(name)["input_size"]
            kwargs[size_kw] = (size, size) if size_kw == "input_size" else size
        if head == "replace":
            kwargs["num_classes"] = num_classes  # else torchvision's own 1000 classes
        model = get_model(name, weights=None, **kwargs)
    else:
        model = _download(name, weights, kwargs)
        if head == "replace":
            replace_head(model, num_classes)
    if head == "append":
        append_head(model, num_classes, name)
    adapt_first_conv(model, in_channels, pretrained=weights is not None)
    return model


def _download(name: str, weights: WeightsEnum, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return get_model(name, weights=weights, **kwargs)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:
        # URLError/socket errors are OSErrors; a truncated or corrupt download is a RuntimeError.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ImgclsError(
            f"model.pretrained: cannot download {name} weights {weights} (offline? {reason}); "
            f"fetch {weights.url} elsewhere and pass the file with model.pretrained=PATH "
            f"(or put it in {torch.hub.get_dir()}/checkpoints/)"
        ) from None
