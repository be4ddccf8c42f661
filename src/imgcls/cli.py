"""The ``imgcls`` command: argparse subcommands -> config -> api. No training logic lives here."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from imgcls import __version__, recipes
from imgcls.config import build_config, describe_keys, flatten, load_yaml, parse_override
from imgcls.engine.signals import TERMINATED, requeue_slurm_job
from imgcls.errors import ImgclsError

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

TRAIN_EPILOG = """\
examples:
  imgcls train --data digits --epochs 10         # bundled digits: runs anywhere, no download
  imgcls train                                   # CIFAR-10 with simple_v3
  imgcls train --data PATH --model simple_v3 --epochs 30 --batch-size 128 --lr 0.05
  imgcls train --config simple_v3_seed optim.momentum=0.9 data.val_fraction=0.1
  imgcls train --config fast_small --print-config   # the resolved config as YAML; no run
  imgcls train --resume runs/NAME                # continue at the next epoch
  imgcls train --nproc 2 --data PATH             # 2 processes on this machine (torchrun)
  torchrun --nproc_per_node 4 -m imgcls train --config C.yaml   # the same, launched by hand

Every config key can be set as KEY=VALUE (values are read as YAML: 0.1, true, [0, 2, 3, 4]).
Precedence: defaults < --config file < flags < KEY=VALUE. The keys and their defaults:
"""


def _add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-pickle", action="store_true",
                        help="accept an old torch.save(model) file (runs its code!)")


def _add_train_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The options of `train`, shared by `lr-find` (the same run, swept instead of trained)."""
    parser.add_argument("--config", help="YAML recipe: a file, or a bundled recipe's name "
                        "(see `imgcls recipes`); a file wins")
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        if flag in skip:
            continue
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind,
                            help=f"{text} [{key}]")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any config key")


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train a model (checkpoints, metrics.jsonl, TensorBoard)",
        description="Train an image classifier into runs/NAME.",
        epilog=TRAIN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--resume", metavar="RUN", help="run folder (or checkpoint) to continue")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train with N processes on this machine: re-launches itself "
                       "through torchrun (DistributedDataParallel)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config as YAML (what the run would use) and "
                       "exit: no data read, nothing written")
    _add_train_options(train)


def _add_lr_find(commands: Any) -> None:
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
    _add_train_options(lr_find, skip=("output", "name"))  # it makes no run folder


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint: loss, top-1/top-5, per-class precision/recall/"
        "F1, macro-F1, balanced accuracy, confusion matrix",
        description="Evaluate a checkpoint; the report goes to RUN/eval/ unless --output.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint, e.g. runs/NAME/checkpoints/best.pt; "
                          "or an experiment folder (`imgcls cv`, `repeat`): each run's best.pt "
                          "and their ensemble")
    evaluate.add_argument("--data", help="data source (default: the one it was trained on)")
    evaluate.add_argument("--split", default="val", choices=["val", "test"],
                          help="val: the validation images of training (split.json); test")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--output", help="folder for the report")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    evaluate.add_argument("--batch-size", type=int, help="evaluation batch size")
    evaluate.add_argument("--tta", choices=["none", "flip", "flip_translate"],
                          help="test-time augmentation (default: the run's train.tta)")
    _add_trust_pickle(evaluate)


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser(
        "predict", help="classify images, folders or list files with a checkpoint",
        description="Top-k classes and probabilities for each image. Exit code 1 when some "
        "images could not be read (the others are still classified).",
    )
    predict.add_argument("checkpoint", help="a checkpoint, e.g. runs/NAME/checkpoints/best.pt")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively) or list files")
    predict.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--csv", metavar="FILE", help="also write the predictions as CSV")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    predict.add_argument("--tta", action="store_true",
                         help="add the horizontal flip (scored as evaluate's train.tta=flip)")
    _add_trust_pickle(predict)


def _add_export(commands: Any) -> None:
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
    _add_trust_pickle(export)


def _add_convert(commands: Any) -> None:
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
    convert.add_argument("--input-size", type=int, help="input size (default: the model's)")


