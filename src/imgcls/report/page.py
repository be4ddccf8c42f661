"""One self-contained HTML page: inline CSS, images as base64 PNG data URIs, no JavaScript, no
network, so it opens from the file system and survives being mailed. Every value goes through
``html.escape``; the layout is a ``string.Template``."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from string import Template
from typing import Any

# The body's widest content (CSS px; its padding lies outside): the most an image is shown
# at, so figures are drawn to be read at this size.
CONTENT_PX = 1200

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: ${width}px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
tr.avg td { font-weight: bold; background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: .9em; }
.files { font-family: monospace; font-size: .85em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
nav a { margin-right: 1em; }
.wide { overflow-x: auto; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
/* each figure at its own size, side by side while they fit: never shrunk to half a row */
.row figure { flex: 0 1 auto; margin: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .8em; }
.cell { font-size: .8em; text-align: center; }
.cell img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; }
.wrong { color: #b00; } .right { color: #070; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">$subtitle</p>
<nav>$nav</nav>
$sections
</body>
</html>
""")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers as the page shows them (the CSVs keep full precision)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *,
          headers: Sequence[str] | None = None, avg_rows: Sequence[str] = ()) -> str:
    """An HTML table of ``rows``; rows whose first cell is in ``avg_rows`` are set in bold."""
    head = "".join(f"<th>{esc(h)}</th>" for h in (headers or columns))
    body = []
    for row in rows:
        css = ' class="avg"' if str(row.get(columns[0])) in avg_rows else ""
        cells = "".join(f"<td>{esc(fmt(row.get(c)))}</td>" for c in columns)
        body.append(f"<tr{css}>{cells}</tr>")
    return (f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def image(png: bytes, alt: str, name: str) -> str:
    """An embedded PNG (``name``: the same image's file beside the page)."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}" '
            f'data-file="{esc(name)}"><figcaption class="files">{esc(name)}</figcaption>'
            "</figure>")


def files_note(names: Sequence[str], what: str = "numbers in") -> str:
    return f'<p class="note">{esc(what)}: <span class="files">{esc(", ".join(names))}</span></p>'


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{esc(section_id)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def render(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page from (id, title, body HTML) sections."""
    nav = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in sections)
    return PAGE.substitute(title=esc(title), subtitle=esc(subtitle), nav=nav, width=CONTENT_PX,
                           sections="\n".join(section(*s) for s in sections))


def thumbnails(cells: Sequence[tuple[bytes, str, str, bool]]) -> str:
    """A grid of small images, each (png, alt text, caption HTML-free text, correct?)."""
    items = []
    for png, alt, caption, correct in cells:
        data = base64.b64encode(png).decode("ascii")
        lines = "<br>".join(esc(line) for line in caption.splitlines())
        css = "right" if correct else "wrong"
        items.append(f'<div class="cell"><img src="data:image/png;base64,{data}" '
                     f'alt="{esc(alt)}"><div class="{css}">{lines}</div></div>')
    return f'<div class="grid">{"".join(items)}</div>'


def row(*figures_html: str) -> str:
    """Figures side by side (wrapping on a narrow window)."""
    return f'<div class="row">{"".join(figures_html)}</div>'
