"""What imgcls knows and what the data holds: `models`, `datasets`, `recipes`, `check-data`."""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any

from imgcls import recipes
from imgcls.errors import ImgclsError


def add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models", help="list the models, or summarise one: layers, shapes, parameters, FLOPs",
        description="Without NAME: every model with its input size and parameter count "
        "(imgcls's and torchvision's; timm's with --source timm). With NAME: its layer tree "
        "(module paths, as model.freeze patterns use them) with each layer's output shape, "
        "parameters and FLOPs, then the totals.",
    )
    models.add_argument("name", nargs="?",
                        help="a model to summarise (e.g. resnet18, timm/convnext_tiny)")
    models.add_argument("--imgcls-only", action="store_true",
                        help="only imgcls's own models, not torchvision's")
    models.add_argument("--source", choices=SOURCES,
                        help="only the models of one source; timm: timm's architectures, as "
                        "model.name=timm/NAME takes them (needs the [timm] extra)")
    models.add_argument("--filter", metavar="PATTERN",
                        help="only names matching this glob (e.g. 'convnext*'); timm's "
                        f"parameters are counted when at most {TIMM_COUNTED} of its models are "
                        "listed")
    models.add_argument("--num-classes", type=int, default=10,
                        help="class count for the parameter counts (default 10)")
    models.add_argument("--input-size", metavar="S",
                        help="with NAME: image side in pixels, or HxW (default: the model's)")
    models.add_argument("--in-channels", type=int, default=3, metavar="C",
                        help="with NAME: image channels, 1 or 3 (default 3)")
    models.add_argument("--depth", type=int, default=3, metavar="D",
                        help="with NAME: how deep the layer tree goes (default 3)")
    models.set_defaults(run=_run_models)


SOURCES = ("imgcls", "torchvision", "timm")
TIMM_COUNTED = 50  # building a timm model (shapes only) takes ~0.1 s: 1,300 would take minutes


def _listed_names(args: argparse.Namespace) -> list[str]:
    from imgcls.models import model_names

    if args.imgcls_only and args.source not in (None, "imgcls"):
        raise ImgclsError(f"--imgcls-only and --source {args.source}: choose one")
    source = "imgcls" if args.imgcls_only else args.source
    if source == "timm":  # timm filters its own registry (fnmatch, as below)
        from imgcls.models.timm_models import names

        found = names(args.filter or "")
    else:
        found = [n for n in model_names(source)
                 if args.filter is None or fnmatch.fnmatch(n, args.filter)]
    if not found:
        which = f"{source} model" if source else "model"
        raise ImgclsError(f"no {which} matches --filter {args.filter!r}")
    return found


def _run_models(args: argparse.Namespace) -> int:
    from imgcls.models import count_parameters, get_model_info

    if args.name is not None:
        return _run_model_summary(args)
    infos = [get_model_info(n) for n in _listed_names(args)]
    counted = sum(info.source == "timm" for info in infos) <= TIMM_COUNTED
    width = max(len(info.name) for info in infos)
    print(f"{'name':<{width}}  {'source':<11}  {'input':>5}  {'parameters':>12}")
    for info in infos:
        shown = info.source != "timm" or counted
        params = f"{count_parameters(info.name, args.num_classes):,}" if shown else "-"
        print(f"{info.name:<{width}}  {info.source:<11}  {info.input_size:>5}  {params:>12}")
    if not counted:
        print(f"(parameters of timm's models: narrow the list to at most {TIMM_COUNTED} with "
              "--filter, or `imgcls models timm/NAME`)")
    return 0


def _run_model_summary(args: argparse.Namespace) -> int:
    from imgcls.config import ModelConfig
    from imgcls.config.sizes import parse_size, size_arg, size_hw, size_text
    from imgcls.models import create_model, get_model_info
    from imgcls.models.summary import format_summary, summarize

    info = get_model_info(args.name)  # an unknown name: one line with close matches
    size = info.input_size if args.input_size is None else parse_size(args.input_size)
    height, width = size_hw(size)
    if args.in_channels not in (1, 3):
        raise ImgclsError(f"--in-channels {args.in_channels}: expected 1 or 3")
    if args.depth < 0:
        raise ImgclsError(f"--depth {args.depth}: expected 0 (the model alone) or more")
    if info.fixed_size and (height, width) != size_hw(info.input_size):
        raise ImgclsError(f"--input-size {size_arg(size)}: {args.name} takes {info.input_size} "
                          "px inputs only (its layer sizes are fixed)")
    if min(height, width) < info.min_size:
        raise ImgclsError(f"--input-size {size_arg(size)}: {args.name} needs at least "
                          f"{info.min_size} px")
    model = create_model(ModelConfig(name=args.name, in_channels=args.in_channels),
                         args.num_classes)
    summary = summarize(model, (1, args.in_channels, height, width))
    print(f"{args.name}: {args.num_classes} classes, {args.in_channels}x{size_text(size)} input")
    print(format_summary(summary, args.depth))
    return 0


