"""Building a :class:`Config`: defaults < a recipe or saved config < overrides, each key checked
against its declaration, every error one line naming the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import ValidationError

from imgcls.config.schema import (
    EXPLICIT,
    KEYS,
    RESOLVED,
    SECTIONS,
    Config,
    defaults_flat,
)
from imgcls.config.yaml_io import write_yaml
from imgcls.errors import ImgclsError, short_repr
from imgcls.registry import close_matches


def build_config(
    base: Config | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Layer dotted ``overrides`` over ``base`` (a Config, a nested dict, or the defaults).

    >>> build_config(overrides={"optim.lr": 0.05}).optim.lr
    0.05

    Every key given in ``base`` (a dict) or ``overrides`` counts as set by the user
    (:attr:`Config.explicit`), whatever its value; a Config ``base`` brings its own.

    >>> "optim.lr" in build_config(overrides={"optim.lr": 0.05}).explicit
    True
    """
    explicit: set[str] = set()
    if isinstance(base, Config):
        tree = base.to_dict()
        explicit.update(base.explicit or ())
    else:
        tree = Config().to_dict()
        for name, value in flatten(base or {}).items():
            _set(tree, name, value)
            explicit.add(name)
        listed = _explicit_list((base or {}).get(EXPLICIT))
        if listed is not None:  # a saved config: what its user set, not every key it holds
            explicit = {name for name in listed if name in KEYS}
    for name, value in (overrides or {}).items():
        _set(tree, name, value)
        explicit.add(name)
    if "train.monitor" not in explicit:
        tree["train"]["monitor"] = default_monitor(tree)
    sections = {section: _section(section, values) for section, values in tree.items()}
    return Config(**sections, explicit=frozenset(explicit))


def _set(tree: dict[str, dict[str, Any]], name: str, value: Any) -> None:
    if name not in KEYS:
        like = close_matches(name, KEYS)
        hint = f"; did you mean {' or '.join(like)}?" if like else ""
        raise ImgclsError(f"unknown config key {short_repr(name)}{hint} (`imgcls train "
                          "--help-keys` lists the keys)")
    section, _, key = name.partition(".")
    tree[section][key] = value


def _section(section: str, values: dict[str, Any]) -> Any:
    """One section built and checked: pydantic's first complaint, as one line naming the key."""
    try:
        built = SECTIONS[section](**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = f"{section}.{error['loc'][0]}"
        raise ImgclsError(_message(name, values.get(str(error["loc"][0])), error)) from None
    built.check_rules()
    return built


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _message(name: str, value: Any, error: Any) -> str:
    info = KEYS[name]
    kind = error["type"]
    if kind in _RANGE_ERRORS:
        return f"config key {name} = {short_repr(value)} is invalid: {info.rule()}"
    if kind == "finite_number":
        return f"config key {name} = {short_repr(value)} is invalid: must be a finite number"
    choices = typing.get_args(_bare(info.annotation))
    if kind == "literal_error":
        return (f"config key {name} = {short_repr(value)} is invalid: expected one of "
                f"{', '.join(str(c) for c in choices)}")
    return f"config key {name}: expected {type_name(info.annotation)}, got {short_repr(value)}"


def _bare(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def choices(name: str) -> tuple[Any, ...]:
    """The values a choice key takes, as declared: ``choices("optim.name")`` -> sgd, adam, adamw."""
    found = typing.get_args(_bare(KEYS[name].annotation))
    if not found:
        raise KeyError(f"{name} is not a choice key")
    return found


def type_name(hint: Any) -> str:
    """A key's type as the reference and the errors write it: ``int or null``, ``a list of
    float``, ``one of sgd, adam, adamw``."""
    hint = _bare(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    if origin is list:
        return f"a list of {type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def flatten(tree: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; a non-mapping section is an error.

    A saved config (``config.yaml``, ``best.yaml``) lists the keys its user set under
    ``explicit``; of the others, those at their default are left out, so that reading it as a
    recipe sets what its run set and leaves the rest to the presets.
    """
    listed = _explicit_list(tree.get(EXPLICIT), where)
    flat: dict[str, Any] = {}
    for section, values in tree.items():
        if values is None or section in (EXPLICIT, RESOLVED):  # None: a section commented out
            continue
        if not isinstance(values, dict):
            raise ImgclsError(
                f"config{where}: section {short_repr(section)} must be a mapping of keys, got "
                f"{short_repr(values)}"
            )
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    if listed is not None:
        unset = defaults_flat()
        flat = {key: value for key, value in flat.items()
                if key in listed or key not in unset or unset[key] != value}
    return flat


def _explicit_list(value: Any, where: str = "") -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise ImgclsError(f"config{where}: {EXPLICIT!r} must be a list of keys, got "
                          f"{short_repr(value)}")
    return frozenset(value)


def from_saved(tree: dict[str, Any]) -> Config:
    """A config as a run saved it (``config.yaml``, a checkpoint's ``config``): the keys it lists
    as set are the explicit ones; a config saved before that list existed counts the keys that
    differ from their defaults, as imgcls then read them."""
    cfg = build_config(tree)
    if EXPLICIT in tree:
        return cfg
    # the monitor the run chose best.pt by stays, whatever today's default would be
    old = dataclasses.replace(cfg, explicit=None)
    return dataclasses.replace(old, explicit=(old.explicit or frozenset()) | {"train.monitor"})


def default_monitor(tree: dict[str, dict[str, Any]]) -> str:
    """``train.monitor`` when the user does not set it: ``val_balanced_acc`` when the classes
    are weighted or sampled evenly (the data is imbalanced, and accuracy would pick the epoch
    that favours the majority class), else ``val_acc``."""
    return "val_balanced_acc" if imbalance_handled(tree) else KEYS["train.monitor"].default


def imbalance_handled(tree: dict[str, dict[str, Any]]) -> bool:
    """Whether ``optim.class_weights`` or ``loader.sampler=balanced`` is on."""
    return tree["optim"]["class_weights"] != "none" or tree["loader"]["sampler"] == "balanced"


def save_yaml(cfg: Config, path: str | Path, resolved: dict[str, Any] | None = None) -> None:
    """``config.yaml``: the config with the keys the user set, and ``resolved``: what the run
    made of the keys it decides (``data.loader: auto`` -> ``memory``, ...)."""
    saved = cfg.to_saved()
    if resolved:
        saved[RESOLVED] = resolved
    write_yaml(saved, path)
