"""`imgcls report`: one run's page, several runs compared, or an experiment's page."""

from __future__ import annotations

import argparse
from typing import Any

from imgcls.cli.options import add_code_options, code_consent
from imgcls.errors import ImgclsError


def add_report(commands: Any) -> None:
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
    add_code_options(report)
    report.set_defaults(run=_run_report)


def add_card(commands: Any) -> None:
    card = commands.add_parser(
        "card", help="write RUN/MODEL_CARD.md, a model card from the run's own files",
        description="A Hugging Face-style model card (YAML front matter with the metrics): "
        "intended use, classes, data and split sizes, validation and test figures with 95% "
        "intervals, the weak spots, calibration, the exact command, config and versions. "
        "Builds the run's report first when it has none.",
    )
    card.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    card.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_code_options(card)
    card.set_defaults(run=_run_card)


def _run_card(args: argparse.Namespace) -> int:
    from imgcls.report.card import write_card

    print(f"wrote {write_card(args.run_dir, device=args.device, code=code_consent(args))}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from imgcls.experiments.plan import is_experiment
    from imgcls.report.build import report_compare, report_run

    if len(args.runs) == 1 and is_experiment(args.runs[0]):
        if args.data is not None or args.split != "val":
            raise ImgclsError("--data and --split apply to one run's page; an experiment's page "
                              "shows what `imgcls evaluate EXPERIMENT --split S` wrote")
        from imgcls.experiments.page import report_experiment

        path = report_experiment(args.runs[0], output=args.output)
    elif len(args.runs) == 1:
        path = report_run(args.runs[0], split=args.split, data=args.data, output=args.output,
                          device=args.device, code=code_consent(args))
    elif args.data is not None or args.split != "val":
        raise ImgclsError("--data and --split apply to one run's page; several runs are "
                          "compared on their metrics.jsonl")
    else:
        path = report_compare(args.runs, output=args.output or "report-compare")
    print(f"wrote {path}")
    return 0
