"""Model files saved the tutorials' way, turned into imgcls checkpoints.

The tutorials save a model in one of two ways:

* ``torch.save(model.state_dict(), "x.pth")``: a plain dict of tensors. Safe to read
  (``weights_only=True``) but it carries no class names, input size or normalisation, and not even
  the architecture: that is recognised from the key names and tensor shapes.
* ``torch.save(model, "x.pth")``: a whole-model pickle. Loading it imports the model's class and
  can run any code the file holds, so imgcls reads it only with ``trust_pickle=True``
  (``--trust-pickle``). The tutorials' classes live in the user's own scripts
  (``__main__.CIFAR10_Net_Simple_v3``, ``util.CIFAR10_Net_Simple_v3.CIFAR10_Net_Simple_v3``), which
  cannot be imported here; imgcls's seed CNNs have the same attribute layout, so those class names
  are mapped onto them.

Either way the result is an ordinary imgcls checkpoint (weights, config, classes, input size,
normalisation) that ``imgcls evaluate``, ``predict`` and ``export`` read with
``weights_only=True``. It holds no optimiser state, so it cannot be resumed; start a new run from
its weights with ``model.pretrained=FILE`` instead.

>>> convert("cifar_net.pth", classes=["plane", "car", ...])    # doctest: +SKIP
PosixPath('cifar_net.imgcls.pt')
"""

from __future__ import annotations

import logging
import pickle
import re
import sys
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.serialization import SourceChangeWarning

from imgcls.config import ModelConfig, build_config
from imgcls.data.cifar import MEAN_STD as CIFAR_MEAN_STD
from imgcls.data.transforms import HALF, IMAGENET_MEAN, IMAGENET_STD
from imgcls.engine.checkpoint import FORMAT
from imgcls.engine.record import CheckpointRecord
from imgcls.errors import ImgclsError, first_line
from imgcls.models import MODELS, STATE_DICT_KEYS, create_model, extract_state_dict, get_model_info
from imgcls.models import torchvision_models as tvm
from imgcls.models.seed_cnns import CIFAR10NetSimpleV3, CIFAR10Network, LeNet
from imgcls.models.user import code_record

__all__ = ["NORMALIZE_CHOICES", "TUTORIAL_CLASSES", "convert", "read_any_checkpoint"]

log = logging.getLogger("imgcls")

# The tutorials' class names (in whatever module they were defined) -> imgcls's class with the
# same attribute layout, and its model name.
TUTORIAL_CLASSES: dict[str, tuple[type[nn.Module], str]] = {
    "Net": (LeNet, "lenet"),
    "CIFAR10_Network": (CIFAR10Network, "cifar10_net"),
    "CIFAR10_Net_Simple_v3": (CIFAR10NetSimpleV3, "simple_v3"),
}
# A pickled class name -> the model to try first (the tutorials' names and imgcls's own).
_CLASS_HINTS: dict[str, str] = {
    **{name: model for name, (_, model) in TUTORIAL_CLASSES.items()},
    **{cls.__name__: model for cls, model in TUTORIAL_CLASSES.values()},
}

# --normalize: what the model was trained with. None: pixels in [0, 1] (ToTensor() only).
_NORMALIZATION: dict[str, tuple[list[float], list[float]] | None] = {
    "none": None,
    "half": (list(HALF), list(HALF)),
    "imagenet": (list(IMAGENET_MEAN), list(IMAGENET_STD)),
    "cifar10": (list(CIFAR_MEAN_STD["cifar10"][0]), list(CIFAR_MEAN_STD["cifar10"][1])),
    "cifar100": (list(CIFAR_MEAN_STD["cifar100"][0]), list(CIFAR_MEAN_STD["cifar100"][1])),
}
NORMALIZE_CHOICES = tuple(_NORMALIZATION)

# --------------------------------------------------------------------------- public API


def read_any_checkpoint(path: str | Path, *, trust_pickle: bool) -> CheckpointRecord:
    """An imgcls checkpoint record from ``path``.

    An imgcls checkpoint is read with :func:`load_checkpoint`. With ``trust_pickle``, a
    whole-model pickle (``torch.save(model)``) is unpickled, which runs code from the file (a
    warning says so), and converted in memory: classes ``0..N-1``, no normalisation, the model's
    input size. Anything else is refused with load_checkpoint's error; nothing in the file runs.

    >>> record = read_any_checkpoint("old_model.pth", trust_pickle=True)  # doctest: +SKIP
    >>> record.config["model"]["name"], record.classes[:3]                  # doctest: +SKIP
    ('simple_v3', ['0', '1', '2'])
    """
    path = Path(path)
    try:
        return CheckpointRecord.load(path)
    except ImgclsError:
        if not trust_pickle or not _pickle_globals(path):
            raise
    state, hint = _unpickle_state(path)
    return _make_record(state, hint, source=path)


