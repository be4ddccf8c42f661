"""``index.html`` of a data check: one self-contained page (inline CSS, thumbnails as base64
data URIs) that opens from the file system with no server or network. Every number on it is
also in ``check.json`` beside it; long lists are cut here, never there."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from imgcls.data.folder import load_rgb
from imgcls.errors import ImgclsError

SHOW = 40  # rows (groups, pairs, files) per section; the rest are in check.json
THUMB = 64  # thumbnail side in the page, px

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;background:#eee}
.warn{color:#a40}.note{color:#666}figure{display:inline-block;margin:0 .4em 0 0;vertical-align:top}
figcaption{font-size:11px;max-width:10em;word-break:break-all}
"""


def thumbnail_uri(path: str) -> str:
    """A PNG data URI of the image shrunk to fit ``THUMB`` px ('' when it cannot be read)."""
    try:
        img = load_rgb(path)
    except ImgclsError:
        return ""
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]],
           numeric: frozenset[int] | set[int] = frozenset()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = "".join(
            f"<td class=n>{_e(v)}</td>" if n in numeric else f"<td>{v}</td>"
            for n, v in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    return "".join(out) + "</table>"


def _more(total: int) -> str:
    return f"<p class=note>{total - SHOW} more in check.json</p>" if total > SHOW else ""


def _ratio(value: float | None) -> str:
    return "n/a (a class has no images)" if value is None else f"{value:.2f}"


def _label_sets(sets: list[list[str]]) -> str:
    """A label CSV's duplicate group: each label set on a line."""
    return "<br>".join(_label(" + ".join(labels)) for labels in sets)


def _label(value: str) -> str:
    """An entry's class, escaped; a label CSV's image with no label shows as such."""
    return _e(value) if value else "<span class=note>(no label)</span>"


Figure = Callable[[str], str]  # file key -> <figure> with its thumbnail


def render(report: dict[str, Any], thumb: Callable[[str], str]) -> str:
    """The page for ``report`` (analyse's dict); ``thumb(file key)`` gives a data URI.
    Sections run from what most often spoils a result (leaks) to the descriptive."""

    def figure(key: str) -> str:
        uri = thumb(key)
        image = f"<img src='{uri}' alt=''>" if uri else "<span class=note>(unreadable)</span>"
        return f"<figure>{image}<figcaption>{_e(key)}</figcaption></figure>"

    parts, classes, images = report["parts"], report["classes"], report["images"]
    word = "labels" if "multilabel" in report else "classes"
    head = (f"<h1>Data check: {_e(report['source'])}</h1>"
            f"<p>{images['files']} files, {images['readable']} readable, {images['unreadable']} "
            f"unreadable; {len(classes)} {word}; parts: {_e(', '.join(parts))}</p>")
    if report["warnings"]:
        head += "<ul>" + "".join(f"<li class=warn>{_e(w)}</li>" for w in report["warnings"])
        head += "</ul>"
    sections = [("leaks", _leaks(report, figure)), ("classes", _classes(report))]
    if "multilabel" in report:
        sections.append(("labels", _labels(report["multilabel"], figure)))
    sections += [("unreadable", _unreadable(report)),
                ("exact", _duplicates(report, "exact_duplicates", figure)),
                ("near", _duplicates(report, "near_duplicates", figure)),
                ("sizes", _sizes(report)), ("blank", _blank(report))]
    body = head + "".join(f'<section id="{name}">{html_}</section>' for name, html_ in sections)
    return ("<!doctype html><html><head><meta charset=utf-8><title>Data check</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _leaks(report: dict[str, Any], figure: Figure) -> str:
    leaks = report["leaks"]
    out = f"<h2>Leaks between parts ({leaks['total']})</h2>"
    if not leaks["counts"]:
        return out + ("<p class=note>no train/ val/ test/ parts: duplicates may still land on "
                      "both sides of the random validation split</p>")
    rows = [[_e(k), v["exact"], v["near"]] for k, v in leaks["counts"].items()]
    out += _table(["parts", "exact copies", "near copies"], rows, numeric={1, 2})
    rows = [[_e(p["parts"]), _e(p["kind"]), p["distance"], figure(p["file"]),
             figure(p["copy_of"])] for p in leaks["pairs"][:SHOW]]
    if rows:
        out += _table(["parts", "kind", "distance", "image", "copy of"], rows, numeric={2})
        out += _more(len(leaks["pairs"]))
    return out


def _classes(report: dict[str, Any]) -> str:
    parts, classes = report["parts"], report["classes"]
    word = "label" if "multilabel" in report else "class"
    rows = [[_e(c), *(report["counts"][p].get(c, 0) for p in parts)] for c in classes]
    out = f"<h2>Images per {word}</h2>" + _table(
        [word, *parts], rows, numeric=set(range(1, len(parts) + 1)))
    rows = [[_e(p), _e(b["largest_class"]), b["largest"], _e(b["smallest_class"]),
             b["smallest"], _ratio(b["ratio"])] for p, b in report["imbalance"].items()]
    return out + f"<h3>Imbalance (largest / smallest {word})</h3>" + _table(
        ["part", f"largest {word}", "images", f"smallest {word}", "images", "ratio"], rows,
        numeric={2, 4, 5})


def _labels(multi: dict[str, Any], figure: Figure) -> str:
    """A label CSV's labels per image, images with none, and the most frequent pairs."""
    card, none, pairs = multi["cardinality"], multi["no_label"], multi["top_pairs"]
    out = f"<h2>Labels per image: mean {card['mean']:.2f}, max {card['max']}</h2>"
    out += _table(["labels", "images"], [[h["labels"], h["images"]] for h in card["histogram"]],
                  numeric={0, 1})
    out += f"<h3>Images with no label ({none['images']})</h3>"
    if none["examples"]:
        out += "<p>" + "".join(figure(key) for key in none["examples"]) + "</p>"
        out += (f"<p class=note>{none['images'] - len(none['examples'])} more</p>"
                if none["images"] > len(none["examples"]) else "")
    else:
        out += "<p>none</p>"
    out += f"<h3>Most frequent label pairs ({len(pairs)})</h3>"
    if not pairs:
        return out + "<p>none: no image has two labels</p>"
    rows = [[_e(" + ".join(p["labels"])), p["images"]] for p in pairs]
    return out + _table(["labels", "images"], rows, numeric={1})


def _unreadable(report: dict[str, Any]) -> str:
    bad = report["unreadable"]
    out = f"<h2>Unreadable files ({len(bad)})</h2>"
    if not bad:
        return out + "<p>none</p>"
    rows = [[_e(b["file"]), _label(b["class"]), _e(b["reason"])] for b in bad[:SHOW]]
    return out + _table(["file", "class", "reason"], rows) + _more(len(bad))


def _duplicates(report: dict[str, Any], name: str, figure: Figure) -> str:
    dup = report[name]
    if name == "near_duplicates":
        bits = report["settings"]["near_threshold"]
        title = f"Near-duplicates (at most {bits} of 64 perceptual-hash bits differ)"
    else:
        title = "Exact duplicates (same decoded pixels)"
    out = f"<h2>{title}: {dup['groups']} groups, {dup['images']} images</h2>"
    rows = [[_label_sets(g["label_sets"]) if "label_sets" in g else
             ", ".join(map(_label, g["classes"])),
             "".join(figure(f["file"]) for f in g["files"][:8])
             + (f"<span class=note> +{len(g['files']) - 8}</span>" if len(g["files"]) > 8
                else "")] for g in dup["list"][:SHOW]]
    if not rows:
        return out + "<p>none</p>"
    head = "label sets" if "multilabel" in report else "classes"
    return out + _table([head, "images"], rows) + _more(len(dup["list"]))


def _sizes(report: dict[str, Any]) -> str:
    sizes, out = report["sizes"], "<h2>Image sizes and modes</h2>"
    if sizes["width"]:
        rows = [[axis, sizes[axis]["min"], sizes[axis]["median"], sizes[axis]["max"]]
                for axis in ("width", "height")]
        out += _table(["px", "min", "median", "max"], rows, numeric={1, 2, 3})
    hist = sizes["histogram"]
    out += "<h3>Width x height</h3>" + _table(
        ["size", "images"], [[_e(h["size"]), h["count"]] for h in hist[:SHOW]], numeric={1})
    out += _more(len(hist))
    out += _table(["mode", "images"], [[_e(m), n] for m, n in report["modes"].items()],
                  numeric={1})
    return out + _table(["format", "images"],
                        [[_e(f), n] for f, n in report["formats"].items()], numeric={1})


def _blank(report: dict[str, Any]) -> str:
    blank = report["blank"]
    out = f"<h2>Blank (single-colour) images ({len(blank)})</h2>"
    if not blank:
        return out + "<p>none</p>"
    rows = [[_e(b["file"]), _label(b["class"])] for b in blank[:SHOW]]
    return out + _table(["file", "class"], rows) + _more(len(blank))
