"""`imgcls evaluate` (a checkpoint, or an experiment's runs and their ensemble) and `predict`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgcls.cli.options import add_code_options, add_trust_pickle, code_consent
from imgcls.errors import ImgclsError


def add_evaluate(commands: Any) -> None:
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
    evaluate.add_argument("--threshold", type=float, metavar="P",
                          help="several labels per image: predict a label when its probability "
                          "is at least P, for every class (default: each class's threshold, "
                          "chosen on the validation images at the end of training)")
    add_trust_pickle(evaluate)
    add_code_options(evaluate)
    evaluate.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from imgcls import api
    from imgcls.experiments.plan import is_experiment

    if is_experiment(args.checkpoint):
        return _run_evaluate_experiment(args)
    summary = api.evaluate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, output=args.output,
        device=args.device, batch_size=args.batch_size, trust_pickle=args.trust_pickle,
        tta=args.tta, code=code_consent(args), threshold=args.threshold,
    )
    if args.json:
        print(api.dumps(summary))
        return 0
    if summary.get("multilabel"):
        print(format_multilabel(summary))
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


def format_multilabel(summary: dict[str, Any]) -> str:
    """A multi-label evaluation for people: the averages, then a row per class."""
    lines = [f"{summary['split']}: mAP {summary['map']:.4f}  micro_f1 {summary['micro_f1']:.4f}  "
             f"macro_f1 {summary['macro_f1']:.4f}  exact_match {summary['subset_accuracy']:.4f}  "
             f"hamming_loss {summary['hamming_loss']:.4f}  loss {summary['loss']:.4f}  "
             f"n {summary['n']}  (thresholds: {summary['threshold']})"]
    width = max(len("class"), *(len(name) for name in summary["per_class"]))
    lines.append(f"  {'class':<{width}}      AP  threshold  precision  recall      f1  support")
    for name, c in summary["per_class"].items():
        ap = f"{c['ap']:.4f}" if c["ap"] is not None else "-"
        lines.append(f"  {name:<{width}}  {ap:>6}  {c['threshold']:>9.3f}  "
                     f"{c['precision']:>9.4f}  {c['recall']:>6.4f}  {c['f1']:>6.4f}  "
                     f"{c['support']:>7}")
    lines.append(f"report: {summary['output']}")
    return "\n".join(lines)


def _run_evaluate_experiment(args: argparse.Namespace) -> int:
    import json

    from imgcls.experiments.evaluation import evaluate_experiment, format_evaluation

    if args.data is not None:
        raise ImgclsError("--data: an experiment's runs are evaluated on their own data source")
    result = evaluate_experiment(args.checkpoint, split=args.split, device=args.device,
                                 batch_size=args.batch_size, tta=args.tta, output=args.output,
                                 code=code_consent(args))
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def add_predict(commands: Any) -> None:
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
    predict.add_argument("--threshold", type=float, metavar="P",
                         help="several labels per image: a label when its probability is at "
                         "least P, for every class (default: the checkpoint's thresholds)")
    predict.add_argument("--min-confidence", type=float, metavar="P",
                         help="answer 'unknown' when the top-1 probability is below P (imgcls "
                         "report shows the accuracy and coverage each P keeps)")
    predict.add_argument("--tta", action="store_true",
                         help="add the horizontal flip (scored as evaluate's train.tta=flip)")
    add_trust_pickle(predict)
    add_code_options(predict)
    predict.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from imgcls.deploy import predict

    report = predict.predict(
        args.checkpoint, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
        device=args.device, tta=args.tta, trust_pickle=args.trust_pickle,
        code=code_consent(args), threshold=args.threshold, min_confidence=args.min_confidence,
    )
    if args.csv:
        predict.write_csv(report, args.csv)
    print(predict.to_json(report) if args.json else predict.to_table(report))
    for result in report.results:
        if result.error is not None:
            print(f"imgcls: cannot read {result.path}: {result.error}", file=sys.stderr)
    return 1 if report.failed else 0
