"""`imgcls explain`: heatmaps of what each image's class rests on."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from imgcls.cli.options import add_code_options, add_trust_pickle, code_consent


def add_explain(commands: Any) -> None:
    explain = commands.add_parser(
        "explain", help="heatmaps (Grad-CAM, integrated gradients) of what a prediction rests on",
        description="For each image: the heatmap of the predicted class (or --class), overlaid "
        "on the image as the model sees it (PNG), and a JSON with the top-k and the map's peak. "
        "A multi-label model explains each label above its threshold. Exit code 1 when some "
        "images could not be read (the others are still explained).",
    )
    explain.add_argument("checkpoint", help="a checkpoint, e.g. runs/NAME/checkpoints/best.pt")
    explain.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively) or list files")
    explain.add_argument("--class", dest="class_name", metavar="NAME",
                         help="explain this class instead of the predicted one")
    explain.add_argument("--method", default="gradcam",
                         choices=["gradcam", "integrated_gradients"],
                         help="gradcam (default; a layer's map) or integrated_gradients (pixels)")
    explain.add_argument("--layer", default="", metavar="MODULE",
                         help="Grad-CAM's layer (default: model.cam_layer, else chosen)")
    explain.add_argument("--output", default="explanations", help="folder (default explanations)")
    explain.add_argument("--top-k", type=int, default=5, help="classes per image in the JSON")
    explain.add_argument("--json", action="store_true", help="print explanations.json")
    explain.add_argument("--batch-size", type=int, default=16)
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_trust_pickle(explain)
    add_code_options(explain)
    explain.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from imgcls.explain.explainer import explain, to_dict

    report = explain(
        args.checkpoint, args.inputs, output=args.output, method=args.method,
        class_name=args.class_name, layer=args.layer, top_k=args.top_k,
        batch_size=args.batch_size, device=args.device, trust_pickle=args.trust_pickle,
        code=code_consent(args),
    )
    if args.json:
        print(json.dumps(to_dict(report)))
    else:
        where = f" at layer {report.layer}" if report.layer else ""
        for r in report.results:
            if r.error is None:
                shown = ", ".join(f"{e['class']} {e['prob']:.2f} -> {e['heatmap']}"
                                  for e in r.explained)
                print(f"{r.path}: {shown}")
        done = len(report.results) - report.failed
        print(f"wrote {done} explanations ({report.method}{where}) to {report.output}")
    for r in report.results:
        if r.error is not None:
            print(f"imgcls: cannot read {r.path}: {r.error}", file=sys.stderr)
    return 1 if report.failed else 0
