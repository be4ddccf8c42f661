"""The one exception type that the command line turns into a one-line message and exit code 2,
and the one way to shorten a foreign exception into such a line."""

from __future__ import annotations


class ImgclsError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), not a bug in imgcls.

    The message must name the file, key or value at fault, on one line.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message (its type name when it has none), cut to
    ``limit`` characters: foreign errors (torch, PIL, ONNX) often span dozens of lines.

    >>> first_line(ValueError("bad value\\n  details"))
    'bad value'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
