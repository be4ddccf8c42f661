"""``imgcls tune``: hyperparameter search with Optuna over ordinary training runs.

Each trial draws values for the searched keys (``search_space.py``), trains the base config with
them into ``EXP/trial-NNNN`` (an ordinary run folder) and reports ``train.monitor`` after every
epoch through a training callback, so that the pruner can stop a hopeless trial early. The study
lives in a database (``EXP/study.db``, SQLite, by default; any URL Optuna takes with
``--storage``), so a rerun continues it and several processes or machines work on one study.

``--trials N`` is the size of the study, not of one command: a worker starts a trial only while
the study holds fewer than N that count (done, pruned, failed or running; not those stopped by
Ctrl-C or a setup error), so rerunning a finished command does nothing and a larger N adds the
difference.

    result = tune(build_config(overrides={"data.source": "digits"}), "space.yaml", trials=20)
    print(result.best_yaml)
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import torch

from imgcls import api
from imgcls.config import Config, build_config
from imgcls.engine.loop import NonFiniteLoss
from imgcls.engine.metrics import Monitor, get_monitor
from imgcls.engine.trainer import Callback, Trainer
from imgcls.errors import ImgclsError, first_line
from imgcls.experiments.search_space import Param, load_space
from imgcls.experiments.tune_results import (
    BEST_EPOCH,
    ERROR,
    RUN_DIR,
    UNCOUNTED,
    TrialRow,
    counts_toward_budget,
    format_table,
    trial_rows,
    write_best_recipe,
    write_csv,
)
from imgcls.experiments.tune_study import create_pruner, open_study, require_optuna, shown_url
from imgcls.tracking import echo


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a study, with the line that says how to continue."""


class _TrialFailed(Exception):
    """A trial that failed on its own (diverged, out of memory, a combination the config
    refuses): recorded as failed, and the study goes on."""


class _Surplus(Exception):
    """A trial asked for when the study was already full (two workers at the same moment)."""


@dataclass
class TuneResult:
    experiment: Path
    study: str
    storage: str  # the URL, password hidden
    metric: str
    rows: list[TrialRow]
    best: TrialRow | None
    table: str
    csv: Path
    best_yaml: Path | None
    ran: int  # trials this process ran


