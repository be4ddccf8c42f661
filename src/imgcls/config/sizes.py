"""Image sizes: ``transforms.image_size`` and a checkpoint's ``input_size`` are an int (square, as
every run before non-square sizes wrote) or ``[height, width]``. Every consumer goes through
:func:`size_hw` for the two sides and :func:`saved_size` for what is written, so a square size
keeps its old int form everywhere.

>>> size_hw(32), size_hw([24, 40]), image_size([32, 32]), saved_size((24, 40)), size_text(32)
((32, 32), (24, 40), 32, [24, 40], '32x32')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgcls.errors import ImgclsError

# An image size as a run holds it: an int when square, else (height, width).
ImageSize = int | tuple[int, int]


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a size given as an int (square), ``[n]`` or ``[height, width]``."""
    if isinstance(size, int):
        return size, size
    values = [int(v) for v in size]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise ValueError(f"an image size is an int or [height, width], got {list(size)}")
    return values[0], values[1]


def image_size(size: int | Sequence[int]) -> ImageSize:
    """The size as a run holds it: an int when square, else ``(height, width)``."""
    height, width = size_hw(size)
    return height if height == width else (height, width)


def saved_size(size: int | Sequence[int]) -> int | list[int]:
    """The size as config.yaml, a checkpoint and a sidecar write it: an int when square (as
    before non-square sizes), else ``[height, width]`` (YAML and JSON have no tuples)."""
    height, width = size_hw(size)
    return height if height == width else [height, width]


def size_text(size: int | Sequence[int]) -> str:
    """``HxW``, as messages write a size: ``32x32``, ``24x40``."""
    height, width = size_hw(size)
    return f"{height}x{width}"


def size_arg(size: int | Sequence[int]) -> str:
    """The size as a command-line option takes it (:func:`parse_size`): ``64``, ``24x40``."""
    height, width = size_hw(size)
    return str(height) if height == width else f"{height}x{width}"


def config_size(value: Any) -> Any:
    """``transforms.image_size`` as given, before its type is checked: ``[n]`` and ``[n, n]``
    become ``n`` (a square run saves the int it always saved); anything else is left to the
    type check and the key's rule."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v == value[0] for v in value) \
            and len(value) <= 2:
        return value[0]
    return value


def valid_size(value: int | list[int] | None) -> bool:
    """Whether a checked ``transforms.image_size`` is null, an int >= 1 or ``[height, width]``
    of ints >= 1."""
    if value is None or isinstance(value, int):
        return value is None or value >= 1
    return len(value) == 2 and min(value) >= 1


def parse_size(text: str, option: str = "--input-size") -> ImageSize:
    """A command-line size: ``S`` (square), ``HxW`` or ``H,W``; anything else is one line naming
    ``option``."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
        size = image_size(values)
    except ValueError:
        raise ImgclsError(f"{option} {text}: expected S, HxW or H,W in pixels") from None
    if min(size_hw(size)) < 1:
        raise ImgclsError(f"{option} {text}: must be at least 1")
    return size
