"""How a config key is declared: its type, default, help, range and role, in one ``key(...)``.

Everything else reads the declaration: validation and its messages (``config.build``), the key
reference (``imgcls train --help-keys``, docs/config.md), the experiments' infrastructure keys
and the memory loader's allow-list of transforms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, Strict

from imgcls.config.sizes import config_size
from imgcls.errors import ImgclsError, short_repr

# Every section is a frozen pydantic dataclass: unknown keys, nan and inf are errors, and a number
# given for a text key (`model.name=18`) is read as text.
SECTION_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic reads true as 1.0; no number key means that
        raise ValueError("a number, not true/false")
    return value


def _as_list(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]  # `transforms.crop_padding=4` means [4]
    return value


Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_bool)]
Bool = Annotated[bool, Strict()]
IntList = Annotated[list[Int], BeforeValidator(_as_list)]
FloatList = Annotated[list[Float], BeforeValidator(_as_list)]
# transforms.image_size: an int (square) or [height, width]; [n] and [n, n] are read as n
ImageSizeKey = Annotated[Int | list[Int], BeforeValidator(config_size)]


def key(default: Any, help: str, *, infra: bool = False, memory: bool = False,  # noqa: A002
        photo: bool = False, note: str = "", **constraints: Any) -> Any:
    """Declare a config key.

    ``help``: what it does (the reference's text); ``infra``: it says where or how fast a run
    goes, not what it learns (experiments may change it between runs, searches never vary it);
    ``memory``: a transforms key the memory loader reproduces (any other transforms key that is
    in use makes ``data.loader=auto`` choose the DataLoader); ``photo``: likewise for the photo
    loader (random resized crops from the decoded photo cache); ``note``: added to the message of
    a value out of range; ``constraints``: pydantic's ``ge``, ``gt``, ``le``, ``lt``.
    """
    extra = {"infra": infra, "memory": memory, "photo": photo, "note": note}
    if isinstance(default, (list, dict)):
        value = default
        return Field(default_factory=lambda: type(value)(value), description=help,
                     json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


@dataclass(frozen=True)
class KeyInfo:
    """One key as declared: what the reference, the errors and the key lists read."""

    name: str  # dotted: optim.lr
    annotation: Any
    default: Any
    help: str
    infra: bool
    memory: bool
    note: str
    bounds: dict[str, Any]  # ge / gt / le / lt
    photo: bool = False

    def rule(self) -> str:
        """The range as a message: ``must be >= 0``, ``must be in [0, 1)``."""
        b = self.bounds
        low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
        high = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
        if low and high:
            text = f"must be in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
        elif low:
            text = f"must be {'>=' if low[0] == '[' else '>'} {low[1]:g}"
        elif high:
            text = f"must be {'<=' if high[0] == ']' else '<'} {high[1]:g}"
        else:
            text = "invalid"
        return f"{text} ({self.note})" if self.note else text


def section_keys(section: str, cls: type) -> list[KeyInfo]:
    """The declared keys of one section class, in declaration order."""
    infos = []
    for f in dataclasses.fields(cls):
        spec = cls.__pydantic_fields__[f.name]  # type: ignore[attr-defined]
        extra = spec.json_schema_extra or {}
        bounds = {name: getattr(m, name) for m in spec.metadata
                  for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
        default = spec.get_default(call_default_factory=True)
        infos.append(KeyInfo(f"{section}.{f.name}", spec.annotation, default,
                             spec.description or "", bool(extra.get("infra")),
                             bool(extra.get("memory")), str(extra.get("note", "")), bounds,
                             bool(extra.get("photo"))))
    return infos


def check(ok: bool, name: str, value: Any, rule: str) -> None:
    """A rule between keys (a section's ``check_rules``), checked after each key's own type and
    range."""
    if not ok:
        raise ImgclsError(f"config key {name} = {short_repr(value)} is invalid: {rule}")
