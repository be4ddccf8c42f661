"""`imgcls export` (ONNX, TorchScript) and `convert` (the tutorials' .pth files to checkpoints)."""

from __future__ import annotations

import argparse
from typing import Any

from imgcls.cli.options import add_code_options, add_trust_pickle, code_consent


def add_export(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript, verified against eager",
        description="Writes the model file and a JSON sidecar (classes, input size, mean, std), "
        "then runs the file (ONNX Runtime or torch.jit) and fails if it differs from the eager "
        "model by more than 1e-4.",
    )
    export.add_argument("checkpoint")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--output", help="output file (default: beside the checkpoint)")
    export.add_argument("--include-preprocess", action="store_true",
                        help="take uint8 NCHW images; resizing and normalisation inside")
    add_trust_pickle(export)
    add_code_options(export)
    export.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from imgcls.deploy.export import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, fmt=args.format, output=args.output,
        include_preprocess=args.include_preprocess, trust_pickle=args.trust_pickle,
        code=code_consent(args),
    )
    print(report.describe())
    return 0


def add_convert(commands: Any) -> None:
    convert = commands.add_parser(
        "convert", help="turn an old state_dict or torch.save(model) file into a checkpoint",
        description="Converts a plain state_dict file, or (with --trust-pickle) a whole-model "
        "pickle as the tutorials save them, into a safe imgcls checkpoint.",
    )
    convert.add_argument("source", help="the old .pth/.pt/.pkl file")
    convert.add_argument("--output", help="new checkpoint (default: SOURCE with .imgcls.pt)")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="unpickle a whole model (runs code from the file!)")
    convert.add_argument("--model", help="model name, when it cannot be recognised")
    convert.add_argument("--classes", help="comma-separated class names, in label order")
    convert.add_argument("--num-classes", type=int, help="class count (names become 0..N-1)")
    convert.add_argument("--normalize", default="none",
                         choices=["none", "half", "imagenet", "cifar10", "cifar100"],
                         help="the normalisation the model was trained with (default none)")
    convert.add_argument("--input-size", metavar="S",
                         help="input size: S pixels, or HxW (default: the model's)")
    convert.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from imgcls.config.sizes import parse_size
    from imgcls.deploy.legacy import convert

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out = convert(
        args.source, args.output, trust_pickle=args.trust_pickle, model=args.model,
        classes=classes, num_classes=args.num_classes, normalize=args.normalize,
        input_size=None if args.input_size is None else parse_size(args.input_size),
    )
    print(f"wrote {out}")
    return 0
