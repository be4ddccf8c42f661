"""Any timm model by name: ``model.name=timm/NAME`` (or ``timm:NAME``), ``NAME`` an architecture
(``resnet50``) or one with a pretrained tag (``resnet50.a1_in1k``).

timm is optional (``pip install "imgcls[timm]"``) and imported only when a timm name is used or
listed: its ~1,300 architectures are not put in ``imgcls.registry.MODELS`` (that would import
timm with imgcls); ``models/factory.py`` routes the prefixed names here. Listing reads timm's own
registry (:func:`names`) and creates no model.

Sizes and normalisation come from the weights' pretrained config (input size, crop_pct, mean and
std: many ViTs want 0.5/0.5), as torchvision's come from their weights' transforms.
``model.pretrained``: ``default`` or a pretrained tag downloads timm's weights from the Hugging
Face Hub (a one-line error offline, naming the file to fetch); a local file goes through
:func:`imgcls.models.pretrained.load_pretrained_file` as for every other model.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.models import torchvision_models as tvm
from imgcls.registry import unknown_name_error

PREFIXES = ("timm/", "timm:")
INSTALL = 'pip install "imgcls[timm]"'
# model.* keys -> the timm.create_model keyword each one sets, for "does not take" errors.
_OPTION_KWARGS = {"model.drop_path": "drop_path_rate", "model.head_pool": "global_pool",
                  "model.in_channels": "in_chans"}
_HUB_FILE = "model.safetensors"  # what timm fetches first from a hub repo
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIXES)


def _timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ImgclsError(f"timm models need timm, which is not installed: {INSTALL}") from None


def names(pattern: str = "") -> list[str]:
    """``timm/NAME`` of every architecture timm has (matching the fnmatch ``pattern``), sorted;
    read from timm's registry, no model is created."""
    return [f"timm/{n}" for n in _timm().list_models(pattern or "")]


@functools.cache
def _arch_and_tag(name: str) -> tuple[str, str]:
    """``timm/resnet50.a1_in1k`` -> ``("resnet50", "a1_in1k")``; an unknown architecture or tag
    is a one-line error with close matches."""
    timm = _timm()
    arch, tag = timm.models.split_model_name_tag(name[len(PREFIXES[0]):])
    if not timm.is_model(arch):
        raise unknown_name_error("timm model", name, names(), "model.name")
    if tag and tag not in _tags(arch):
        raise ImgclsError(f"model.name={short_repr(name)}: {arch} has no pretrained tag {tag} "
                          f"(timm has: {', '.join(_tags(arch)) or 'none'})")
    return arch, tag


def _tags(arch: str) -> list[str]:
    """The tags of ``arch``'s configs with downloadable weights, timm's default first."""
    cfgs = _timm().models.get_arch_pretrained_cfgs(arch)
    return [cfg.tag for cfg in cfgs.values() if cfg.tag and (cfg.hf_hub_id or cfg.url or cfg.file)]


def weights_names(name: str) -> list[str]:
    """What ``model.pretrained`` may name for ``name``: ``default`` and its pretrained tags."""
    arch, tag = _arch_and_tag(name)
    return ["default", *([tag] if tag else _tags(arch))]


def resolve_tag(name: str, pretrained: str) -> str | None:
    """The pretrained tag ``model.pretrained`` asks to download: ``default`` -> the name's tag, else
    timm's default one; a tag (``a1_in1k`` or ``resnet50.a1_in1k``) -> itself; anything else
    (``""``, a file) -> None. ``default`` for a model without weights is an error."""
    if not pretrained:
        return None
    arch, tag = _arch_and_tag(name)
    tags = [tag] if tag else _tags(arch)
    wanted = pretrained.removeprefix(f"{arch}.")
    if pretrained.lower() == "default":
        if not tags:
            raise ImgclsError(f"model.pretrained=default: timm has no pretrained weights for "
                              f"{name}; pass a state_dict file with model.pretrained=PATH")
        return tags[0]
    return wanted if wanted in tags else None


def _cfg(name: str, pretrained: str = "") -> Any:
    """timm's pretrained config of ``name`` with the weights ``pretrained`` picks."""
    arch, tag = _arch_and_tag(name)
    tag = resolve_tag(name, pretrained) or tag
    return _timm().models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)