def _add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="list the models, or summarise one: layers, shapes, parameters, FLOPs",
        description="Without NAME: every model with its input size and parameter count. With "
        "NAME: its layer tree (module paths, as model.freeze patterns use them) with each "
        "layer's output shape, parameters and FLOPs, then the totals.",
    )
    models.add_argument("name", nargs="?", help="a model to summarise (e.g. resnet18)")
    models.add_argument("--imgcls-only", action="store_true",
                        help="only imgcls's own models, not torchvision's")
    models.add_argument("--num-classes", type=int, default=10,
                        help="class count for the parameter counts (default 10)")
    models.add_argument("--input-size", type=int, metavar="S",
                        help="with NAME: image side in pixels (default: the model's)")
    models.add_argument("--in-channels", type=int, default=3, metavar="C",
                        help="with NAME: image channels, 1 or 3 (default 3)")
    models.add_argument("--depth", type=int, default=3, metavar="D",
                        help="with NAME: how deep the layer tree goes (default 3)")


def _add_datasets(commands: Any) -> None:
    datasets = commands.add_parser(
        "datasets", help="list the built-in data sets; write the digits as image files",
        description="Lists the data sets --data knows by name. `imgcls datasets digits --export "
        "DIR` writes the bundled digits as PNG files in class folders (DIR/7/test_0042.png).",
    )
    datasets.add_argument("name", nargs="?", choices=["digits"], help="data set to export")
    datasets.add_argument("--export", metavar="DIR", help="folder to write the images into")
    datasets.add_argument("--split", default="test", choices=["train", "test"],
                          help="which part to write (default test: the images training never "
                          "sees)")


def _add_check_data(commands: Any) -> None:
    check = commands.add_parser(
        "check-data", help="check a data folder or list file: class counts, sizes, unreadable "
        "files, duplicates, train/val/test leaks",
        description="Decodes every image of DATA (a folder of class folders, with or without "
        "train/ val/ test/ parts, or a .txt list file) and writes DIR/check.json and "
        "DIR/index.html: images per class and imbalance, sizes and colour modes, unreadable "
        "files, exact and near duplicates, and copies shared between the parts (leaks). Exit "
        "code 0 when the data is usable (findings are warnings), 2 on bad input.",
    )
    check.add_argument("data", metavar="DATA", help="folder of class folders, or a list file")
    check.add_argument("--output", metavar="DIR",
                       help="folder for check.json and index.html (default ./check-data-NAME)")
    check.add_argument("--near-threshold", type=int, default=3, metavar="BITS",
                       help="near-duplicates differ in at most this many of the 64 perceptual "
                       "hash bits (default 3)")


def _add_recipes(commands: Any) -> None:
    commands.add_parser(
        "recipes", help="list the bundled recipes: name, purpose, measured figure",
        description="The recipes shipped with imgcls; train one with `imgcls train --config "
        "NAME`, see what it resolves to with `imgcls train --config NAME --print-config`.",
    )


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="an HTML page of what a run's model does (or of several runs compared)",
        description="One run: RUN/report/index.html with training curves, confusion matrices, "
        "per-class scores, calibration, the most confidently wrong images and provenance, from "
        "best.pt (else last.pt). Several runs: their curves overlaid and their final/best "
        "metrics side by side. Self-contained pages; the numbers are in CSV/JSON beside them.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s)")
    report.add_argument("--split", default="val", choices=["val", "test"],
                        help="the split scored (one run only; default val)")
    report.add_argument("--data", help="data source (default: the one it was trained on)")
    report.add_argument("--output", help="folder for the page (default RUN_DIR/report, or "
                        "./report-compare for several runs)")
    report.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


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
    _add_train_options(parser)


def _add_cv(commands: Any) -> None:
    _add_experiment(commands, "cv", "--folds", "fold",
                    "stratified k-fold cross-validation over the training data")


def _add_repeat(commands: Any) -> None:
    _add_experiment(commands, "repeat", "--seeds", "seed",
                    "the same recipe trained with N seeds (train.seed, +1, ...) on one split")


def _add_tune(commands: Any) -> None:
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
    _add_train_options(tune, skip=("name",))  # trials are named trial-NNNN


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcls",
        description="Train, evaluate and ship image classifiers with PyTorch.",
        epilog="Run `imgcls COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_lr_find, _add_evaluate, _add_predict, _add_export,
                _add_convert, _add_models, _add_datasets, _add_check_data, _add_recipes,
                _add_report, _add_cv, _add_repeat, _add_tune):
        add(commands)
    return parser


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def _run_train(args: argparse.Namespace) -> int:
    from imgcls import api

    overrides = _train_overrides(args)
    if args.print_config:  # as LightningCLI's --print_config: show, touch no data, write nothing
        import yaml

        cfg, _ = api.train_config(resume=args.resume, overrides=overrides)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.resume:
        api.train(resume=args.resume, overrides=overrides)
    else:
        api.train(build_config(overrides=overrides))
    return 0


