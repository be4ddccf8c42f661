"""The key reference, generated from the declarations: ``imgcls train --help-keys`` and
docs/config.md (``python -m imgcls.config > docs/config.md``; a test keeps them equal)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from imgcls.config.build import type_name
from imgcls.config.schema import KEYS

_HEADER = """\
# Config reference

[README](../README.md) · [all docs](README.md)

Every config key, its type, default and what it does, generated from the schema
(`src/imgcls/config/`) by `python -m imgcls.config > docs/config.md`; a test fails when
this page differs from what the schema generates. Set keys in a YAML recipe (`--config`) or as
`KEY=VALUE` on the command line (precedence: [command-line.md](command-line.md)); `imgcls train
--help-keys` prints the same list. Keys marked *infra* say where or how fast a run goes, not what
it learns: an experiment may change them between its runs, and a search never varies them.

| key | type | default | meaning |
|---|---|---|---|
"""


def shown(value: Any) -> str:
    """A value as YAML writes it: ``true``, ``null``, ``[4]``, ``""``, ``cifar10``."""
    if value == "":
        return '""'
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _range(info: Any) -> str:
    return "" if not info.bounds else "; " + info.rule().removeprefix("must be ")


def markdown() -> str:
    """docs/config.md."""
    rows = []
    for name, info in KEYS.items():
        role = " *(infra)*" if info.infra else ""
        kind = type_name(info.annotation) + _range(info)
        rows.append(f"| `{name}` | {kind} | `{shown(info.default)}` | {info.help}{role} |")
    return _HEADER + "\n".join(rows) + "\n"


def help_keys(width: int = 100) -> str:
    """``imgcls train --help-keys``: every key with its type, default and help."""
    blocks = []
    for name, info in KEYS.items():
        head = f"{name} = {shown(info.default)}  ({type_name(info.annotation)}{_range(info)})"
        text = info.help.replace("`", "") + (" [infra]" if info.infra else "")
        body = textwrap.fill(text, width, initial_indent="    ", subsequent_indent="    ")
        blocks.append(f"{head}\n{body}")
    return "\n".join(blocks)


def describe_keys() -> str:
    """Every key with its default, for the end of ``imgcls train --help``."""
    return "\n".join(f"  {name} = {info.default!r}" for name, info in KEYS.items())
