"""A small name -> factory registry with metadata and "did you mean" errors.

>>> MODELS = Registry("model")
>>> @MODELS.register("tiny", input_size=32)
... def tiny(num_classes: int) -> str:
...     return f"tiny/{num_classes}"
>>> MODELS.get("tiny")(10), MODELS.meta("tiny")["input_size"]
('tiny/10', 32)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from imgcls.errors import ImgclsError, short_repr

T = TypeVar("T")


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (typos, wrong case), best first."""
    candidates = list(candidates)
    by_lower = {c.lower(): c for c in candidates}
    # Compare lower-cased so "ResNet18" still finds "resnet18".
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def unknown_name_error(
    kind: str, name: str, candidates: Iterable[str], key: str | None = None
) -> ImgclsError:
    """A one-line error for an unknown ``name``, listing close matches when there are any."""
    where = f" ({key})" if key else ""
    matches = close_matches(name, candidates)
    hint = f"; did you mean {', '.join(matches)}?" if matches else ""
    return ImgclsError(f"unknown {kind} {short_repr(name)}{where}{hint}")


class Registry(Generic[T]):
    """Maps names to objects (usually factories), each with a free-form metadata dict."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "model", "optimizer"...: used in error messages only
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Register ``obj`` under ``name``; a name can be registered once only."""
        if name in self._items:
            # A silent overwrite would make which factory wins depend on import order.
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; the name defaults to the object's ``__name__``."""

        def decorator(obj: T) -> T:
            return self.add(name or obj.__name__, obj, **meta)  # type: ignore[attr-defined]

        return decorator

    def get(self, name: str, key: str | None = None) -> T:
        """The object registered as ``name``; ``key`` (a config key) is named in the error."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._items, key) from None

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of the metadata ``name`` was registered with."""
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


# Project-wide registries live here (not in the modules that fill them) so that any module can
# register into them without importing the package that uses them (no import cycles).
MODELS: Registry[Callable[..., Any]] = Registry("model")
"""Every model by name (``imgcls.models.factory`` looks them up). imgcls's own register first:
``factory(num_classes, in_channels=3) -> nn.Module`` with metadata ``input_size`` (int),
``default_normalize`` ("dataset" | "imagenet"), ``fixed_size`` (bool) and optionally
``min_size``; then torchvision's classifiers, with metadata ``source="torchvision"`` and
``factory(num_classes, in_channels=3, weights=None, head="replace")`` (their sizes come from
their weights). A user's own class (``FILE.py:CLASS``) is not registered."""
