"""The leak check ``imgcls train`` runs at its start: validation files whose bytes equal a
training file's. Cheap by design (file hashes, no decoding; cached per file under the data
cache by size and modification time), so it may run on every start; ``imgcls check-data``
finds the near copies too."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgcls.datacheck.hashing import file_hash
from imgcls.files import atomic_write_text

CACHE_VERSION = 1


def _cache_file(cache_dir: Path, root: str) -> Path:
    name = hashlib.sha256(root.encode()).hexdigest()[:16]
    return cache_dir / f"file-hashes-{name}.json"


def cached_file_hashes(paths: list[str], cache_dir: Path, root: str = "") -> dict[str, str]:
    """blake2b of each file's bytes; unchanged files (same size and mtime) come from the cache
    file for ``root``, which is rewritten only when something had to be hashed."""
    cache = _cache_file(cache_dir, root)
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        known = saved["files"] if saved.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        known = {}
    stamps = {}
    for path in paths:
        st = os.stat(path)
        stamps[path] = [st.st_size, st.st_mtime_ns]
    fresh = {p: known[p][2] for p in paths
             if isinstance(known.get(p), list) and known[p][:2] == stamps[p]}
    todo = [p for p in paths if p not in fresh]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            fresh.update(zip(todo, pool.map(file_hash, todo), strict=True))
        files = {**known, **{p: [*stamps[p], fresh[p]] for p in paths}}
        record = {"version": CACHE_VERSION, "files": files}
        with contextlib.suppress(OSError):  # a read-only data root: hash again next time
            atomic_write_text(cache, json.dumps(record, separators=(",", ":")))
    return fresh


def count_train_val_copies(train: list[str], val: list[str], cache_dir: Path,
                           root: str = "") -> int:
    """How many of the ``val`` files are byte-for-byte copies of some ``train`` file."""
    hashes = cached_file_hashes(list(dict.fromkeys(train + val)), cache_dir, root)
    seen = {hashes[p] for p in train}
    return sum(hashes[p] in seen for p in val)


def warn_train_leaks(data: Any, source: str, cache_dir: Path,
                     say: Callable[[str], None]) -> int:
    """Say one line when validation images are exact copies of training images; returns the
    count. File-based sources only (folders, list files); an unreadable file is left to the
    loaders to report, so a failed check says nothing."""
    train = getattr(data.train, "samples", None)
    val = getattr(data.val, "samples", None) if data.val is not None else None
    if not train or not val:
        return 0
    try:
        copies = count_train_val_copies([p for p, _ in train], [p for p, _ in val], cache_dir,
                                        str(getattr(data.train, "root", "")))
    except OSError:
        return 0
    if copies:
        say(f"warning: {copies} validation image(s) are exact copies of training images (a "
            f"leak: validation accuracy is inflated); `imgcls check-data {source}` lists them")
    return copies