def convert(
    source: str | Path,
    output: str | Path | None = None,
    *,
    trust_pickle: bool = False,
    model: str | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: str = "none",
    input_size: int | None = None,
) -> Path:
    """Write ``source`` (a state_dict file, or with ``trust_pickle`` a whole-model pickle) as a
    safe imgcls checkpoint; returns its path (default: beside ``source``, ``NAME.imgcls.pt``).

    ``model`` names the architecture when it cannot be recognised (torchvision models always);
    ``classes`` are the class names in label order (default ``"0".."N-1"``); ``normalize`` is
    the normalisation the model was trained with (``none``, ``half``, ``imagenet``, ``cifar10``,
    ``cifar100``). Raises ImgclsError when the file is not a model, does not fit ``model``, or is
    a pickle and ``trust_pickle`` is off (then nothing in it runs).

    >>> convert("cifar_net.pth", normalize="cifar10", classes=CIFAR10_CLASSES)  # doctest: +SKIP
    PosixPath('cifar_net.imgcls.pt')
    """
    source = Path(source)
    out = Path(output) if output is not None else source.with_name(source.stem + ".imgcls.pt")
    _check_options(classes, num_classes, normalize, input_size)
    state, hint = _read_source(source, trust_pickle)
    if out.resolve() == source.resolve():
        raise ImgclsError(f"convert: --output {out} is the source file itself; choose another")
    record = _make_record(
        state, hint, source=source, model=model, classes=classes, num_classes=num_classes,
        normalize=normalize, input_size=input_size,
    )
    try:
        record.save(out)
    except OSError as exc:
        raise ImgclsError(f"convert: cannot write {out}: {exc.strerror or exc}") from None
    log.info("converted %s (%s, %d classes) to %s", source, record.config["model"]["name"],
             len(record.classes), out)
    return out


# --------------------------------------------------------------------------- reading files


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise ImgclsError(f"{path} is a folder, not a model file")
    if not path.exists():
        raise ImgclsError(f"model file not found: {path}")


