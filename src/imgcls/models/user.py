"""Your own network: ``model.name=path/to/file.py:ClassName`` or ``package.module:ClassName``.

Importing the file runs its code, by the user's choice, as running their script would. A
checkpoint only names the class (in its config), so loading one runs nothing from the
checkpoint itself; ``evaluate``, ``predict``, ``export`` and ``--resume`` import the named file
again to rebuild the model, and say which file.

The class gets ``num_classes`` (and ``in_channels``) when its constructor takes them, plus
``model.kwargs``. A class without ``num_classes`` (the tutorials' ``Net`` hard-codes 10) keeps its
last Linear layer when its size fits, else that layer is replaced by a new one with the run's
class count, and the run says so.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.models import torchvision_models as tvm
from imgcls.tracking import echo

DEFAULT_INPUT_SIZE = 32  # the tutorials' CIFAR size; a class attribute `input_size` overrides it


def is_user_model(name: str) -> bool:
    """``file.py:Class`` or ``module:Class``: a colon names a class, never a registered model."""
    return ":" in name


def resolve_name(name: str) -> str:
    """The name with an absolute file path, so a checkpoint finds the file from any folder."""
    where, _, cls = name.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{cls}"
    return name


def load_class(name: str) -> type[nn.Module]:
    """The class ``name`` points at; a missing file, module or class is one line."""
    where, _, cls_name = name.rpartition(":")
    if not where or not cls_name:
        raise ImgclsError(f"model.name={short_repr(name)}: expected path/to/file.py:ClassName or "
                          "package.module:ClassName")
    module = _import_file(where, name) if where.endswith(".py") else _import_module(where, name)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == module.__name__)
        raise ImgclsError(f"model.name={short_repr(name)}: {where} has no nn.Module class "
                          f"{cls_name!r} (it defines: {', '.join(found) or 'none'})")
    return cls


def _import_file(path: str, name: str) -> Any:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ImgclsError(f"model.name={short_repr(name)}: file {file} not found (a checkpoint "
                          "names the file its model class came from; put it back or pass "
                          "model.name)")
    # One module per file content: an edited file is imported afresh, the same one once.
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    module_name = f"imgcls_user_{file.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImgclsError(f"model.name={short_repr(name)}: cannot import {file} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any exception is theirs to see
        del sys.modules[module_name]
        raise ImgclsError(f"model.name={short_repr(name)}: importing {file} failed: "
                          f"{type(exc).__name__}: {first_line(exc)}") from None
    return module


def _import_module(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise ImgclsError(f"model.name={short_repr(name)}: cannot import module {module}: "
                          f"{type(exc).__name__}: {first_line(exc)}") from None


def input_size(name: str) -> int:
    return int(getattr(load_class(name), "input_size", DEFAULT_INPUT_SIZE))


def build(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any],
          quiet: bool = False) -> nn.Module:
    """An instance of the user's class for ``num_classes`` classes (see the module docstring)."""
    cls = load_class(name)
    params = inspect.signature(cls).parameters
    args = dict(kwargs)
    takes_classes = "num_classes" in params
    if takes_classes:
        args["num_classes"] = num_classes
    if "in_channels" in params:
        args["in_channels"] = in_channels
    try:
        model = cls(**args)
    except Exception as exc:
        raise ImgclsError(f"model.name={short_repr(name)}: {cls.__name__}({', '.join(args)}) "
                          f"failed: {type(exc).__name__}: {first_line(exc)} (model.kwargs passes "
                          "constructor arguments)") from None
    if not takes_classes:
        _fit_head(model, name, num_classes, quiet)
    return model


def _fit_head(model: nn.Module, name: str, num_classes: int, quiet: bool) -> None:
    try:
        head_name, head = tvm.find_head(model)
    except ValueError:
        head_name, head = "", None
    if not isinstance(head, nn.Linear):
        raise ImgclsError(f"model.name={short_repr(name)}: the class takes no num_classes "
                          "argument and has no final Linear layer to size for the classes; add a "
                          "num_classes parameter to its __init__")
    if head.out_features == num_classes:
        return
    tvm.replace_head(model, num_classes)
    if not quiet:
        echo(f"{name}: its last Linear layer {head_name} ({head.in_features} -> "
             f"{head.out_features}) is replaced by one with {num_classes} outputs (the class "
             "takes no num_classes argument)")


def channels_last_works(name: str, in_channels: int, size: int, kwargs: dict[str, Any]) -> bool:
    """Whether the class runs on channels-last activations (``train.channels_last``): code that
    flattens with ``x.view(...)``, as the tutorials' ``Net`` does, fails on them."""
    model = build(name, 2, in_channels, kwargs, quiet=True).eval()
    x = torch.zeros(2, in_channels, size, size).to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model.to(memory_format=torch.channels_last)(x)
    except RuntimeError as exc:
        if "view" in str(exc):
            return False
    except Exception:  # noqa: S110 (other problems surface, with their own message, in training)
        pass
    return True
