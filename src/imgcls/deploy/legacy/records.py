"""An old file's state_dict made an imgcls checkpoint record: which architecture it is (from its
key names and shapes, or ``--model``), and the classes, input size and normalisation to record.

Shared by ``imgcls convert`` (``convert.py``) and the ``--trust-pickle`` load path (``load.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import ModelConfig, TransformConfig, build_config
from imgcls.config.sizes import ImageSize, image_size, saved_size, size_arg, size_hw
from imgcls.data.cifar import MEAN_STD as CIFAR_MEAN_STD
from imgcls.data.transforms import resolve_normalization
from imgcls.deploy.legacy.pickles import TUTORIAL_CLASSES
from imgcls.errors import ImgclsError
from imgcls.models import create_model, get_model_info, model_names
from imgcls.models import torchvision_models as tvm
from imgcls.models.factory import build_on_meta
from imgcls.models.user import code_record
from imgcls.runs.record import CheckpointRecord

__all__ = ["NORMALIZE_CHOICES", "check_options", "make_record"]

# A pickled class name -> the model to try first (the tutorials' names and imgcls's own).
_CLASS_HINTS: dict[str, str] = {
    **{name: model for name, (_, model) in TUTORIAL_CLASSES.items()},
    **{cls.__name__: model for cls, model in TUTORIAL_CLASSES.values()},
}

# --normalize: what the model was trained with ("none": pixels in [0, 1], ToTensor() only).
NORMALIZE_CHOICES = ("none", "half", "imagenet", *CIFAR_MEAN_STD)


def _mean_std(normalize: str) -> tuple[list[float], list[float]] | None:
    """``--normalize`` as mean/std, resolved as training resolves ``transforms.normalize``
    (``cifar10``/``cifar100``: that data set's statistics)."""
    stats = CIFAR_MEAN_STD.get(normalize)
    mode = "dataset" if stats is not None else normalize
    return resolve_normalization(TransformConfig(normalize=mode), model_default="dataset",
                                 pretrained=False, dataset_mean_std=stats)


# --------------------------------------------------------------------------- recognising models


@dataclass(frozen=True)
class _Arch:
    name: str
    num_classes: int
    in_channels: int


def _probe_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``name`` built on the "meta" device: key names and shapes without allocating weights."""
    cfg = ModelConfig(name=name, in_channels=in_channels)
    return build_on_meta(lambda: create_model(cfg, num_classes))


def _fit(
    name: str, state: dict[str, torch.Tensor]
) -> tuple[_Arch | None, dict[str, torch.Tensor], list[str]]:
    """The architecture ``name`` with the class count and input channels of ``state`` and the
    state adapted to it, or the reasons the file does not fit it."""
    probe = _probe_model(name, 2, 3)
    head_key = f"{tvm.find_head(probe)[0]}.weight"
    first = tvm.find_first_conv(probe)
    first_key = f"{first[0]}.weight" if first else None
    if head_key not in state or state[head_key].dim() < 2:
        return None, state, [f"missing {head_key}"]
    num_classes = int(state[head_key].shape[0])
    in_channels = 3
    if first_key in state and state[first_key].dim() == 4:
        in_channels = int(state[first_key].shape[1])
    if in_channels not in (1, 3):
        problem = f"{first_key} takes {in_channels} input channels (only 1 or 3 supported)"
        return None, state, [problem]
    expected = _probe_model(name, num_classes, in_channels).state_dict()
    state = _adapt_state(state, expected)
    problems = [
        f"{key} is {list(state[key].shape)} in the file, {list(want.shape)} in {name}"
        if key in state else f"missing {key}"
        for key, want in expected.items()
        if key not in state or state[key].shape != want.shape
    ]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    if problems:
        return None, state, problems
    return _Arch(name, num_classes, in_channels), state, []


def _adapt_state(
    state: dict[str, torch.Tensor], expected: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the harmless differences from ``expected`` smoothed over."""
    state = dict(state)
    # BatchNorm's num_batches_tracked appeared in PyTorch 0.4.1; older files lack it, and it only
    # matters when training with momentum=None.
    for key in expected:
        if (key.endswith(".num_batches_tracked") and key not in state
                and key.replace("num_batches_tracked", "running_mean") in state):
            state[key] = torch.tensor(0, dtype=torch.long)
    # googlenet/inception auxiliary heads: imgcls builds these models with them switched off.
    return {k: v for k, v in state.items() if k in expected or not k.startswith(tvm.AUX_PREFIXES)}


def _candidates(hint: str | None) -> list[str]:
    """Models to try, the pickled class's own first."""
    names: list[str] = []
    if hint and hint.startswith("torchvision:"):
        # torchvision's classes are families (ResNet: resnet18..152): try the family's members.
        family = hint.split(":", 1)[1].lower()
        names += [n for n in tvm.available() if n.replace("_", "").startswith(family)]
    elif hint in _CLASS_HINTS:
        names.append(_CLASS_HINTS[hint])
    # imgcls's own models only: a torchvision state_dict is recognised from its pickled class
    # or named with --model.
    return list(dict.fromkeys([*names, *model_names("imgcls")]))


def _recognise(
    state: dict[str, torch.Tensor], hint: str | None, model: str | None, path: Path
) -> tuple[_Arch, dict[str, torch.Tensor]]:
    """The architecture of ``state`` (``model`` if given) and the state adapted to it."""
    if model is not None:
        get_model_info(model, "")  # an unknown name: ImgclsError with "did you mean"
        arch, adapted, problems = _fit(model, state)
        if arch is None:
            raise ImgclsError(
                f"{path} does not fit model {model}: {len(problems)} problem(s), e.g. "
                f"{'; '.join(problems[:3])}"
            )
        return arch, adapted
    for name in _candidates(hint):
        arch, adapted, _ = _fit(name, state)
        if arch is not None:
            return arch, adapted
    what = f"class {hint.split(':')[-1]}" if hint else f"{len(state)} tensors"
    raise ImgclsError(
        f"cannot tell which model {path} holds ({what}, first key {next(iter(state))!r}); pass "
        "--model NAME (see `imgcls models`) to `imgcls convert`"
    )



# --------------------------------------------------------------------------- the checkpoint


def check_options(
    classes: Sequence[str] | None, num_classes: int | None, normalize: str,
    input_size: ImageSize | None,
) -> None:
    """Refuse impossible options before reading (or unpickling) anything."""
    if normalize not in NORMALIZE_CHOICES:
        raise ImgclsError(
            f"--normalize {normalize!r}: choose one of {', '.join(NORMALIZE_CHOICES)}"
        )
    if classes is not None:
        names = list(classes)
        if not names or any(not str(c) for c in names):
            raise ImgclsError(f"--classes {','.join(map(str, names))!r}: empty class name")
        if len(set(names)) != len(names):
            raise ImgclsError(f"--classes: class names repeat ({', '.join(map(str, names))})")
        if num_classes is not None and num_classes != len(names):
            raise ImgclsError(
                f"--num-classes {num_classes} but --classes names {len(names)} classes"
            )
    if num_classes is not None and num_classes < 1:
        raise ImgclsError(f"--num-classes {num_classes}: must be at least 1")
    if input_size is not None and min(size_hw(input_size)) < 1:
        raise ImgclsError(f"--input-size {size_arg(input_size)}: must be at least 1")


def make_record(
    state: dict[str, torch.Tensor],
    hint: str | None,
    *,
    source: Path,
    model: str | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: str = "none",
    input_size: ImageSize | None = None,
) -> CheckpointRecord:
    """The checkpoint ``inference.load_model`` needs (no optimiser: not resumable)."""
    check_options(classes, num_classes, normalize, input_size)
    arch, state = _recognise(state, hint, model, source)
    names = _class_names(arch, source, classes, num_classes)
    info = get_model_info(arch.name, "")
    size = image_size(input_size or info.input_size)
    info.check_size(size, f"--input-size {size_arg(size)}")
    mean_std = _mean_std(normalize)
    # Unknown: how long it was trained. No optimizer, scheduler or rng: a converted checkpoint
    # cannot be resumed, only evaluated, used or fine-tuned from.
    return CheckpointRecord(
        model=state,
        config=build_config(overrides=_overrides(arch, normalize, mean_std, input_size)).to_dict(),
        classes=names,
        input_size=saved_size(size),
        in_channels=arch.in_channels,
        mean=mean_std[0] if mean_std else None,
        std=mean_std[1] if mean_std else None,
        provenance={"converted_from": str(source)}, model_code=code_record(arch.name),
    )


def _class_names(arch: _Arch, source: Path, classes: Sequence[str] | None,
                 num_classes: int | None) -> list[str]:
    """``--classes`` (default ``"0".."N-1"``), checked against the file's output count."""
    if num_classes is not None and num_classes != arch.num_classes:
        raise ImgclsError(
            f"--num-classes {num_classes}, but {source} ({arch.name}) has {arch.num_classes} "
            "outputs"
        )
    names = [str(c) for c in classes] if classes is not None else None
    if names is not None and len(names) != arch.num_classes:
        raise ImgclsError(
            f"--classes names {len(names)} classes, but {source} ({arch.name}) has "
            f"{arch.num_classes} outputs"
        )
    return names or [str(i) for i in range(arch.num_classes)]


def _overrides(arch: _Arch, normalize: str, mean_std: tuple[list[float], list[float]] | None,
               input_size: ImageSize | None) -> dict[str, Any]:
    """The config keys a converted checkpoint records."""
    overrides: dict[str, Any] = {
        "model.name": arch.name,
        "model.in_channels": arch.in_channels,
        # CIFAR statistics become explicit numbers: the checkpoint must not depend on which data
        # set `evaluate --data` points at later.
        "transforms.normalize": "custom" if normalize.startswith("cifar") else normalize,
    }
    if normalize.startswith("cifar") and mean_std is not None:
        overrides["transforms.mean"], overrides["transforms.std"] = mean_std
    if input_size is not None:
        overrides["transforms.image_size"] = saved_size(input_size)
    return overrides
