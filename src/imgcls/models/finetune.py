"""``model.freeze``: which parameters a fine-tuning run trains, stage by stage.

A model's *stages* are an ordered partition of every parameter outside the head (the layer
:func:`~imgcls.models.torchvision_models.find_head` finds: the new classifier, or with
``model.head=append`` only the appended layer). ``freeze=N`` freezes the first N stages,
``freeze=backbone`` all of them (the same as N = the number of stages).

How the stages are cut, from the model's top-level children in order:

* consecutive plain layers (no children: conv, BatchNorm, ReLU, pool) form one stage, every
  block (a module with children) is a stage of its own: resnet ``conv1..bn1`` (the stem),
  ``layer1`` .. ``layer4``; shufflenet ``conv1``, ``stage2`` .. ``conv5``; googlenet's
  inception blocks;
* a trunk container (``features``, ``layers``, ``trunk_output``, ``blocks``, ``encoder``,
  ``stages``), or a model's only child (imgcls's ``simple_v3`` / ``cifar10_net``), is cut by
  the same rule one level down: efficientnet, mobilenet, convnext, swin, densenet, mnasnet,
  regnet, maxvit blocks, vit's encoder layers (timm's too: ``blocks``, ``stages``);
* a container of plain layers only that holds ``MaxPool2d`` layers is cut after each max-pool:
  vgg's five conv blocks, alexnet, and imgcls's CNNs (three conv blocks, then the classifier's
  hidden layers);
* a model may list its stages itself in a ``freeze_stages`` class attribute (module names per
  stage): LeNet, whose single max-pool is shared by both conv blocks.

What is left of the classifier besides the head (vgg's fc6/fc7, with ``head=append`` the
original 1000-way layer) is the last stage. Parameters held by the model or a trunk itself
(vit's ``class_token`` and ``pos_embedding``) join the first stage. Stages without parameters
are dropped; a stage is named after its first and last module with parameters.

``model.freeze=[patterns]`` freezes by parameter name instead (:func:`freeze_matching`), as the
seeds do with ``if 'conv' in name: p.requires_grad = False``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcls.errors import ImgclsError, short_repr
from imgcls.models.torchvision_models import find_head

# Children whose own children are the architecture's stages (torchvision's naming; timm's
# convnext, resnetv2, byobnet... hold theirs in `stages`).
TRUNKS = ("features", "layers", "trunk_output", "blocks", "encoder", "stages")


@dataclass(frozen=True)
class Stage:
    name: str  # "layer1", "conv1..bn1", "features.0..features.2"
    modules: tuple[str, ...]  # the top-level-or-trunk module names it covers
    params: tuple[str, ...]  # parameter names (head excluded)


def _is_plain(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _cut(container: nn.Module, prefix: str) -> list[list[str]]:
    """Module names of ``container``'s children grouped into stages (see module docstring)."""
    kids = [(prefix + n, m) for n, m in container.named_children()]
    groups: list[list[str]] = []
    current: list[str] = []
    if all(_is_plain(m) for _, m in kids) and any(isinstance(m, nn.MaxPool2d) for _, m in kids):
        for name, module in kids:
            current.append(name)
            if isinstance(module, nn.MaxPool2d):
                groups.append(current)
                current = []
    else:
        for name, module in kids:
            if _is_plain(module):
                current.append(name)
                continue
            if current:
                groups.append(current)
                current = []
            groups.append([name])
    if current:
        groups.append(current)
    return groups


def _stage_modules(model: nn.Module) -> list[list[str]]:
    declared = getattr(model, "freeze_stages", None)
    if declared is not None:
        return [list(names) for names in declared]
    only_child = len(list(model.children())) == 1
    return _expand(model, _cut(model, ""), only_child)


def _expand(model: nn.Module, groups: list[list[str]], only_child: bool = False) -> list[list[str]]:
    out: list[list[str]] = []
    for group in groups:
        name = group[0]
        module = model.get_submodule(name)
        if len(group) == 1 and not _is_plain(module) and (
            only_child or name.rpartition(".")[2] in TRUNKS
        ):
            out += _expand(model, _cut(module, name + "."))  # vit: encoder, then its layers
        else:
            out.append(group)
    return out


