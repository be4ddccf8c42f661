"""Your own network: ``model.name=path/to/file.py:ClassName`` or ``package.module:ClassName``.

Importing the file runs its code, by the user's choice, as running their script would. A
checkpoint names the class (in its config) and records the file's SHA-256; loading it imports
nothing until the user names that code again on the command line (``--model-code
FILE.py:CLASS``, checked against the recorded class and hash) or trusts whatever the checkpoint
names (``--trust-code``): a checkpoint from elsewhere must not make imgcls run a file that merely
exists on this machine (:func:`approve_code`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config.sizes import ImageSize, size_hw
from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.models import torchvision_models as tvm
from imgcls.tracking import echo

DEFAULT_INPUT_SIZE = 32  # the tutorials' CIFAR size; a class attribute `input_size` overrides it


def is_user_model(name: str) -> bool:
    """``file.py:Class`` or ``module:Class``: a colon names a class, never a registered model;
    ``timm:NAME`` is timm's model (``models/timm_models.py``)."""
    return ":" in name and not name.startswith("timm:")


def resolve_name(name: str) -> str:
    """The name with an absolute file path, so a checkpoint finds the file from any folder."""
    where, _, cls = name.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{cls}"
    return name


def file_sha256(name: str) -> str | None:
    """The SHA-256 of the file ``name`` points at (None for ``module:Class`` or a missing file)."""
    where = name.rpartition(":")[0]
    file = Path(where).expanduser()
    if not where.endswith(".py") or not file.is_file():
        return None
    return hashlib.sha256(file.read_bytes()).hexdigest()


def code_record(name: str) -> dict[str, str]:
    """What a checkpoint records of the code its model came from ({} for imgcls's own models)."""
    if not is_user_model(name):
        return {}
    digest = file_sha256(name)
    return {"name": name, **({"sha256": digest} if digest else {})}


@dataclass(frozen=True)
class CodeConsent:
    """Which code the user allowed a checkpoint's model to import, on the command line: none
    (the default), the code named by ``--model-code``, or whatever it names (``--trust-code``).
    """

    model_code: str | None = None  # FILE.py:CLASS or MODULE:CLASS
    trust_code: bool = False

    @classmethod
    def of_config(cls, name: str) -> CodeConsent:
        """The consent a command's own config gives (cv, repeat and tune continuing the runs
        they started): the code it names, as it is now."""
        return cls(model_code=name, trust_code=True) if is_user_model(name) else cls()


def approve_code(name: str, recorded: dict[str, Any], consent: CodeConsent | None,
                 source: str | Path, say: Any = echo) -> str:
    """The ``model.name`` to rebuild the model of ``source`` (a checkpoint or run folder) with,
    decided before anything is imported: a built-in model as it is; the user's own class only
    when ``consent`` names it (the same class, and the same file content when the checkpoint
    recorded a hash) or trusts it. Anything else is one line saying which code the checkpoint
    asks for and how to allow it."""
    consent = consent or CodeConsent()
    if not is_user_model(name):
        if consent.model_code is not None and not consent.trust_code:
            raise ImgclsError(f"--model-code {consent.model_code}: {source} holds imgcls's own "
                              f"model {name}, which needs no code of yours; drop --model-code")
        return name
    if consent.model_code is None:
        if consent.trust_code:
            return name
        raise ImgclsError(f"{source} asks to import and run {name} (your own model code); "
                          f"nothing was imported: allow it with --model-code {name} (checked "
                          "against the class and file it was trained with) or --trust-code")
    given = resolve_name(consent.model_code)
    wanted_cls, given_cls = name.rpartition(":")[2], given.rpartition(":")[2]
    if given_cls != wanted_cls and not consent.trust_code:
        raise ImgclsError(f"--model-code {consent.model_code}: {source} was trained with class "
                          f"{wanted_cls!r} ({name}), not {given_cls!r}")
    if not given.rpartition(":")[0].endswith(".py"):
        if given != name and not consent.trust_code:
            raise ImgclsError(f"--model-code {consent.model_code}: {source} was trained with "
                              f"{name}; name that code, or add --trust-code to use another")
        return given
    digest, expected = file_sha256(given), recorded.get("sha256")
    if digest is None:
        raise ImgclsError(f"--model-code {consent.model_code}: file "
                          f"{given.rpartition(':')[0]} not found")
    if expected and digest != expected:
        if not consent.trust_code:
            raise ImgclsError(
                f"--model-code {consent.model_code}: the file differs from the one {source} "
                f"was trained with (sha256 {digest[:12]}..., recorded {expected[:12]}...); "
                "add --trust-code to use it anyway")
        say(f"warning: {given} differs from the code {source} was trained with (sha256 "
            f"{digest[:12]}..., recorded {expected[:12]}...): using it, as --trust-code allows")
    elif not expected and not consent.trust_code:
        say(f"{source} records no hash of its code (an older checkpoint): {given} is used as "
            "--model-code names it, unchecked")
    return given


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


def channels_last_works(name: str, in_channels: int, size: ImageSize,
                        kwargs: dict[str, Any]) -> bool:
    """Whether the class runs on channels-last activations (``train.channels_last``): code that
    flattens with ``x.view(...)``, as the tutorials' ``Net`` does, fails on them."""
    model = build(name, 2, in_channels, kwargs, quiet=True).eval()
    x = torch.zeros(2, in_channels, *size_hw(size)).to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model.to(memory_format=torch.channels_last)(x)
    except RuntimeError as exc:
        if "view" in str(exc):
            return False
    except Exception:  # noqa: S110 (other problems surface, with their own message, in training)
        pass
    return True
