"""Reading and writing config YAML safely: YAML 1.2 booleans, a guard against alias bombs, and
one-line errors naming the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import ImgclsError, first_line, short_repr
from imgcls.files import atomic_write_text


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``log.progress=off`` stays "off"."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


# More values than any config holds. YAML aliases of aliases ("billion laughs") make a few hundred
# bytes into billions of values, which validation, repr and yaml.dump would all write out.
MAX_YAML_VALUES = 100_000


def yaml_load(text: str, where: str) -> Any:
    """``text`` as YAML 1.2 data; a nesting or alias bomb is a one-line error naming ``where``."""
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
        size = _expanded_size(data, {})
    except RecursionError:  # PyYAML composes nested lists by recursion: [[[[...]]]] ends it
        raise ImgclsError(f"{where}: its YAML is nested too deeply") from None
    if size > MAX_YAML_VALUES:
        raise ImgclsError(f"{where}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} "
                          "values (or a value contains itself); write the values out instead")
    return data


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """How many values ``value`` holds with every alias written out; each shared list or mapping
    is counted once per use but walked once, so a bomb is measured in microseconds."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = MAX_YAML_VALUES + 1  # until done: a list inside itself is too big
        items = value.values() if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(value)]


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ImgclsError(f"expected KEY=VALUE, got {short_repr(text)}")
    try:
        value = yaml_load(raw, f"override {short_repr(key)}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file as a nested dict (``{section: {key: value}}``)."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text(encoding="utf-8"), f"config file {path}")
    except FileNotFoundError:
        raise ImgclsError(f"config file not found: {path}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8 text
        raise ImgclsError(f"cannot read config file {path}: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ImgclsError(f"config file {path}: expected a mapping of sections, got "
                          f"{short_repr(data)}")
    return data


def write_yaml(tree: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(tree, sort_keys=False))