def backbone_stages(model: nn.Module) -> list[Stage]:
    """The stages ``model.freeze=N`` counts, in order (see the module docstring).

    >>> [s.name for s in backbone_stages(torchvision.models.resnet18())]  # doctest: +SKIP
    ['conv1..bn1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    head = {id(p) for p in find_head(model)[1].parameters()}
    seen = set(head)
    stages: list[Stage] = []
    for names in _stage_modules(model):
        params: list[str] = []
        holders: list[str] = []  # the modules that contribute parameters name the stage
        for module_name in names:
            module = model.get_submodule(module_name)
            for pname, p in module.named_parameters(prefix=module_name):
                if id(p) not in seen:  # shared modules (LeNet's pool) count once
                    seen.add(id(p))
                    params.append(pname)
                    if not holders or holders[-1] != module_name:
                        holders.append(module_name)
        if params:
            label = holders[0] if len(holders) == 1 else f"{holders[0]}..{holders[-1]}"
            stages.append(Stage(label, tuple(names), tuple(params)))
    # Parameters held by a model or trunk itself (vit's class_token and pos_embedding).
    rest = [n for n, p in model.named_parameters() if id(p) not in seen]
    if rest and stages:
        first = stages[0]
        stages[0] = Stage(first.name, first.modules, (*rest, *first.params))
    elif rest:
        stages.append(Stage("(model)", (), tuple(rest)))
    return stages


def apply_freeze(model: nn.Module, freeze: str, model_name: str = "") -> list[Stage]:
    """``requires_grad=False`` for what ``freeze`` names; returns the frozen stages.

    ``"none"`` (or ``"0"``): nothing. ``"backbone"``: everything but the head. ``"N"``: the
    first N of :func:`backbone_stages`; more than the model has is an ImgclsError that lists them.
    The head always trains. BatchNorm layers that end up fully frozen are kept in eval mode by
    :func:`~imgcls.models.set_train_mode`.
    """
    if freeze == "none":
        return []
    stages = backbone_stages(model)
    if freeze == "backbone":
        count = len(stages)
    elif freeze.isdigit():
        count = int(freeze)
        if count > len(stages):
            names = ", ".join(s.name for s in stages)
            raise ImgclsError(
                f"model.freeze={freeze}: {model_name or type(model).__name__} has only "
                f"{len(stages)} stages ({names}); use 0..{len(stages)} or backbone"
            )
    else:
        raise ImgclsError(
            f"model.freeze={short_repr(freeze)}: expected none, backbone, or N (the first N stages)"
        )
    frozen = stages[:count]
    _set_requires_grad(model, (n for s in frozen for n in s.params), False)
    return frozen


def _set_requires_grad(model: nn.Module, names: Iterable[str], value: bool) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in names:
        params[name].requires_grad_(value)


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


# --------------------------------------------------------------------------- freeze by name

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FrozenParams:
    """What :func:`freeze_matching` froze."""

    patterns: tuple[str, ...]
    names: tuple[str, ...]  # the frozen parameter tensors, in the model's order
    values: int  # their elements
    total_tensors: int
    total_values: int

    def describe(self) -> str:
        return (f"model.freeze={list(self.patterns)}: froze {len(self.names)} of "
                f"{self.total_tensors} parameter tensors ({self.values:,} of "
                f"{self.total_values:,} values)")


def pattern_matches(pattern: str, name: str) -> bool:
    """A pattern with ``*``, ``?`` or ``[`` is an fnmatch glob over the whole parameter name
    (``features.*``), any other a substring of it (the seeds' ``'conv' in name``).

    >>> pattern_matches("conv", "layer1.0.conv1.weight"), pattern_matches("fc.*", "fc1.weight")
    (True, False)
    """
    if any(c in pattern for c in GLOB_CHARS):
        return fnmatch.fnmatchcase(name, pattern)  # case-sensitive, like the names themselves
    return pattern in name


def freeze_matching(
    model: nn.Module, patterns: Sequence[str], model_name: str = ""
) -> FrozenParams:
    """``requires_grad=False`` for every parameter whose name matches one of ``patterns``
    (:func:`pattern_matches`); a pattern that matches nothing is an ImgclsError.

    Exactly the matching tensors freeze, the head included when a pattern names it (the seeds'
    loop makes no exception for it; freezing everything then fails in the optimiser). BatchNorm:
    as with ``freeze=N``, a layer whose parameters all match stays in eval mode
    (:func:`~imgcls.models.set_train_mode`), so its running statistics freeze too (the seeds'
    ``freeze_bn``); a layer with only some of them frozen keeps updating its statistics.
    """
    params = list(model.named_parameters())
    names = [n for n, _ in params]
    for pattern in patterns:
        if not any(pattern_matches(pattern, n) for n in names):
            label = model_name or type(model).__name__
            few = ", ".join([*names[:3], "...", names[-1]] if len(names) > 4 else names)
            kind = "glob (whole name)" if any(c in pattern for c in GLOB_CHARS) else "substring"
            raise ImgclsError(
                f"model.freeze: pattern {short_repr(pattern)} ({kind}) matches no parameter of "
                f"{label}, whose {len(names)} parameters are named like {few} (see `imgcls models "
                f"{model_name or 'NAME'}`)"
            )
    frozen = [(n, p) for n, p in params if any(pattern_matches(pat, n) for pat in patterns)]
    for _, p in frozen:
        p.requires_grad_(False)
    return FrozenParams(
        patterns=tuple(patterns),
        names=tuple(n for n, _ in frozen),
        values=sum(p.numel() for _, p in frozen),
        total_tensors=len(params),
        total_values=sum(p.numel() for _, p in params),
    )
