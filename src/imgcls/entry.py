"""The ``imgcls`` command's entry point (the console script and ``python -m imgcls``): the
start-up signal handlers (:mod:`imgcls.startup`) first, then the command and its imports.

This module imports nothing heavy: it must be in place before torch is imported.
"""

from __future__ import annotations

import os

from imgcls.startup import install


def main() -> int:
    """``imgcls ...``: the handlers first, then the command (and its imports)."""
    install()
    from imgcls.cli.main import main as run

    try:
        return run()
    except KeyboardInterrupt as exc:  # only between two statements of the command's own set-up
        from imgcls.cli.messages import interrupted_message
        from imgcls.engine.signals import TERMINATED

        os.write(2, f"imgcls: {interrupted_message(exc)}\n".encode())
        return 143 if TERMINATED in str(exc) else 130
