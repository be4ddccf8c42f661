"""The one exception type that the command line turns into a one-line message and exit code 2
(a full disk is a subclass), the one way to shorten a foreign exception into such a line, and the
one way to show a value in it (:func:`short_repr`)."""

from __future__ import annotations

import errno
import os
import reprlib

# A value in a message shows its start only: a YAML alias bomb of a few hundred bytes is a list of
# billions of items, and its full repr would be a message of gigabytes. Strings up to 160
# characters (a path, a model name) are shown whole.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 160, 160
DISK_FULL_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)
)


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


def short_repr(value: object, limit: int = 200) -> str:
    """``repr(value)`` abbreviated (a few items per container, strings cut in the middle) and at
    most ``limit`` characters, however large ``value`` is: use it for every value in a message.

    >>> short_repr(list(range(1000)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DiskFullError(ImgclsError, OSError):
    """A write failed for want of space, quota or file size (ENOSPC, EDQUOT, EFBIG).

    Also an OSError with that errno, so code that shrugs off failed optional writes (caches)
    still does, and wrappers that print ``exc.strerror`` say "disk full".
    """

    def __init__(self, path: str | os.PathLike[str], code: int) -> None:
        reason = f"disk full ({os.strerror(code)})"
        self.message = f"cannot write {path}: {reason}; the previous file, if any, is unchanged"
        super().__init__(self.message)
        self.errno, self.strerror, self.filename = code, reason, os.fspath(path)

    def __str__(self) -> str:  # OSError's own would be "[Errno 28] ...: 'path'"
        return self.message


def disk_full_errno(exc: BaseException | None) -> int | None:
    """The errno of a full disk, quota or file-size limit in ``exc`` or what it was raised from:
    ``torch.save`` turns its file's OSError into a RuntimeError whose context is that OSError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None