def _read_source(path: Path, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state_dict in ``path`` and, for a pickled model, its class name (a hint)."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files it cannot read safely
        if not _pickle_globals(path, exc):
            raise ImgclsError(
                f"{path} is not a file written by torch.save ({_first_line(exc)})"
            ) from None
        if not trust_pickle:
            # The file's own classes and functions say more than torch's layers: list them first.
            found = sorted(_pickle_globals(path, exc), key=lambda g: g.startswith("torch."))
            names = ", ".join(found[:3])
            raise ImgclsError(
                f"{path} is a pickled model: loading it runs code from the file ({names}); "
                "refused. If you trust the file, convert it with --trust-pickle (or re-save it "
                "with torch.save(model.state_dict(), PATH))"
            ) from None
        return _unpickle_state(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise ImgclsError(f"{path} is already an imgcls checkpoint; nothing to convert")
    return _as_state_dict(obj, path), None


def _pickle_globals(path: Path, error: Exception | None = None) -> list[str]:
    """The classes and functions ``path`` would import when unpickled, read without running it
    (empty: the file needs none, or is not a torch file at all)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip file: torch.save's old format, or no torch file at all
        pass
    if error is None:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return []
        except Exception as exc:  # the weights-only unpickler names the first global it refused
            error = exc
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return [found.group(1)] if found else []


def _first_line(exc: BaseException) -> str:
    # torch's weights-only refusal puts the useful part after this prefix
    return first_line(Exception(str(exc).split("WeightsUnpickler error: ", 1)[-1]), limit=160)


def _mapping_pickle_module(path: Path, mapped: list[str]) -> types.ModuleType:
    """A stand-in for the ``pickle`` module whose Unpickler maps the tutorials' classes onto
    imgcls's when their own module cannot be imported, and refuses other unknown classes."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                if name in TUTORIAL_CLASSES:
                    mapped.append(f"{module}.{name}")
                    return TUTORIAL_CLASSES[name][0]
                raise ImgclsError(
                    f"{path} needs class {module}.{name}, which cannot be imported here; run "
                    "`imgcls convert --trust-pickle` where it is importable (e.g. in the folder "
                    "of the script that defined it), or save model.state_dict() instead"
                ) from None

    def load(file: Any, **kwargs: Any) -> Any:
        # torch reads the old (non-zip) format's header with pickle_module.load: route it through
        # the same Unpickler so no class is ever imported around the mapping.
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("imgcls_legacy_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.Pickler = pickle.Pickler  # type: ignore[attr-defined]
    module.dump = pickle.dump  # type: ignore[attr-defined]
    return module


def _unpickle_state(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Unpickle a whole-model file (runs its code: the caller has been told to trust it)."""
    _check_file(path)
    message = f"unpickling {path} runs code from the file (--trust-pickle); trust only your own"
    log.warning(message)
    print(f"imgcls: warning: {message}", file=sys.stderr, flush=True)
    mapped: list[str] = []
    try:
        with warnings.catch_warnings():
            # torch's old format stores each class's source and warns when it differs; for a
            # tutorial class mapped onto imgcls's own it always does, and that is intended.
            warnings.filterwarnings(
                "ignore", message=r"source code of class 'imgcls\.", category=SourceChangeWarning
            )
            obj = torch.load(
                path, map_location="cpu", weights_only=False,
                pickle_module=_mapping_pickle_module(path, mapped),
            )
    except ImgclsError:
        raise
    except Exception as exc:  # anything the file's own code or a damaged pickle raises
        raise ImgclsError(
            f"cannot unpickle {path}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if mapped:
        log.info("%s: mapped %s onto imgcls's classes", path, ", ".join(sorted(set(mapped))))
    module = _find_module(obj)
    # DataParallel/DDP and torch.compile wrappers: the class name worth a hint is inside.
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule":
            module = module._orig_mod
        else:
            break
    if module is not None:
        hint = type(module).__name__
        if type(module).__module__.startswith("torchvision."):
            hint = f"torchvision:{hint}"
        return _as_state_dict(module.state_dict(), path), hint
    return _as_state_dict(obj, path), None


def _find_module(obj: Any) -> nn.Module | None:
    """The model in an unpickled object: the object itself or one under a wrapper key."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        return next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), None)
    return None


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A clean state_dict: unwrapped from a checkpoint dict, prefixes stripped, on the CPU."""
    state = extract_state_dict(obj)
    if state is None:
        raise ImgclsError(
            f"{path} holds no model weights (expected a state_dict, a dict of tensors as saved "
            "by torch.save(model.state_dict(), PATH), or a pickled model)"
        )
    return {k: _own_storage(v.detach().cpu()) for k, v in state.items()}


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole storage: a slice of a big tensor would bloat the file.
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        return tensor.clone()
    return tensor


# --------------------------------------------------------------------------- recognising models


@dataclass(frozen=True)
class _Arch:
    name: str
    num_classes: int
    in_channels: int


def _probe_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``name`` built on the "meta" device: key names and shapes without allocating weights."""
    cfg = ModelConfig(name=name, in_channels=in_channels)
    try:
        with torch.device("meta"):
            return create_model(cfg, num_classes)
    except NotImplementedError:  # builders that compute with tensor values (RegNet): on the CPU
        return create_model(cfg, num_classes)


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
    return list(dict.fromkeys([*names, *MODELS.names()]))


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


def _check_options(
    classes: Sequence[str] | None, num_classes: int | None, normalize: str,
    input_size: int | None,
) -> None:
    """Refuse impossible options before reading (or unpickling) anything."""
    if normalize not in _NORMALIZATION:
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
    if input_size is not None and input_size < 1:
        raise ImgclsError(f"--input-size {input_size}: must be at least 1")


def _make_record(
    state: dict[str, torch.Tensor],
    hint: str | None,
    *,
    source: Path,
    model: str | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    normalize: str = "none",
    input_size: int | None = None,
) -> CheckpointRecord:
    """The checkpoint ``inference.load_model`` needs (no optimiser: not resumable)."""
    _check_options(classes, num_classes, normalize, input_size)
    arch, state = _recognise(state, hint, model, source)
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
    info = get_model_info(arch.name, "")
    size = input_size or info.input_size
    if info.fixed_size and size != info.input_size:
        raise ImgclsError(
            f"--input-size {size} does not suit {arch.name}, which takes "
            f"{info.input_size}x{info.input_size} images only"
        )
    if size < info.min_size:
        raise ImgclsError(f"--input-size {size}: {arch.name} needs at least {info.min_size}")
    mean_std = _NORMALIZATION[normalize]
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
        overrides["transforms.image_size"] = input_size
    # Unknown: how long it was trained. No optimizer, scheduler or rng: a converted checkpoint
    # cannot be resumed, only evaluated, used or fine-tuned from.
    return CheckpointRecord(
        model=state,
        config=build_config(overrides=overrides).to_dict(),
        classes=names or [str(i) for i in range(arch.num_classes)],
        input_size=size,
        in_channels=arch.in_channels,
        mean=mean_std[0] if mean_std else None,
        std=mean_std[1] if mean_std else None,
        provenance={"converted_from": str(source)}, model_code=code_record(arch.name),
    )
