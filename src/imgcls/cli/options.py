"""The options shared by `train` and the commands that take its options (lr-find, cv, repeat,
tune): frequent settings as flags, any config key as KEY=VALUE, folded into one override dict."""

from __future__ import annotations

import argparse
from typing import Any

from imgcls import recipes
from imgcls.config import flatten, load_yaml, parse_override

# Frequent settings get flags; each maps onto one config key.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "data": ("data.source", str,
             "digits (bundled), cifar10, cifar100, a folder of class folders, or a list file"),
    "model": ("model.name", str, "model name (see `imgcls models`)"),
    "epochs": ("train.epochs", int, "number of epochs"),
    "batch_size": ("loader.batch_size", int, "training batch size"),
    "lr": ("optim.lr", float, "learning rate"),
    "device": ("train.device", str, "auto, cpu, cuda, cuda:N or mps"),
    "output": ("log.output", str, "folder that holds run folders (default runs)"),
    "name": ("log.name", str, "run folder name (default <model>-<timestamp>)"),
    "seed": ("train.seed", int, "seed for every random number generator"),
}


# The commands that take train's options, KEY=VALUE pairs among them.
TRAIN_LIKE = ("train", "lr-find", "cv", "repeat", "tune")


def add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-pickle", action="store_true",
                        help="accept an old torch.save(model) file (runs its code!)")


def add_code_options(parser: argparse.ArgumentParser) -> None:
    """A checkpoint of your own model class imports its code only when you name it here."""
    parser.add_argument("--model-code", metavar="FILE.py:CLASS",
                        help="the code of a checkpoint's own model class (FILE.py:CLASS or "
                        "MODULE:CLASS), checked against the class and file hash it records")
    parser.add_argument("--trust-code", action="store_true",
                        help="import whatever model code the checkpoint names (runs it!)")


def code_consent(args: argparse.Namespace) -> Any:
    """The :class:`imgcls.models.user.CodeConsent` of the command line."""
    from imgcls.models.user import CodeConsent  # imports torch: not while parsing

    return CodeConsent(model_code=args.model_code, trust_code=args.trust_code)


def add_train_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The options of `train`, shared by `lr-find` (the same run, swept instead of trained)."""
    parser.add_argument("--config", help="YAML recipe: a file, or a bundled recipe's name "
                        "(see `imgcls recipes`); a file wins")
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        if flag in skip:
            continue
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind,
                            help=f"{text} [{key}]")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any config key")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.config:
        path = recipes.find(args.config)  # a file, else a bundled recipe's name
        overrides.update(flatten(load_yaml(path), where=f" file {path}"))
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides
