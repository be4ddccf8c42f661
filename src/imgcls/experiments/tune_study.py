"""The Optuna side of ``imgcls tune``: the storage (SQLite by default, any database URL Optuna
takes), the pruner, and the study, which remembers the space, base config and metric it was made
with so that a rerun or another worker cannot quietly mix two searches."""

from __future__ import annotations

import json
import random
import time
import warnings
from types import ModuleType
from typing import Any

from imgcls.config import Config, flatten
from imgcls.errors import ImgclsError, first_line
from imgcls.experiments.search_space import Param
from imgcls.metric_table import Monitor

PRUNERS = ("median", "threshold", "none")
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's write (sqlite3's default: 5 s)
HEARTBEAT_S = 60  # a trial silent for 2 heartbeats (its worker killed) is marked failed
SPACE_ATTR, BASE_ATTR, MONITOR_ATTR = "imgcls_space", "imgcls_base", "imgcls_monitor"
# Keys that may differ between the workers of one study: paths and devices, not what is learned.
LOCAL_KEYS = ("data.source", "data.root", "train.device")


def require_optuna() -> ModuleType:
    """Optuna, or a one-line error saying how to install it (it is an optional extra)."""
    try:
        import optuna
    except ImportError:
        raise ImgclsError('imgcls tune needs Optuna: pip install "imgcls[tune]"') from None
    return optuna


def create_pruner(optuna: ModuleType, name: str, monitor: Monitor, threshold: float | None,
                  after: int) -> Any:
    """``--pruner`` with ``--prune-threshold`` and ``--prune-after`` as an Optuna pruner."""
    if name not in PRUNERS:
        raise ImgclsError(f"--pruner {name}: choose one of {', '.join(PRUNERS)}")
    if (threshold is not None) != (name == "threshold"):
        raise ImgclsError("--prune-threshold V goes with --pruner threshold, and only with it")
    if after < 1:
        raise ImgclsError(f"--prune-after {after}: a trial can be judged after epoch 1 at the "
                          "earliest")
    pruners = optuna.pruners
    if name == "none":
        return pruners.NopPruner()
    if name == "median":  # the median of 5 finished trials at the same epoch, at least
        return pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=after)
    bound = {"lower" if monitor.mode == "max" else "upper": threshold}
    return pruners.ThresholdPruner(**bound, n_warmup_steps=after)


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: opening it says so
        return url


def _storage(optuna: ModuleType, url: str) -> Any:
    from sqlalchemy.exc import OperationalError

    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                  heartbeat_interval=HEARTBEAT_S)
        except OperationalError as exc:
            # Two workers creating a new database's tables at once: the second retries.
            if attempt == 2:
                raise ImgclsError(f"--storage {shown_url(url)}: {first_line(exc)}") from None
            time.sleep(0.5 + random.random())
        except Exception as exc:  # a malformed URL, a missing database driver
            raise ImgclsError(f"--storage {shown_url(url)}: {first_line(exc)}") from None
    raise AssertionError("unreachable")


def open_study(optuna: ModuleType, url: str, study_name: str, monitor: Monitor,
                params: list[Param], base: Config, pruner: Any) -> Any:
    """Create the study or join it, refusing one made for another space, base or metric."""
    with warnings.catch_warnings():  # constant_liar: "experimental" in older Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant liar: parallel workers do not all draw next to one running trial
        sampler = optuna.samplers.TPESampler(constant_liar=True)
    direction = "maximize" if monitor.mode == "max" else "minimize"
    study = optuna.create_study(storage=_storage(optuna, url), study_name=study_name,
                                direction=direction, load_if_exists=True, sampler=sampler,
                                pruner=pruner)
    where = f"study {study_name!r} in {shown_url(url)}"
    if study.direction.name.lower() != direction:
        raise ImgclsError(f"{where} does not {direction} ({monitor.name}, train.monitor): "
                          "choose another --study or --name")
    searched = {p.key for p in params}
    mine = {
        MONITOR_ATTR: monitor.name,
        SPACE_ATTR: {p.key: p.spec() for p in params},
        BASE_ATTR: {k: v for k, v in flatten(base.to_dict()).items()
                    if k not in searched and k not in LOCAL_KEYS and not k.startswith("log.")},
    }
    mine = json.loads(json.dumps(mine))  # as the database gives it back: tuples are lists
    for attr, value in mine.items():
        saved = study.user_attrs.get(attr)
        if saved is None:
            study.set_user_attr(attr, value)
        elif saved != value:
            raise ImgclsError(f"{where} was made with {_difference(attr, saved, value)}; a "
                              "study keeps one setup: choose another --study or --name")
    return study


def _difference(attr: str, saved: Any, mine: Any) -> str:
    if attr == MONITOR_ATTR:
        return f"train.monitor={saved}, this command says {mine}"
    what = "a space with" if attr == SPACE_ATTR else "base config"
    for key in sorted(set(saved) | set(mine)):
        if saved.get(key) != mine.get(key):
            return (f"{what} {key}={saved.get(key, '(none)')}, this command says "
                    f"{mine.get(key, '(none)')}")
    return what  # pragma: no cover - the dicts differ, so some key does