def _without_nproc(argv: Sequence[str]) -> list[str]:
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


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``imgcls train --nproc N ...`` -> ``torchrun --standalone --nproc_per_node N -m imgcls
    train ...``; torchrun's exit code is ours."""
    if nproc < 1:
        raise ImgclsError(f"--nproc must be >= 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ImgclsError("--nproc inside a torchrun job: launch either with torchrun or "
                          "with --nproc, not both")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", "imgcls", *_without_nproc(argv)]
    print(f"imgcls: launching {nproc} processes: {' '.join(command)}", file=sys.stderr,
          flush=True)
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:  # torchrun passes the signal on to the workers and exits
        return 130


def _run_evaluate(args: argparse.Namespace) -> int:
    from imgcls import api
    from imgcls.experiments.plan import is_experiment

    if is_experiment(args.checkpoint):
        return _run_evaluate_experiment(args)
    summary = api.evaluate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, output=args.output,
        device=args.device, batch_size=args.batch_size, trust_pickle=args.trust_pickle,
        tta=args.tta,
    )
    if args.json:
        print(api.dumps(summary))
        return 0
    print(f"{summary['split']}: top1 {summary['top1']:.4f}  top5 {summary['top5']:.4f}  "
          f"loss {summary['loss']:.4f}  macro_f1 {summary['macro_f1']:.4f}  balanced_acc "
          f"{summary['balanced_acc']:.4f}  n {summary['n']}")
    width = max(len("class"), *(len(name) for name in summary["per_class"]))
    print(f"  {'class':<{width}}  precision  recall      f1  support")
    for name, c in summary["per_class"].items():
        print(f"  {name:<{width}}  {c['precision']:>9.4f}  {c['recall']:>6.4f}  "
              f"{c['f1']:>6.4f}  {c['support']:>7}")
    print(f"report: {summary['output']}")
    return 0


