"""The ``--trust-pickle`` load path: an imgcls checkpoint, or a whole-model pickle converted in
memory (``inference.load_model`` reads checkpoints through :func:`read_any_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

from imgcls.deploy.legacy.pickles import pickle_globals, unpickle_state
from imgcls.deploy.legacy.records import make_record
from imgcls.errors import ImgclsError
from imgcls.runs.record import CheckpointRecord

__all__ = ["read_any_checkpoint"]


def read_any_checkpoint(path: str | Path, *, trust_pickle: bool) -> CheckpointRecord:
    """An imgcls checkpoint record from ``path``.

    An imgcls checkpoint is read with :func:`load_checkpoint`. With ``trust_pickle``, a
    whole-model pickle (``torch.save(model)``) is unpickled, which runs code from the file (a
    warning says so), and converted in memory: classes ``0..N-1``, no normalisation, the model's
    input size. Anything else is refused with load_checkpoint's error; nothing in the file runs.

    >>> record = read_any_checkpoint("old_model.pth", trust_pickle=True)  # doctest: +SKIP
    >>> record.config["model"]["name"], record.classes[:3]                  # doctest: +SKIP
    ('simple_v3', ['0', '1', '2'])
    """
    path = Path(path)
    try:
        return CheckpointRecord.load(path)
    except ImgclsError:
        if not trust_pickle or not pickle_globals(path):
            raise
    state, hint = unpickle_state(path)
    return make_record(state, hint, source=path)
