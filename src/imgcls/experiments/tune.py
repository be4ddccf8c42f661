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

A worker holds its trial's run-folder lock (:class:`imgcls.runs.folder.RunLock`) for the
whole trial, so a trial still ``running`` in the study whose lock is free lost its process (a
SIGKILL, a machine gone): the next command resumes it from its ``last.pt`` and tells the study
its outcome, or, when there is nothing to resume, marks it ``lost`` (not counted) so that a
replacement runs.

    result = tune(build_config(overrides={"data.source": "digits"}), "space.yaml", trials=20)
    print(result.best_yaml)
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import torch

from imgcls import api
from imgcls.config import Config, build_config
from imgcls.engine.loop import NonFiniteLoss
from imgcls.engine.setup import with_data_monitor
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
from imgcls.metric_table import Monitor, get_monitor
from imgcls.models.user import CodeConsent
from imgcls.runs.lock import LOCK_FILE, RunLock, in_use
from imgcls.runs.record import CheckpointRecord
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
    base = with_data_monitor(base)  # the objective: what every trial watches
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
        self.recover()
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
        run_dir.mkdir(parents=True, exist_ok=True)
        # held before the study names the folder: a named folder with a free lock is a lost trial
        with RunLock.acquire(run_dir):
            trial.set_user_attr(RUN_DIR, str(run_dir.resolve()))  # workers may run elsewhere
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            echo(f"trial {trial.number}: {_params(values)} -> {run_dir}")
            self.ran += 1
            try:
                cfg = build_config(self.base, {**values, "log.output": str(self.exp),
                                               "log.name": run_dir.name})
            except ImgclsError as exc:  # a pairing the config refuses (adam with nesterov)
                self._fail(trial, str(exc))
            return self._train(trial, lambda callbacks: api.train(cfg, callbacks=callbacks),
                               run_dir)

    def _train(self, trial: Any, train: Any, run_dir: Path) -> float:
        """Train (or continue) ``trial``'s run with the pruning callback: its best metric, or
        the exception that tells the study how it ended."""
        pruning = PruneOnEpoch(trial)
        try:
            with _console_to(run_dir / "console.log"):
                result = train([pruning, *self.callbacks])
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

    # ---------------------------------------------------------------- lost trials

    def recover(self) -> None:
        """Resume every trial whose worker is gone (see the module docstring)."""
        running = self.study.get_trials(deepcopy=False,
                                        states=(self.optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            if UNCOUNTED in frozen.user_attrs or not self._lost(frozen):
                continue
            trial = self.optuna.trial.Trial(self.study, frozen._trial_id)
            run_dir = Path(frozen.user_attrs.get(RUN_DIR, ""))
            if RUN_DIR not in frozen.user_attrs or not run_dir.is_dir():
                self._lose(trial, "its worker stopped before its run began")
                continue
            try:
                lock = RunLock.acquire(run_dir)
            except ImgclsError:  # another worker took it over first
                continue
            with lock:
                self._resume(trial, run_dir)

    @staticmethod
    def _lost(frozen: Any, grace_s: float = 60.0) -> bool:
        """A running trial whose run folder nobody holds. Where its folder cannot be seen (a
        worker on another machine's disk) only a worker of this machine that is gone tells;
        one not named yet counts as lost once its worker had time to name it."""
        host, _, pid = str(frozen.user_attrs.get("worker", "")).rpartition(":")
        here_and_gone = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
        if RUN_DIR not in frozen.user_attrs:
            started = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
            return here_and_gone or time.time() - started > grace_s
        run_dir = Path(frozen.user_attrs[RUN_DIR])
        if not (run_dir / LOCK_FILE).is_file():
            return here_and_gone
        return in_use(run_dir) is None

    def _resume(self, trial: Any, run_dir: Path) -> None:
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file() and not (run_dir / "config.yaml").is_file():
            self._lose(trial, "its worker stopped before its run began")
            return
        state = self.optuna.trial.TrialState
        finished = _finished_value(last)
        if finished is not None:  # trained to its end, killed before the study was told
            echo(f"trial {trial.number}: its worker stopped after its last epoch; recorded")
            self.study.tell(trial, finished)
        else:
            echo(f"trial {trial.number}: its worker stopped; continuing it in {run_dir}")
            self.ran += 1
            code = CodeConsent.of_config(self.base.model.name)  # the code this command names
            try:
                value = self._train(trial, lambda callbacks: api.train(
                    resume=run_dir, callbacks=callbacks, code=code), run_dir)
            except self.optuna.TrialPruned:
                self.study.tell(trial, state=state.PRUNED)
            except _TrialFailed:
                self.study.tell(trial, state=state.FAIL)
            except TuneInterrupted:
                self.study.tell(trial, state=state.FAIL)
                raise
            except ImgclsError as exc:  # its run cannot be continued: a replacement runs
                self._lose(trial, f"cannot be continued: {first_line(exc)}")
                return
            else:
                self.study.tell(trial, value)
        self.after_trial(self.study, next(t for t in self.study.get_trials(deepcopy=False)
                                          if t.number == trial.number))

    def _lose(self, trial: Any, reason: str) -> None:
        """A trial that cannot be resumed: failed and not counted, so a replacement runs."""
        trial.set_user_attr(UNCOUNTED, "lost")
        trial.set_user_attr(ERROR, reason)
        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        echo(f"trial {trial.number} lost: {reason}; a new trial takes its place")

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _finished_value(last: Path) -> float | None:
    """The best metric of a run whose ``last.pt`` holds its last epoch (None otherwise)."""
    if not last.is_file():
        return None
    try:
        record = CheckpointRecord.load(last)
    except ImgclsError:
        return None
    epochs = build_config(record.config).train.epochs
    done = record.epoch is not None and record.epoch >= epochs and record.progress is None
    return float(record.best_metric) if done and record.best_metric is not None else None


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
