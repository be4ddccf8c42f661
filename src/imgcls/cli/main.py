"""The ``imgcls`` command: the subcommands' parsers, the process-wide set-up (signals,
allocator), and one exit code per outcome. Each command lives in its own module; none holds
training logic (that is imgcls.api and below)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from imgcls import __version__
from imgcls.cli import catalog, evaluate, experiments, explain, report, serve, ship, train
from imgcls.cli.messages import interrupted_message, one_line, peer_lost, raise_on_sigterm
from imgcls.cli.options import TRAIN_LIKE
from imgcls.engine.signals import TERMINATED, requeue_slurm_job
from imgcls.errors import ImgclsError
from imgcls.startup import settle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcls",
        description="Train, evaluate and ship image classifiers with PyTorch.",
        epilog="Run `imgcls COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each adds its parser(s), with set_defaults(run=...): the function that runs the command.
    for add in (train.add_train, train.add_lr_find, evaluate.add_evaluate, evaluate.add_predict,
                explain.add_explain, serve.add_serve, ship.add_export, ship.add_convert,
                catalog.add_models, catalog.add_datasets, catalog.add_check_data,
                catalog.add_recipes, report.add_report, report.add_card,
                experiments.add_cv, experiments.add_repeat, experiments.add_tune):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE pairs may stand anywhere among the flags, which argparse's positional
    # arguments do not allow: collect the leftovers here.
    args, extra = parser.parse_known_args(argv)
    leftovers = [x for x in extra
                 if x.startswith("-") or args.command not in TRAIN_LIKE]
    if leftovers:
        parser.error(f"unrecognized arguments: {' '.join(leftovers)}")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in TRAIN_LIKE:
        args.overrides = [*args.overrides, *extra]
    if (args.command == "train" and args.nproc is not None and args.nproc > 1
            and not args.print_config and not args.dry_run):  # checking needs no processes
        try:
            settle()  # start-up ends: Ctrl-C is the KeyboardInterrupt launch_torchrun awaits
            return train.launch_torchrun(args.nproc, sys.argv[1:] if argv is None else argv)
        except ImgclsError as exc:
            print(f"imgcls: error: {one_line(exc)}", file=sys.stderr)
            return 2
    if args.command in TRAIN_LIKE and os.environ.get("IMGCLS_MALLOPT", "1") != "0":
        from imgcls.runtime import keep_freed_memory

        keep_freed_memory()  # a process that trains: reuse freed memory, no page faults per step
    # Under torchrun each rank reports for itself: say which one.
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    previous = None
    try:
        # Start-up ends here, inside the try: until now a signal ended the process with one line
        # (imgcls.startup); from now on it is a KeyboardInterrupt, answered below.
        previous = settle(raise_on_sigterm if args.command in ("train", "cv", "repeat", "tune")
                          else None)
        return args.run(args)
    except ImgclsError as exc:
        print(f"imgcls: error: {rank}{one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # Another rank died (its own error is printed by that rank) and a collective here lost
        # its peer: one line instead of a traceback that points at the wrong process.
        if rank and peer_lost(exc):
            print(f"imgcls: error: {rank}stopped: another rank failed ({one_line(exc)})",
                  file=sys.stderr)
            return 1
        raise
    except BrokenPipeError:  # `imgcls evaluate ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        print(f"imgcls: {interrupted_message(exc)}", file=sys.stderr, flush=True)
        if getattr(exc, "requeue", False):  # SIGUSR1 under SLURM: the job runs again
            print(f"imgcls: {requeue_slurm_job()}", file=sys.stderr, flush=True)
            return 0
        return 143 if TERMINATED in str(exc) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