class PruneOnEpoch(Callback):
    """Reports ``train.monitor`` to the Optuna trial after every epoch and stops the run when
    the pruner says so (never after the last epoch: then the trial is simply complete)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_after: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.monitor is None:
            raise ImgclsError("imgcls tune compares trials on train.monitor, and this run has no "
                              "validation set (data.val_fraction=0 and no val/ folder)")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> str | None:
        assert trainer.monitor is not None
        epoch, value = metrics["epoch"], float(metrics[trainer.monitor.name])
        self.trial.report(value, epoch)
        if epoch >= trainer.epochs or not self.trial.should_prune():
            return None
        self.pruned_after = epoch
        return f"pruned after epoch {epoch}: {trainer.monitor.name} {value:.4f}"


def tune(
    base: Config,
    space: str | Path,
    trials: int,
    *,
    name: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    prune_threshold: float | None = None,
    prune_after: int = 2,
    callbacks: Sequence[Callback] = (),
) -> TuneResult:
    """Run trials of ``base`` with values from the ``space`` file until the study holds
    ``trials`` of them; writes ``EXP/trials.csv`` and ``EXP/best.yaml``. ``EXP`` is
    ``base.log.output/name`` (default ``tune-<space file's stem>``); ``callbacks`` go to every
    trial's :func:`imgcls.api.train`."""
    optuna = require_optuna()
    if trials < 1:
        raise ImgclsError(f"--trials {trials}: need at least 1")
    monitor = get_monitor(base.train.monitor)
    params = load_space(space, base)
    make_pruner = create_pruner(optuna, pruner, monitor, prune_threshold, prune_after)
    exp = Path(base.log.output) / (name or f"tune-{Path(space).stem}")
    try:
        exp.mkdir(parents=True, exist_ok=True)  # only now: a bad option leaves no folder
    except OSError as exc:
        raise ImgclsError(f"cannot make the experiment folder {exp}: {exc.strerror}") from None
    url = storage or f"sqlite:///{exp.resolve() / 'study.db'}"
    study_name = study_name or exp.name
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here
    try:
        study = open_study(optuna, url, study_name, monitor, params, base, make_pruner)
        tuner = _Tuner(optuna, study, base, params, trials, exp, monitor, list(callbacks))
        tuner.say_start(shown_url(url))
        tuner.run()
    finally:
        optuna.logging.set_verbosity(verbosity)
    rows, best = tuner.write_files()
    return TuneResult(exp, study_name, shown_url(url), monitor.name, rows, best,
                      format_table(rows, monitor.name, best.number if best else None),
                      exp / "trials.csv", exp / "best.yaml" if best else None, tuner.ran)


# --------------------------------------------------------------------------- the trials


class _Tuner:
    """This worker's share of a study: trials until the study is full."""

    def __init__(self, optuna: ModuleType, study: Any, base: Config, params: list[Param],
                 trials: int, exp: Path, monitor: Monitor, callbacks: list[Callback]) -> None:
        self.optuna, self.study, self.base, self.params = optuna, study, base, params
        self.trials, self.exp, self.monitor, self.callbacks = trials, exp, monitor, callbacks
        self.ran = 0

    def counted(self) -> list[Any]:
        return [t for t in self.study.get_trials(deepcopy=False) if counts_toward_budget(t)]

    def say_start(self, url: str) -> None:
        aim = "maximising" if self.monitor.mode == "max" else "minimising"
        echo(f"tune: study {self.study.study_name!r} in {url}, {aim} {self.monitor.name}; "
             f"{len(self.counted())} of {self.trials} trials done or running; trials in "
             f"{self.exp}/trial-NNNN, each with its console.log")
        echo("space: " + "; ".join(p.describe() for p in self.params))

    def run(self) -> None:
        if len(self.counted()) >= self.trials:
            echo(f"tune: the study already holds {self.trials} trials (--trials "
                 f"{self.trials}): nothing to run; a larger --trials searches on")
        while len(self.counted()) < self.trials:
            self.study.optimize(self.objective, n_trials=1, catch=(_TrialFailed, _Surplus),
                                callbacks=[self.after_trial])

    def objective(self, trial: Any) -> float:
        earlier = [t for t in self.counted() if t.number < trial.number]
        if len(earlier) >= self.trials:  # another worker took the last place first
            trial.set_user_attr(UNCOUNTED, "surplus")
            raise _Surplus
        values = {p.key: p.suggest(trial) for p in self.params}
        run_dir = self.exp / f"trial-{trial.number:04d}"
        trial.set_user_attr(RUN_DIR, str(run_dir.resolve()))  # workers may run elsewhere
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        echo(f"trial {trial.number}: {_params(values)} -> {run_dir}")
        self.ran += 1
        try:
            cfg = build_config(self.base, {**values, "log.output": str(self.exp),
                                           "log.name": run_dir.name})
        except ImgclsError as exc:  # a pairing the config refuses (adam with nesterov)
            self._fail(trial, str(exc))
        pruning = PruneOnEpoch(trial)
        try:
            with _console_to(run_dir / "console.log"):
                result = api.train(cfg, callbacks=[pruning, *self.callbacks])
        except KeyboardInterrupt as exc:
            trial.set_user_attr(UNCOUNTED, "interrupted")
            raise TuneInterrupted(
                f"{str(exc) or 'interrupted'}: trial {trial.number} stopped and does not "
                f"count; rerun the same command to continue the study") from None
        except (NonFiniteLoss, torch.cuda.OutOfMemoryError) as exc:
            self._fail(trial, first_line(exc))
        except ImgclsError as exc:  # the setup, not the trial: stop, and let a rerun redo it
            trial.set_user_attr(UNCOUNTED, "error")
            trial.set_user_attr(ERROR, first_line(exc))
            raise
        trial.set_user_attr(BEST_EPOCH, result.best_epoch)
        if pruning.pruned_after is not None:
            raise self.optuna.TrialPruned(result.stop_reason or "pruned")
        assert result.best_metric is not None  # PruneOnEpoch refuses a run without validation
        return float(result.best_metric)

    @staticmethod
    def _fail(trial: Any, reason: str) -> NoReturn:
        trial.set_user_attr(ERROR, reason)
        raise _TrialFailed(reason)

    def after_trial(self, _study: Any, trial: Any) -> None:
        if trial.user_attrs.get(UNCOUNTED) == "surplus":
            return
        (row,) = trial_rows([trial])
        took = f", {row.seconds:.1f}s" if row.seconds is not None else ""
        if row.state == "complete":
            at = trial.user_attrs.get(BEST_EPOCH)
            echo(f"trial {row.number} complete: {self.monitor.name} {row.value:.4f} at epoch "
                 f"{at} of {row.epochs}{took}")
        elif row.state == "pruned":
            echo(f"trial {row.number} pruned after epoch {row.epochs}: {self.monitor.name} "
                 f"{row.value:.4f}{took}")
        else:
            echo(f"trial {row.number} failed{took}: {row.note}")
        self.write_files()  # after every trial: the folder is always current

    def write_files(self) -> tuple[list[TrialRow], TrialRow | None]:
        trials = self.study.get_trials(deepcopy=False)
        rows = trial_rows(trials)
        write_csv(rows, self.monitor.name, self.exp / "trials.csv")
        try:
            best_trial = self.study.best_trial
        except ValueError:  # no trial complete yet
            return rows, None
        best = next(r for r in rows if r.number == best_trial.number)
        write_best_recipe(self.exp / "best.yaml", self.base, best, self.monitor.name,
                          self.study.study_name, best_trial.user_attrs.get(BEST_EPOCH))
        return rows, best


def _params(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


@contextlib.contextmanager
def _console_to(path: Path) -> Iterator[None]:
    """A trial's console output (its epochs, warnings) goes to its own file, not the screen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as handle, \
            contextlib.redirect_stderr(handle):
        yield
