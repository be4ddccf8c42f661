"""Run an experiment: each fold or seed not finished yet is an ordinary training run in
``EXPERIMENT/<fold-I|seed-S>``, started, or continued from its last checkpoint by the normal
``--resume``; then the summary. ``only`` runs one of them (a job of a cluster array), and
``summarize_only`` trains nothing.

>>> from imgcls.config import build_config
>>> cross_validate(build_config(overrides={"data.source": "digits"}), folds=5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from imgcls import api
from imgcls.config import Config, flatten
from imgcls.engine.trainer import Callback, Trainer
from imgcls.experiments.plan import (
    INFRA_KEYS,
    KINDS,
    Experiment,
    Member,
    check_same,
    is_experiment,
    load_experiment,
    open_or_create,
    plan_experiment,
)
from imgcls.experiments.status import FINISHED, MISSING, run_status
from imgcls.experiments.summary import summarize
from imgcls.models.user import CodeConsent
from imgcls.tracking import echo


def cross_validate(cfg: Config, folds: int, *, only: int | None = None) -> dict[str, Any]:
    """``imgcls cv``: stratified ``folds``-fold cross-validation of ``cfg``; returns the
    summary (``summary["stats"]["best_val_acc"]["mean"]`` ...)."""
    return run_experiment("cv", folds, cfg, only=only)


def repeat_seeds(cfg: Config, seeds: int, *, only: int | None = None) -> dict[str, Any]:
    """``imgcls repeat``: ``cfg`` trained with seeds ``train.seed`` .. ``train.seed + seeds -
    1`` on the same split; returns the summary."""
    return run_experiment("repeat", seeds, cfg, only=only)


def run_experiment(kind: str, count: int, cfg: Config, *, only: int | None = None,
                   summarize_only: bool = False, command: str = "") -> dict[str, Any]:
    """Train what is not finished (all runs, or run ``only``), then summarise what is."""
    cfg, _ = api.train_config(cfg)  # what the source implies, as `imgcls train` would save it
    planned = plan_experiment(kind, count, cfg, command)
    if summarize_only:
        experiment = load_experiment(planned.path)
        check_same(experiment, planned)
        return summarize(experiment)
    # An existing experiment is checked now; a new one is written when its first run starts.
    experiment = open_or_create(planned) if is_experiment(planned.path) else planned
    members = experiment.members if only is None else [experiment.member(only)]
    for member in members:
        if not _train_member(experiment, member, cfg):
            break  # stopped by train.max_minutes: the time is up for the others as well
    return summarize(experiment)


def _train_member(experiment: Experiment, member: Member, cfg: Config) -> bool:
    """Train one run to its end; False when it stopped before (a time limit)."""
    status = run_status(experiment, member)
    what = f"{experiment.kind} {member.name} ({member.index + 1} of {experiment.count})"
    if status.state == FINISHED:
        echo(f"{what}: finished, skipped")
        return True
    run_dir, record = experiment.run_dir(member), [_RecordExperiment(experiment)]
    try:
        if status.state == MISSING:
            echo(f"{what}: training into {run_dir}")
            api.train(experiment.member_config(cfg, member), callbacks=record)
        else:  # its own saved config, with this command's devices and paths
            echo(f"{what}: {status.next_step()}")
            api.train(resume=run_dir, overrides=_infra(cfg), callbacks=record,
                      code=CodeConsent.of_config(cfg.model.name))  # the code this command names
    except api.Interrupted:
        echo(f"rerun the same `imgcls {experiment.kind}` command to continue with the "
             f"{KINDS[experiment.kind]}s not finished")
        raise
    if run_status(experiment, member).state != FINISHED:
        echo(f"{what} stopped before its last epoch; rerun the command to continue it")
        return False
    return True


class _RecordExperiment(Callback):
    """Writes experiment.json as a run starts: after its options and data have been checked,
    so that a refused command leaves no experiment folder behind."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment

    def on_fit_start(self, trainer: Trainer) -> None:
        open_or_create(self.experiment)


def _infra(cfg: Config) -> dict[str, Any]:
    """This command's infrastructure keys (device, workers, time limit), but not where the
    run's folder is: a resumed run keeps its own."""
    return {k: v for k, v in flatten(cfg.to_dict()).items()
            if k in INFRA_KEYS and k not in ("log.output", "log.name")}
