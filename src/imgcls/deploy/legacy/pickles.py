"""Reading old model files: a ``torch.save``-d state_dict (safely), or with ``--trust-pickle``
a whole-model pickle, unpickled with the tutorials' classes mapped onto imgcls's own.

What comes out is a clean state_dict (and a pickled model's class name, a hint for
``records.py``); nothing here knows about checkpoints beyond refusing to convert one.
"""

from __future__ import annotations

import logging
import pickle
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.serialization import SourceChangeWarning

from imgcls.errors import ImgclsError, first_line
from imgcls.models import STATE_DICT_KEYS, extract_state_dict
from imgcls.models.seed_cnns import CIFAR10NetSimpleV3, CIFAR10Network, LeNet
from imgcls.runs.checkpoint import FORMAT

__all__ = ["TUTORIAL_CLASSES", "pickle_globals", "read_source", "unpickle_state"]

log = logging.getLogger("imgcls")

# The tutorials' class names (in whatever module they were defined) -> imgcls's class with the
# same attribute layout, and its model name.
TUTORIAL_CLASSES: dict[str, tuple[type[nn.Module], str]] = {
    "Net": (LeNet, "lenet"),
    "CIFAR10_Network": (CIFAR10Network, "cifar10_net"),
    "CIFAR10_Net_Simple_v3": (CIFAR10NetSimpleV3, "simple_v3"),
}


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise ImgclsError(f"{path} is a folder, not a model file")
    if not path.exists():
        raise ImgclsError(f"model file not found: {path}")


def read_source(path: Path, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state_dict in ``path`` and, for a pickled model, its class name (a hint)."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files it cannot read safely
        if not pickle_globals(path, exc):
            raise ImgclsError(
                f"{path} is not a file written by torch.save ({_first_line(exc)})"
            ) from None
        if not trust_pickle:
            # The file's own classes and functions say more than torch's layers: list them first.
            found = sorted(pickle_globals(path, exc), key=lambda g: g.startswith("torch."))
            names = ", ".join(found[:3])
            raise ImgclsError(
                f"{path} is a pickled model: loading it runs code from the file ({names}); "
                "refused. If you trust the file, convert it with --trust-pickle (or re-save it "
                "with torch.save(model.state_dict(), PATH))"
            ) from None
        return unpickle_state(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise ImgclsError(f"{path} is already an imgcls checkpoint; nothing to convert")
    return _as_state_dict(obj, path), None


def pickle_globals(path: Path, error: Exception | None = None) -> list[str]:
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


def unpickle_state(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
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

