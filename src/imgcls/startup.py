"""Signals during the ``imgcls`` command's start-up (see :mod:`imgcls.entry`): a Ctrl-C or
SIGTERM before the command is ready ends the process with one line.

Start-up is mostly importing torch, a second or more. A KeyboardInterrupt raised in there prints
a traceback of whatever import it landed in, or, raised inside a C++ callback, aborts in pybind11.
Until the command is ready to catch it, SIGINT and SIGTERM write one line and exit at once (130,
143): nothing has been written then. :func:`settle` hands the signals back (SIGINT to Python's
KeyboardInterrupt, SIGTERM to the command's handler), which ``imgcls.cli.main`` does once its
``try`` is in place. Only :mod:`imgcls.entry` installs the handlers: ``import imgcls`` (or
``imgcls.cli``) from Python leaves a process's signal handlers alone.

This module imports nothing heavy: it must be in place before torch is imported.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType  # (not typing: a few milliseconds more before the handlers)

_EXIT = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated (SIGTERM)")}
_before: dict[int, object] = {}  # the handlers that :func:`install` replaced


def _resumed_run(argv: list[str]) -> str | None:
    """The value of ``--resume`` (or an abbreviation argparse accepts) in ``argv``, if any."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if len(name) >= 5 and "--resume".startswith(name):
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return None


def _exit_at_once(signum: int, _frame: FrameType | None) -> None:
    code, reason = _EXIT.get(signum, (128 + signum, f"signal {signum}"))
    run = _resumed_run(sys.argv[1:])
    saved = "nothing was saved" if run is None else (
        f"nothing new was saved ({run or 'the run'} is as it was)")
    try:
        os.write(2, f"imgcls: {reason} during start-up: {saved}\n".encode(errors="replace"))
    finally:
        os._exit(code)  # no exception: nothing for an import or a C++ frame to get wrong


def install() -> None:
    """Answer SIGINT and SIGTERM with one line and an exit, unless they are ignored or handled
    already (``nohup``, a job started in the background with ``&``, an embedding program)."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    for sig, default in defaults.items():
        current = signal.getsignal(sig)
        if current is default:
            _before[sig] = current
            signal.signal(sig, _exit_at_once)


def settle(sigterm: object = None) -> object:
    """End start-up: SIGINT raises KeyboardInterrupt again, and SIGTERM goes to ``sigterm``
    (None: to what it did before :func:`install`). Returns SIGTERM's handler before start-up
    (or the one replaced, outside this entry), for the caller to restore when it is done."""
    before = signal.getsignal(signal.SIGTERM)
    if before is _exit_at_once:
        before = _before.get(signal.SIGTERM, signal.SIG_DFL)
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    elif signal.getsignal(signal.SIGTERM) is _exit_at_once:
        signal.signal(signal.SIGTERM, before)
    if signal.getsignal(signal.SIGINT) is _exit_at_once:
        signal.signal(signal.SIGINT, _before.get(signal.SIGINT, signal.default_int_handler))
    return before
