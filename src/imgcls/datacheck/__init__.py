"""``imgcls check-data``: what is in a folder of class folders, a list file or a multi-label CSV
before training on it: images per class and imbalance, sizes and colour modes, unreadable files,
exact and near duplicates, and duplicates that leak between the train/ val/ test/ parts; for a
CSV also labels per image, images with no label and the most frequent label pairs.

>>> result = check_data("path/to/data", output="check")  # doctest: +SKIP
>>> result.report["leaks"]["total"]  # doctest: +SKIP
0
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.data.folder import MAX_PIXELS
from imgcls.datacheck.findings import IMBALANCE_WARN, analyse
from imgcls.datacheck.hashing import NEAR_THRESHOLD
from imgcls.datacheck.leaks import warn_train_leaks
from imgcls.datacheck.page import render, thumbnail_uri
from imgcls.datacheck.scan import decode_all, find_source
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write_text, printable

__all__ = ["CheckResult", "check_data", "default_output", "summary_lines", "warn_train_leaks"]

SUMMARY_PAIRS = 3  # label pairs the printed summary names (check.json and the page: all ten)


@dataclass
class CheckResult:
    report: dict[str, Any]  # everything in check.json
    output: Path  # the folder holding check.json and index.html


def default_output(data: str | os.PathLike[str]) -> Path:
    """``./check-data-<name>``: the folder's name, or the list file's stem."""
    path = Path(data).expanduser().absolute()
    return Path(f"check-data-{path.stem if path.is_file() else path.name}")


def check_data(data: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
               near_threshold: int = NEAR_THRESHOLD, workers: int | None = None,
               max_pixels: int = MAX_PIXELS) -> CheckResult:
    """Check ``data`` and write ``output/check.json`` and ``output/index.html``. An image
    above ``max_pixels`` (data.max_image_pixels; 0: no limit) is unreadable, never decoded.

    A path that is missing, or holds no images, or whose every image is unreadable, is an
    ImgclsError; anything else (even many problems) is reported, not raised.
    """
    if not 0 <= near_threshold <= 15:
        raise ImgclsError(f"near-duplicate threshold {near_threshold}: expected 0..15 bits")
    start = time.perf_counter()
    source = find_source(data)
    decoded = decode_all([e.path for e in source.entries], workers, max_pixels)
    report = analyse(source, decoded, near_threshold)
    report["settings"]["max_image_pixels"] = max_pixels
    report["links_not_followed"] = source.links_dropped
    if report["images"]["readable"] == 0:
        first = report["unreadable"][0]
        raise ImgclsError(f"no readable images in {data}: all {report['images']['files']} files "
                          f"failed (first: {first['file']}: {first['reason']})")
    report["warnings"] = _warnings(report)
    report["seconds"] = round(time.perf_counter() - start, 3)
    out = Path(output) if output is not None else default_output(data)
    path_of = {e.key: e.path for e in source.entries}
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "check.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(out / "index.html",
                          render(report, lambda key: thumbnail_uri(path_of[key])))
    except OSError as exc:
        raise ImgclsError(f"cannot write the check to {out}: {exc.strerror or exc}") from None
    return CheckResult(report, out)


def _warnings(report: dict[str, Any]) -> list[str]:
    """Findings worth a look; none of them makes the data unusable."""
    out = []
    for part, b in report["imbalance"].items():
        if b["ratio"] is None:
            out.append(f"{part}: class {b['smallest_class']} has no images")
        elif b["ratio"] >= IMBALANCE_WARN:
            out.append(f"{part}: imbalanced, {b['largest_class']} has {b['ratio']:.1f}x the "
                       f"images of {b['smallest_class']} ({b['largest']} vs {b['smallest']})")
    if report["unreadable"]:
        out.append(f"{len(report['unreadable'])} unreadable file(s)")
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    if exact["groups"]:
        out.append(f"{exact['extra_copies']} extra exact copies in {exact['groups']} group(s)")
    if near["groups"]:
        out.append(f"{near['images']} near-duplicate images in {near['groups']} group(s)")
    if report["label_conflicts"]:
        spread = "different label sets" if "multilabel" in report else "several classes"
        out.append(f"{report['label_conflicts']} duplicate group(s) span {spread}")
    for parts, n in report["leaks"]["counts"].items():
        if n["exact"] or n["near"]:
            out.append(f"leak {parts}: {n['exact']} exact and {n['near']} near copies")
    if report["blank"]:
        out.append(f"{len(report['blank'])} blank (single-colour) image(s)")
    links = report.get("links_not_followed", [])
    if links:
        out.append(f"{len(links)} symlink(s) not followed (a loop, a parent folder or a second "
                   f"path to an image; training does the same), first: {links[0]}")
    return out


def _num(value: float) -> str:
    return f"{value:g}"


def _pairs(pairs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{'+'.join(p['labels'])} {p['images']}" for p in pairs) or "none"


def _label_line(multi: dict[str, Any]) -> str:
    """Labels per image, images with none and the top pairs, on one line."""
    card, none = multi["cardinality"], multi["no_label"]
    hist = ", ".join(f"{h['labels']}: {h['images']}" for h in card["histogram"])
    first = f" (first: {none['examples'][0]})" if none["examples"] else ""
    return (f"labels per image: mean {card['mean']:.2f}, max {card['max']} ({hist}); no label: "
            f"{none['images']}{first}; top pairs: {_pairs(multi['top_pairs'][:SUMMARY_PAIRS])}")


def summary_lines(result: CheckResult) -> list[str]:
    """The short summary ``imgcls check-data`` prints."""
    r = result.report
    images, parts, multi = r["images"], r["parts"], r.get("multilabel")
    # A multi-label image counts under each of its labels: its part's total is the images.
    per_part = ", ".join(f"{p} {multi['images'] if multi else sum(r['counts'][p].values())}"
                         for p in parts)
    lines = [f"checked {r['source']}: {images['readable']} images, {len(r['classes'])} "
             f"{'labels' if multi else 'classes'} ({per_part}) in {r['seconds']:.1f}s"]
    lines.append(f"imbalance (largest/smallest {'label' if multi else 'class'}): " + ", ".join(
        f"{p} {'n/a' if b['ratio'] is None else format(b['ratio'], '.2f')}"
        for p, b in r["imbalance"].items()))
    if multi:
        lines.append(_label_line(multi))
    w, h = r["sizes"]["width"], r["sizes"]["height"]
    lines.append(f"sizes: {len(r['sizes']['histogram'])} distinct, width {w['min']}.."
                 f"{w['max']} (median {_num(w['median'])}), height {h['min']}..{h['max']} "
                 f"(median {_num(h['median'])}); modes: "
                 + ", ".join(f"{m} {n}" for m, n in r["modes"].items()))
    bad = r["unreadable"]
    lines.append(f"unreadable: {len(bad)}" + (f" (first: {bad[0]['file']}: {bad[0]['reason']})"
                                             if bad else ""))
    exact, near = r["exact_duplicates"], r["near_duplicates"]
    lines.append(f"duplicates: {exact['groups']} exact groups ({exact['extra_copies']} extra "
                 f"copies), {near['groups']} near groups ({near['images']} images)")
    counts = r["leaks"]["counts"]
    if counts:
        lines.append("leaks: " + ", ".join(f"{k} {v['exact']} exact / {v['near']} near"
                                            for k, v in counts.items()))
    else:
        lines.append("leaks: no train/ val/ test/ parts to compare")
    lines.append(f"warnings: {len(r['warnings'])}" + "".join(f"\n  {w}" for w in r["warnings"]))
    lines.append(f"report: {result.output / 'index.html'} (numbers: {result.output}/check.json)")
    return [printable(line) for line in lines]  # print() raises on a non-UTF-8 file name
