"""`imgcls train` (also under torchrun, or re-launched through it by --nproc) and `lr-find`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from imgcls.cli.options import add_code_options, add_train_options, code_consent, train_overrides
from imgcls.config import build_config, describe_keys, help_keys
from imgcls.errors import ImgclsError

TRAIN_EPILOG = """\
examples:
  imgcls train --data digits --epochs 10         # bundled digits: runs anywhere, no download
  imgcls train                                   # CIFAR-10 with simple_v3
  imgcls train --data PATH --model simple_v3 --epochs 30 --batch-size 128 --lr 0.05
  imgcls train --config simple_v3_seed optim.momentum=0.9 data.val_fraction=0.1
  imgcls train --config fast_small --print-config   # the resolved config as YAML; no run
  imgcls train --resume runs/NAME                # continue at the next epoch
  imgcls train --data PATH --dry-run             # check data, model and one batch; no run
  imgcls train --nproc 2 --data PATH             # 2 processes on this machine (torchrun)
  torchrun --nproc_per_node 4 -m imgcls train --config C.yaml   # the same, launched by hand

Every config key can be set as KEY=VALUE (values are read as YAML: 0.1, true, [0, 2, 3, 4]).
Precedence: defaults < --config file < flags < KEY=VALUE. The keys and their defaults
(`imgcls train --help-keys`: each with its type, range and what it does):
"""


class _HelpKeys(argparse.Action):
    """``--help-keys``: like ``--help``, print and exit before the other arguments are checked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(help_keys())
        parser.exit()


def add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train a model (checkpoints, metrics.jsonl, TensorBoard)",
        description="Train an image classifier into runs/NAME.",
        epilog=TRAIN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--help-keys", action=_HelpKeys,
                       help="list every config key with its type, default and help, and exit")
    train.add_argument("--resume", metavar="RUN", help="run folder (or checkpoint) to continue")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train with N processes on this machine: re-launches itself "
                       "through torchrun (DistributedDataParallel)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config as YAML (what the run would use) and "
                       "exit: no data read, nothing written")
    train.add_argument("--dry-run", action="store_true",
                       help="check everything the run needs (config, data, model, one batch "
                       "through the model; with --resume, the run) and print what would run; "
                       "writes nothing")
    add_code_options(train)  # --resume of a run of your own model class
    add_train_options(train)
    train.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from imgcls import api

    overrides = train_overrides(args)
    code = code_consent(args)
    if (args.model_code or args.trust_code) and not args.resume:
        raise ImgclsError("--model-code and --trust-code allow the code of a run to --resume; "
                          "a new run names its model with --model FILE.py:CLASS")
    if args.print_config:  # as LightningCLI's --print_config: show, touch no data, write nothing
        import yaml

        cfg, _ = api.train_config(resume=args.resume, overrides=overrides, code=code)
        print(yaml.safe_dump(cfg.to_saved(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        print("\n".join(api.dry_run(resume=args.resume, overrides=overrides, code=code)))
        return 0
    if args.resume:
        api.train(resume=args.resume, overrides=overrides, code=code)
    else:
        api.train(build_config(overrides=overrides))
    return 0


def add_lr_find(commands: Any) -> None:
    lr_find = commands.add_parser(
        "lr-find", help="LR range test: sweep the learning rate, plot the loss, suggest an lr",
        description="Trains the run's model for --steps batches while the learning rate grows "
        "exponentially from --start-lr to --end-lr, then writes lr_find.csv and lr_find.png to "
        "--output and prints a suggested lr: where the smoothed loss falls fastest, before its "
        "minimum. Takes the same options as `imgcls train`; writes no run folder.",
    )
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="default 1e-7")
    lr_find.add_argument("--end-lr", type=float, default=10.0, help="default 10")
    lr_find.add_argument("--steps", type=int, default=100, help="sweep steps (default 100)")
    lr_find.add_argument("--output", dest="sweep_output", default=".",
                         help="folder for lr_find.csv and lr_find.png (default: here)")
    add_train_options(lr_find, skip=("output", "name"))  # it makes no run folder
    lr_find.set_defaults(run=_run_lr_find)


def _run_lr_find(args: argparse.Namespace) -> int:
    from imgcls import api

    result = api.lr_find(
        build_config(overrides=train_overrides(args)), output=args.sweep_output,
        start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
    )
    stopped = " (stopped early: the loss diverged)" if result.stopped_early else ""
    print(f"swept {result.steps} steps{stopped}; curve: {result.png} and {result.csv}")
    if result.suggestion is None:
        print(f"no suggestion: {result.how}")
        return 0
    print(f"suggested lr: {result.suggestion:.3g} ({result.how.rstrip('.')})")
    print(f"train with it: imgcls train ... --lr {result.suggestion:.3g}")
    return 0


def without_nproc(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``imgcls train --nproc N ...`` -> ``torchrun --standalone --nproc_per_node N -m imgcls
    train ...``; torchrun's exit code is ours."""
    if nproc < 1:
        raise ImgclsError(f"--nproc must be >= 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ImgclsError("--nproc inside a torchrun job: launch either with torchrun or "
                          "with --nproc, not both")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "imgcls", *without_nproc(argv)]
    print(f"imgcls: launching {nproc} processes: {' '.join(command)}", file=sys.stderr,
          flush=True)
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:  # torchrun passes the signal on to the workers and exits
        return 130