def meta(name: str, pretrained: str = "") -> dict[str, Any]:
    """Input size, eval resize, normalisation of ``name`` from its weights' pretrained config
    (the default weights' for random init, so a recipe keeps its size when pretrained is on)."""
    cfg = _cfg(name, pretrained)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    crop_pct = (cfg.crop_pct if cfg is not None else None) or 0.875
    min_size = cfg.min_input_size if cfg is not None else None
    mean, std = (cfg.mean, cfg.std) if cfg is not None else (None, None)
    return {
        "input_size": size,
        "resize_size": int(size / crop_pct),  # timm's eval scale_size
        "min_size": int(min_size[-1]) if min_size else 1,
        "default_normalize": "imagenet",
        "fixed_size": bool(cfg is not None and cfg.fixed_input_size),
        "mean_std": (tuple(mean), tuple(std)) if mean and std else None,
    }


# --------------------------------------------------------------------------- building


def build(
    name: str, num_classes: int, in_channels: int = 3, tag: str | None = None,
    head: str = "replace", drop_path: float | None = None, head_pool: str = "default",
) -> nn.Module:
    """``timm.create_model`` with a ``num_classes`` head (``head="append"``: timm's own head kept,
    ``Linear(its classes, num_classes)`` after it), ``in_channels`` inputs (timm sums a pretrained
    stem's RGB filters for one channel), ``drop_path`` as ``drop_path_rate`` and ``head_pool`` as
    ``global_pool``. ``tag``: download those pretrained weights (timm drops their classifier
    when the class counts differ; the new head keeps timm's initialisation)."""
    arch, name_tag = _arch_and_tag(name)
    kwargs: dict[str, Any] = {"in_chans": in_channels}
    if head == "replace":
        kwargs["num_classes"] = num_classes
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if head_pool != "default":
        kwargs["global_pool"] = head_pool
    full = f"{arch}.{tag or name_tag}" if tag or name_tag else arch
    model = _download(name, full, kwargs) if tag else _create(name, full, kwargs, False)
    if head == "append":
        tvm.append_head(model, num_classes, name)
    return model


def _create(name: str, full: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    try:
        return _timm().create_model(full, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError, NotImplementedError) as exc:
        # An option the architecture does not take: its constructor's own words, in one line.
        named = [k for k, kw in _OPTION_KWARGS.items()
                 if kw in kwargs and (kw != "in_chans" or kwargs[kw] != 3)]
        blamed = [k for k in named if _OPTION_KWARGS[k] in str(exc)] or named
        if not blamed:  # none set: not the user's doing
            raise
        raise ImgclsError(f"{', '.join(blamed)}: timm cannot build {name} with it "
                          f"({type(exc).__name__}: {first_line(exc, 160)})") from None


def _download(name: str, full: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model with timm's pretrained weights ``full`` (``arch.tag``), fetched from the Hub (or
    its URL) unless cached; offline, one line naming the file to fetch and where it goes."""
    cfg = _timm().models.get_pretrained_cfg(full)
    url = _weights_url(cfg)
    try:
        if not _cached(cfg):
            _check_reachable(cfg, url)  # the hub client retries for a minute before giving up
        return _create(name, full, kwargs, True)
    except (ImgclsError, TypeError):
        raise
    except Exception as exc:  # the hub raises OSError, httpx and RuntimeError kinds
        where = "" if cfg.hf_hub_id else f" (or put it in {_hub_checkpoint(url).parent}/)"
        raise ImgclsError(
            f"model.pretrained: cannot download {name} weights {cfg.tag} (offline? "
            f"{first_line(exc, 160)}); fetch {url} elsewhere and pass the file with "
            f"model.pretrained=PATH{where}"
        ) from None


def _weights_url(cfg: Any) -> str:
    if cfg.hf_hub_id:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        repo, _, revision = cfg.hf_hub_id.partition("@")
        return f"{endpoint}/{repo}/resolve/{revision or 'main'}/{cfg.hf_hub_filename or _HUB_FILE}"
    return str(cfg.url or cfg.file)


def _cached(cfg: Any) -> bool:
    """Whether the weights are on disk already (no network needed)."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [_HUB_FILE, "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str)
                   for f in files)
    return bool(cfg.file) or (bool(cfg.url) and _hub_checkpoint(cfg.url).is_file())


def _hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps a file downloaded from ``url`` (timm's weights without a Hub repo)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _check_reachable(cfg: Any, url: str) -> None:
    """An OSError at once when the weights cannot be fetched: ``HF_HUB_OFFLINE`` is set, or
    ``url``'s host cannot be reached directly (a proxy may reach what we cannot: not checked)."""
    if cfg.hf_hub_id and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise OSError("HF_HUB_OFFLINE is set and they are not in the Hugging Face cache")
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return
    parsed = urlparse(url)
    if parsed.hostname:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with socket.create_connection((parsed.hostname, port), timeout=5):
            pass