BUILTIN_DATA = {
    "digits": "1,797 handwritten digits, 8x8 greyscale, 10 classes; bundled with scikit-learn, "
              "no download (test split: a fixed fifth)",
    "cifar10": "60,000 32x32 colour images, 10 classes; downloaded by torchvision (170 MB)",
    "cifar100": "60,000 32x32 colour images, 100 classes; downloaded by torchvision (170 MB)",
}


def add_datasets(commands: Any) -> None:
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
    datasets.set_defaults(run=_run_datasets)


def _run_datasets(args: argparse.Namespace) -> int:
    if args.export is None:
        if args.name is not None:
            raise ImgclsError(f"what to do with {args.name}? add --export DIR")
        for name, text in BUILTIN_DATA.items():
            print(f"{name:<9} {text}")
        print("or: a folder of class folders, a .txt list file, or a .csv of images with several "
              "labels each (see docs/own-data.md)")
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


def add_recipes(commands: Any) -> None:
    listing = commands.add_parser(
        "recipes", help="list the bundled recipes: name, purpose, measured figure",
        description="The recipes shipped with imgcls; train one with `imgcls train --config "
        "NAME`, see what it resolves to with `imgcls train --config NAME --print-config`.",
    )
    listing.set_defaults(run=_run_recipes)


def _run_recipes(args: argparse.Namespace) -> int:
    found = recipes.list_recipes()
    width = max(len(r.name) for r in found)
    for r in found:
        print(f"{r.name:<{width}}  {r.purpose}")
        print(f"{'':<{width}}  measured: {r.measured}")
    print(f"train one: imgcls train --config NAME   (the files: {recipes.folder()})")
    return 0


def add_check_data(commands: Any) -> None:
    check = commands.add_parser(
        "check-data", help="check a data folder, list file or label CSV: class counts, sizes, "
        "unreadable files, duplicates, train/val/test leaks",
        description="Decodes every image of DATA (a folder of class folders, with or without "
        "train/ val/ test/ parts, a .txt list file, or a .csv of images with several labels "
        "each) and writes DIR/check.json and DIR/index.html: images per class and imbalance, "
        "labels per image and frequent label pairs (a CSV), sizes and colour modes, unreadable "
        "files, exact and near duplicates, and copies shared between the parts (leaks). Exit "
        "code 0 when the data is usable (findings are warnings), 2 on bad input.",
    )
    check.add_argument("data", metavar="DATA",
                       help="folder of class folders, a list file, or a label CSV")
    check.add_argument("--output", metavar="DIR",
                       help="folder for check.json and index.html (default ./check-data-NAME)")
    check.add_argument("--near-threshold", type=int, default=3, metavar="BITS",
                       help="near-duplicates differ in at most this many of the 64 perceptual "
                       "hash bits (default 3)")
    check.add_argument("--max-image-pixels", type=int, metavar="N", default=None,
                       help="an image above N pixels is listed as unreadable, never decoded "
                       "(data.max_image_pixels; default PIL's 89478485; 0: no limit)")
    check.set_defaults(run=_run_check_data)


def _run_check_data(args: argparse.Namespace) -> int:
    from imgcls.datacheck import check_data, summary_lines

    limit = {} if args.max_image_pixels is None else {"max_pixels": args.max_image_pixels}
    if limit and args.max_image_pixels < 0:
        raise ImgclsError(f"--max-image-pixels {args.max_image_pixels}: must be >= 0 "
                          "(0: no limit)")
    result = check_data(args.data, output=args.output, near_threshold=args.near_threshold,
                        **limit)
    print("\n".join(summary_lines(result)))
    return 0