def _run_lr_find(args: argparse.Namespace) -> int:
    from imgcls import api

    result = api.lr_find(
        build_config(overrides=_train_overrides(args)), output=args.sweep_output,
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


def _run_predict(args: argparse.Namespace) -> int:
    from imgcls import predict

    report = predict.predict(
        args.checkpoint, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
        device=args.device, tta=args.tta, trust_pickle=args.trust_pickle,
    )
    if args.csv:
        predict.write_csv(report, args.csv)
    print(predict.to_json(report) if args.json else predict.to_table(report))
    for result in report.results:
        if result.error is not None:
            print(f"imgcls: cannot read {result.path}: {result.error}", file=sys.stderr)
    return 1 if report.failed else 0


def _run_export(args: argparse.Namespace) -> int:
    from imgcls.export import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, fmt=args.format, output=args.output,
        include_preprocess=args.include_preprocess, trust_pickle=args.trust_pickle,
    )
    print(report.describe())
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from imgcls.legacy import convert

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out = convert(
        args.source, args.output, trust_pickle=args.trust_pickle, model=args.model,
        classes=classes, num_classes=args.num_classes, normalize=args.normalize,
        input_size=args.input_size,
    )
    print(f"wrote {out}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from imgcls.models import count_parameters, list_models

    if args.name is not None:
        return _run_model_summary(args)
    infos = list_models(include_torchvision=not args.imgcls_only)
    width = max(len(info.name) for info in infos)
    print(f"{'name':<{width}}  {'source':<11}  {'input':>5}  {'parameters':>12}")
    for info in infos:
        params = count_parameters(info.name, args.num_classes)
        print(f"{info.name:<{width}}  {info.source:<11}  {info.input_size:>5}  {params:>12,}")
    return 0


def _run_model_summary(args: argparse.Namespace) -> int:
    from imgcls.config import ModelConfig
    from imgcls.models import create_model, get_model_info
    from imgcls.models.summary import format_summary, summarize

    info = get_model_info(args.name)  # an unknown name: one line with close matches
    size = info.input_size if args.input_size is None else args.input_size
    if args.in_channels not in (1, 3):
        raise ImgclsError(f"--in-channels {args.in_channels}: expected 1 or 3")
    if args.depth < 0:
        raise ImgclsError(f"--depth {args.depth}: expected 0 (the model alone) or more")
    if info.fixed_size and size != info.input_size:
        raise ImgclsError(f"--input-size {size}: {args.name} takes {info.input_size} px inputs "
                          "only (its layer sizes are fixed)")
    if size < info.min_size:
        raise ImgclsError(f"--input-size {size}: {args.name} needs at least {info.min_size} px")
    model = create_model(ModelConfig(name=args.name, in_channels=args.in_channels),
                         args.num_classes)
    summary = summarize(model, (1, args.in_channels, size, size))
    print(f"{args.name}: {args.num_classes} classes, {args.in_channels}x{size}x{size} input")
    print(format_summary(summary, args.depth))
    return 0


BUILTIN_DATA = {
    "digits": "1,797 handwritten digits, 8x8 greyscale, 10 classes; bundled with scikit-learn, "
              "no download (test split: a fixed fifth)",
    "cifar10": "60,000 32x32 colour images, 10 classes; downloaded by torchvision (170 MB)",
    "cifar100": "60,000 32x32 colour images, 100 classes; downloaded by torchvision (170 MB)",
}


def _run_check_data(args: argparse.Namespace) -> int:
    from imgcls.datacheck import check_data, summary_lines

    result = check_data(args.data, output=args.output, near_threshold=args.near_threshold)
    print("\n".join(summary_lines(result)))
    return 0


def _run_datasets(args: argparse.Namespace) -> int:
    if args.export is None:
        if args.name is not None:
            raise ImgclsError(f"what to do with {args.name}? add --export DIR")
        for name, text in BUILTIN_DATA.items():
            print(f"{name:<9} {text}")
        print("or: a folder of class folders, or a .txt list file (see the README)")
        return 0
    if args.name is None:
        raise ImgclsError("--export needs the data set's name: imgcls datasets digits --export DIR")
    from pathlib import Path

    from imgcls.data.digits import export_images

    out = Path(args.export)
    try:
        count = export_images(args.split, out)
    except OSError as exc:
        raise ImgclsError(f"cannot write the images to {out}: {exc.strerror or exc}") from None
    print(f"wrote {count} {args.split} images of {args.name} to {out}/<class>/")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from imgcls.experiments.plan import is_experiment
    from imgcls.report.build import report_compare, report_run

    if len(args.runs) == 1 and is_experiment(args.runs[0]):
        if args.data is not None or args.split != "val":
            raise ImgclsError("--data and --split apply to one run's page; an experiment's page "
                              "shows what `imgcls evaluate EXPERIMENT --split S` wrote")
        from imgcls.report.experiment import report_experiment

        path = report_experiment(args.runs[0], output=args.output)
    elif len(args.runs) == 1:
        path = report_run(args.runs[0], split=args.split, data=args.data, output=args.output,
                          device=args.device)
    elif args.data is not None or args.split != "val":
        raise ImgclsError("--data and --split apply to one run's page; several runs are "
                          "compared on their metrics.jsonl")
    else:
        path = report_compare(args.runs, output=args.output or "report-compare")
    print(f"wrote {path}")
    return 0


def _run_experiment(args: argparse.Namespace) -> int:
    """`cv` and `repeat`: the runs not finished, then the summary; exit 1 while some are not
    finished (a job after a cluster array can tell)."""
    from imgcls import api
    from imgcls.experiments.runner import run_experiment
    from imgcls.experiments.summary import format_summary

    cfg, _ = api.train_config(overrides=_train_overrides(args))
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


def _run_tune(args: argparse.Namespace) -> int:
    from imgcls.experiments.tune_study import require_optuna

    require_optuna()  # before the slow imports: a missing extra is one line at once
    from imgcls import api
    from imgcls.experiments.tune import tune

    cfg, _ = api.train_config(overrides=_train_overrides(args))
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


def _run_evaluate_experiment(args: argparse.Namespace) -> int:
    import json

    from imgcls.experiments.evaluation import evaluate_experiment, format_evaluation

    if args.data is not None:
        raise ImgclsError("--data: an experiment's runs are evaluated on their own data source")
    result = evaluate_experiment(args.checkpoint, split=args.split, device=args.device,
                                 batch_size=args.batch_size, tta=args.tta, output=args.output)
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    found = recipes.list_recipes()
    width = max(len(r.name) for r in found)
    for r in found:
        print(f"{r.name:<{width}}  {r.purpose}")
        print(f"{'':<{width}}  measured: {r.measured}")
    print(f"train one: imgcls train --config NAME   (the files: {recipes.folder()})")
    return 0


def _raise_on_sigterm(_signum: int, _frame: Any) -> None:
    # SIGTERM (SLURM, Kubernetes, spot preemption) takes Ctrl-C's road: the run stops between
    # two statements, its files stay whole, and the message says what is saved.
    raise KeyboardInterrupt(TERMINATED)


def _interrupted_message(exc: BaseException) -> str:
    reason = str(exc) or "interrupted"
    run_dir, epoch = getattr(exc, "run_dir", None), getattr(exc, "epoch", None)
    if run_dir is None:
        return f"{reason} during start-up: nothing was saved"
    resume = f"`imgcls train --resume {shlex.quote(str(run_dir))}`"
    progress = getattr(exc, "progress", None)
    if epoch is None and progress is None:
        return (f"{reason} before the first epoch was saved: nothing to resume yet; {resume} "
                "starts the run over")
    last = run_dir / "checkpoints" / "last.pt"
    if progress is not None:
        saved = (f"epoch {epoch + 1} up to batch {progress.batches} of "
                 f"{getattr(exc, 'total_batches', 0) or '?'}")
    else:
        saved = f"epoch {epoch}"
    lost = " (the steps since then are lost)" if "again" in reason else ""
    return f"{reason}: {saved} is saved in {last}{lost}; continue with {resume}"


MAX_ERROR_CHARS = 500


def _one_line(exc: BaseException) -> str:
    # An error raised inside a DataLoader worker comes back wrapped in its traceback text.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if len(lines) > 1 else lines[0]
    line = line.removeprefix("imgcls.errors.ImgclsError: ")
    # The last resort against a value printed whole: an error is a line, not a page.
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def _peer_lost(exc: RuntimeError) -> bool:
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None),
                              getattr(dist, "DistNetworkError", None)) if k is not None)
    text = str(exc)
    return isinstance(exc, kinds) or any(
        phrase in text for phrase in ("Connection closed by peer", "Connection reset")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    # KEY=VALUE pairs may stand anywhere among the flags, which argparse's positional
    # arguments do not allow: collect the leftovers here.
    args, extra = parser.parse_known_args(argv)
    leftovers = [x for x in extra
                 if x.startswith("-") or args.command not in TRAIN_LIKE]
    if leftovers:
        parser.error(f"unrecognized arguments: {' '.join(leftovers)}")
    if args.command in TRAIN_LIKE:
        args.overrides = [*args.overrides, *extra]
    if (args.command == "train" and args.nproc is not None and args.nproc > 1
            and not args.print_config):  # printing needs no processes
        try:
            return _launch_torchrun(args.nproc, sys.argv[1:] if argv is None else argv)
        except ImgclsError as exc:
            print(f"imgcls: error: {_one_line(exc)}", file=sys.stderr)
            return 2
    runners = {
        "train": _run_train,
        "lr-find": _run_lr_find,
        "evaluate": _run_evaluate,
        "predict": _run_predict,
        "export": _run_export,
        "convert": _run_convert,
        "models": _run_models,
        "datasets": _run_datasets,
        "check-data": _run_check_data,
        "recipes": _run_recipes,
        "report": _run_report,
        "cv": _run_experiment,
        "repeat": _run_experiment,
        "tune": _run_tune,
    }
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in TRAIN_LIKE and os.environ.get("IMGCLS_MALLOPT", "1") != "0":
        from imgcls.runtime import keep_freed_memory

        keep_freed_memory()  # a process that trains: reuse freed memory, no page faults per step
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if (
        args.command in ("train", "cv", "repeat", "tune")) else None
    # Under torchrun each rank reports for itself: say which one.
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return runners[args.command](args)
    except ImgclsError as exc:
        print(f"imgcls: error: {rank}{_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # Another rank died (its own error is printed by that rank) and a collective here lost
        # its peer: one line instead of a traceback that points at the wrong process.
        if rank and _peer_lost(exc):
            print(f"imgcls: error: {rank}stopped: another rank failed ({_one_line(exc)})",
                  file=sys.stderr)
            return 1
        raise
    except BrokenPipeError:  # `imgcls evaluate ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        print(f"imgcls: {_interrupted_message(exc)}", file=sys.stderr, flush=True)
        if getattr(exc, "requeue", False):  # SIGUSR1 under SLURM: the job runs again
            print(f"imgcls: {requeue_slurm_job()}", file=sys.stderr, flush=True)
            return 0
        return 143 if TERMINATED in str(exc) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
