"""Many runs of one recipe: `imgcls cv` (k folds), `repeat` (N seeds) and `tune` (Optuna)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from imgcls.cli.options import TRAIN_FLAGS, add_train_options, train_overrides
from imgcls.engine.signals import TERMINATED

EXPERIMENT_EPILOG = """\
Prints each {what}'s metrics and the mean, std and 95% CI of its best and final train.monitor
(also in EXPERIMENT/summary.json); exit code 1 while some {what}s are not finished.
Each {what} is an ordinary run in EXPERIMENT/{folder}.
EXPERIMENT is --output/--name, by default runs/{kind}-<model>-<digest of the options>: rerunning
the same command continues it (finished {what}s are skipped; one cut off mid-run resumes from
its last.pt).
On a cluster, one job per {what} (SLURM: --array=0-4), then the summary:
  imgcls {kind} {flag} 5 [options] --only $SLURM_ARRAY_TASK_ID
  imgcls {kind} {flag} 5 [options] --summarize
Takes the options of `imgcls train` (see `imgcls train --help`).
"""


def _add_experiment(commands: Any, kind: str, flag: str, what: str, text: str) -> None:
    """`cv` and `repeat`: the options of `train`, how many runs, and one or none of them."""
    folder = "fold-I (I = 0 .. K-1)" if kind == "cv" else "seed-S (S = train.seed + I)"
    parser = commands.add_parser(
        kind, help=text, description=f"{text[0].upper()}{text[1:]}.",
        epilog=EXPERIMENT_EPILOG.format(kind=kind, flag=flag, what=what, folder=folder),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(flag, dest="count", type=int, required=True, metavar="N",
                        help=f"number of {what}s")
    parser.add_argument("--only", type=int, metavar="I",
                        help=f"train {what} I only (0-based), e.g. $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: summarise the finished runs and name the others")
    add_train_options(parser)
    parser.set_defaults(run=_run_experiment)


def add_cv(commands: Any) -> None:
    _add_experiment(commands, "cv", "--folds", "fold",
                    "stratified k-fold cross-validation over the training data")


def add_repeat(commands: Any) -> None:
    _add_experiment(commands, "repeat", "--seeds", "seed",
                    "the same recipe trained with N seeds (train.seed, +1, ...) on one split")


def _run_experiment(args: argparse.Namespace) -> int:
    """`cv` and `repeat`: the runs not finished, then the summary; exit 1 while some are not
    finished (a job after a cluster array can tell)."""
    from imgcls import api
    from imgcls.experiments.runner import run_experiment
    from imgcls.experiments.summary import format_summary

    cfg, _ = api.train_config(overrides=train_overrides(args))
    summary = run_experiment(args.command, args.count, cfg, only=args.only,
                             summarize_only=args.summarize, command=_experiment_command(args))
    print(format_summary(summary))
    if args.only is not None or not summary["not_finished"]:
        return 0
    print(f"imgcls: {len(summary['not_finished'])} of {summary['count']} not finished: "
          f"{', '.join(summary['not_finished'])}", file=sys.stderr)
    return 1


def _experiment_command(args: argparse.Namespace) -> str:
    """The command that reruns the whole experiment (without --only and --summarize)."""
    words = ["imgcls", args.command, "--folds" if args.command == "cv" else "--seeds",
             str(args.count)]
    if args.config:
        words += ["--config", args.config]
    for flag in TRAIN_FLAGS:
        if getattr(args, flag, None) is not None:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(words + list(args.overrides))


def add_tune(commands: Any) -> None:
    tune = commands.add_parser(
        "tune", help="hyperparameter search with Optuna: trials, pruning, best recipe",
        description="Trains trials of the train options with values drawn from --space into "
        "OUTPUT/NAME/trial-NNNN, prunes hopeless ones on train.monitor after each epoch, and "
        "writes trials.csv and best.yaml (imgcls train --config best.yaml). The study is kept "
        "in OUTPUT/NAME/study.db (or --storage): rerunning continues it up to --trials in "
        "all, and several processes or machines can work on it at once.",
    )
    tune.add_argument("--space", required=True, metavar="SPACE.yaml",
                      help="config keys and their ranges, e.g. optim.lr: {log_uniform: [1e-3, 1]}")
    tune.add_argument("--trials", required=True, type=int, metavar="N",
                      help="trials in the study in all (not per command)")
    tune.add_argument("--name", dest="experiment", metavar="NAME",
                      help="experiment folder under --output (default tune-<space file name>)")
    tune.add_argument("--storage", metavar="URL", help="an Optuna database URL, e.g. "
                      "postgresql://user:pw@host/db (default sqlite:///OUTPUT/NAME/study.db)")
    tune.add_argument("--study", metavar="NAME", help="study name in the database "
                      "(default: the experiment folder's name)")
    tune.add_argument("--pruner", default="median", choices=["median", "threshold", "none"],
                      help="median: stop a trial below the median of finished ones at the same "
                      "epoch (after 5 finished); threshold: worse than --prune-threshold")
    tune.add_argument("--prune-threshold", type=float, metavar="V",
                      help="--pruner threshold: stop a trial whose train.monitor is worse than V")
    tune.add_argument("--prune-after", type=int, default=2, metavar="E",
                      help="judge trials from the end of epoch E on (default 2)")
    add_train_options(tune, skip=("name",))  # trials are named trial-NNNN
    tune.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from imgcls.experiments.tune_study import require_optuna

    require_optuna()  # before the slow imports: a missing extra is one line at once
    from imgcls import api
    from imgcls.experiments.tune import tune

    cfg, _ = api.train_config(overrides=train_overrides(args))
    try:
        result = tune(cfg, args.space, args.trials, name=args.experiment, storage=args.storage,
                      study_name=args.study, pruner=args.pruner,
                      prune_threshold=args.prune_threshold, prune_after=args.prune_after)
    except KeyboardInterrupt as exc:  # not train's message: a study continues by rerunning
        reason = str(exc) or "interrupted"
        if "rerun" not in reason:
            reason += ": between trials; rerun the same command to continue the study"
        print(f"imgcls: {reason}", file=sys.stderr, flush=True)
        return 143 if TERMINATED in reason else 130
    print(result.table)
    print(f"trials: {result.csv}  (study {result.study!r} in {result.storage})")
    if result.best is None:
        print("best: no trial has completed yet, so no best.yaml")
    else:
        print(f"best: trial {result.best.number}, {result.metric} {result.best.value:.4f}; "
              f"train it: imgcls train --config {shlex.quote(str(result.best_yaml))}")
    return 0
