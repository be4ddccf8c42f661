"""The options shared by `train` and the commands that take its options (lr-find, cv, repeat,
tune): frequent settings as flags, any config key as KEY=VALUE, folded into one override dict."""

from __future__ import annotations

import argparse
from typing import Any

from imgcls import recipes
from imgcls.config import KEYS, flatten, load_yaml, parse_override, type_name

# Frequent settings get flags; each sets one config key, with the key's type and help.
TRAIN_FLAGS: dict[str, str] = {
    "data": "data.source", "model": "model.name", "epochs": "train.epochs",
    "batch_size": "loader.batch_size", "lr": "optim.lr", "device": "train.device",
    "output": "log.output", "name": "log.name", "seed": "train.seed",
}


def _flag_type(key: str) -> type:
    return {"int": int, "float": float}.get(type_name(KEYS[key].annotation), str)


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
    for flag, key in TRAIN_FLAGS.items():
        if flag in skip:
            continue
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=_flag_type(key),
                            help=f"{KEYS[key].help.replace('`', '')} [{key}]")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any config key")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.config:
        path = recipes.find(args.config)  # a file, else a bundled recipe's name
        overrides.update(flatten(load_yaml(path), where=f" file {path}"))
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides
