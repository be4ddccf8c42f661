"""The one exception type that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations


class ImgclsError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), not a bug in imgcls.

    The message must name the file, key or value at fault, on one line.
    """
