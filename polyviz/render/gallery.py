"""An HTML gallery: a table that sets methods (rows) against images (columns), optionally with
sub-columns such as the two frameworks side by side, as the README tables of the seed projects do.

The page is one ``index.html`` with every picture a PNG file beside it, referenced by a relative
path, so the folder can be zipped, served or opened from disk. A small inline script counts, once
the page has loaded, the images that decoded (``complete && naturalWidth > 0``) and writes the
result into ``#polyviz-status`` (``data-images``, ``data-loaded``, ``data-status`` = 'ok' or
'broken'), which the tests read back from headless Chromium.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from polyviz.errors import InputError
from polyviz.render._atomic import write_text
from polyviz.render._check import as_picture
from polyviz.render.io import save_png
from polyviz.render.text import _check_text

__all__ = ["write_gallery", "html_table", "STATUS_ID"]

STATUS_ID = "polyviz-status"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; }
table.gallery { border-collapse: collapse; }
table.gallery th, table.gallery td { border: 1px solid #ddd; padding: 4px; text-align: center; vertical-align: middle; }
table.gallery thead th { background: #f4f4f4; font-weight: 600; }
table.gallery th.sub { font-weight: normal; font-size: 0.85em; color: #555; }
table.gallery tbody th { text-align: left; background: #fafafa; white-space: nowrap; }
table.gallery td.missing { color: #999; font-size: 0.85em; max-width: 10em; }
img.pixelated { image-rendering: pixelated; }
section.summary table { border-collapse: collapse; margin-top: 1.5em; }
section.summary th, section.summary td { border: 1px solid #ddd; padding: 3px 8px; }
section.notes { margin-top: 1.5em; max-width: 60em; line-height: 1.4; }
footer { margin-top: 2em; color: #888; font-size: 0.8em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0, broken = [];
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; } else { broken.push(images[i].getAttribute("src")); }
  }
  var status = document.getElementById("STATUS_ID");
  status.setAttribute("data-images", String(images.length));
  status.setAttribute("data-loaded", String(loaded));
  status.setAttribute("data-broken", broken.join(" "));
  status.setAttribute("data-status", loaded === images.length ? "ok" : "broken");
  status.textContent = loaded + " of " + images.length + " images loaded";
});
""".replace("STATUS_ID", STATUS_ID)


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].strip("-") or "x"


def _strings(value: Any, name: str, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or (not value and not allow_empty):
        raise InputError(f"{name}: expected a non-empty list of strings, got {value!r}")
    return [_check_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _cells(cell: Any, subcolumns: list[str] | None, name: str) -> list[Any]:
    """One gallery cell as a list of entries (picture arrays, None or text): one per sub-column, or a
    single entry that spans all the sub-columns (one picture, None or a text given for the cell)."""
    if subcolumns is None or cell is None or isinstance(cell, (str, np.ndarray)):
        return [cell]
    if isinstance(cell, Mapping):
        unknown = set(cell) - set(subcolumns)
        if unknown:
            raise InputError(f"{name}: unknown sub-columns {sorted(unknown)}; expected keys among {subcolumns}")
        return [cell.get(s) for s in subcolumns]
    if not isinstance(cell, Sequence) or len(cell) != len(subcolumns):
        raise InputError(
            f"{name}: expected one entry per sub-column {subcolumns} (a list or a dict), got {type(cell).__name__}"
        )
    return list(cell)


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    caption: str | None = None,
    float_format: str = "{:.3g}",
) -> str:
    """A small escaped HTML table (e.g. per-method agreement and pointing-game accuracy) for
    :func:`write_gallery`'s ``table_html``: floats through ``float_format``, None as a dash, anything
    else through ``str``."""
    head = _strings(header, "header")
    if isinstance(rows, (str, np.ndarray)) or not isinstance(rows, Sequence):
        raise InputError("rows: expected a list of rows, each a list of values")

    def cell(v: Any) -> str:
        if v is None:
            return "&mdash;"
        if isinstance(v, (float, np.floating)):
            return html.escape(float_format.format(float(v)))
        return html.escape(str(v))

    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(_check_text(caption, 'caption'))}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    for r, row in enumerate(rows):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != len(head):
            raise InputError(f"rows[{r}]: expected {len(head)} values, one per header, got {row!r:.80}")
        out.append("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _display_width(width: int, image_width: int | None) -> int:
    if image_width is not None:
        return image_width
    return width * max(1, math.ceil(128 / width)) if width < 128 else width


def write_gallery(
    out_dir: str | Path,
    *,
    title: str,
    columns: Sequence[str],
    rows: Sequence[tuple[str, Sequence[Any]]],
    table_html: str = "",
    notes: str = "",
    subcolumns: Sequence[str] | None = None,
    image_width: int | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and one PNG per picture beside it; return the page's path.

    ``columns``: the column headings (e.g. image names). ``rows``: ``(heading, cells)`` pairs, one
    cell per column (e.g. one row per method). A cell is a uint8 (or [0, 1] float) picture, None
    (shown as a dash) or a short text (e.g. why a method does not apply). With ``subcolumns`` (e.g.
    ``["torch", "keras"]``) every column splits into those sub-columns and a cell is a list with one
    entry per sub-column or a dict keyed by sub-column name (missing keys: a dash); a single picture,
    None or text spans the whole cell (e.g. a row showing the input images). ``table_html``: trusted HTML placed after
    the gallery (e.g. the agreement / pointing-game table). ``notes``: plain text, paragraphs split
    at blank lines. ``image_width``: display width in CSS pixels (default: pictures narrower than
    128 pixels are enlarged by a whole factor, without smoothing).
    """
    title = _check_text(title, "title")
    cols = _strings(columns, "columns")
    subs = None if subcolumns is None else _strings(subcolumns, "subcolumns")
    table_html = _check_text(table_html, "table_html")
    notes = _check_text(notes, "notes")
    if image_width is not None and (isinstance(image_width, bool) or not isinstance(image_width, int) or image_width < 1):
        raise InputError(f"image_width: expected a positive integer or None, got {image_width!r}")
    if isinstance(rows, (str, np.ndarray)) or not isinstance(rows, Sequence):
        raise InputError("rows: expected a list of (heading, cells) pairs")
    checked: list[tuple[str, list[list[Any]]]] = []
    for r, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != 2:
            raise InputError(f"rows[{r}]: expected a (heading, cells) pair, got {row!r:.80}")
        heading, cells = row
        heading = _check_text(heading, f"rows[{r}][0]")
        if isinstance(cells, (str, np.ndarray)) or not isinstance(cells, Sequence) or len(cells) != len(cols):
            raise InputError(f"rows[{r}] ({heading!r}): expected {len(cols)} cells, one per column")
        entries = []
        for c, cell in enumerate(cells):
            where = f"rows[{r}] ({heading!r}) column {cols[c]!r}"
            items = _cells(cell, subs, where)
            for s, item in enumerate(items):
                if item is not None and not isinstance(item, str):
                    items[s] = as_picture(item, where + (f" / {subs[s]!r}" if len(items) > 1 else ""))
            entries.append(items)
        checked.append((heading, entries))

    try:
        out = Path(out_dir)
    except TypeError:
        raise InputError(f"out_dir: expected a folder path, got {type(out_dir).__name__}") from None
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    esc = html.escape
    span = len(subs) if subs else 1
    lines = [
        "<!doctype html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        '<table class="gallery">',
        "<thead>",
        "<tr><th></th>" + "".join(f'<th colspan="{span}">{esc(c)}</th>' if span > 1 else f"<th>{esc(c)}</th>" for c in cols) + "</tr>",
    ]
    if subs:
        lines.append("<tr><th></th>" + "".join(f'<th class="sub">{esc(s)}</th>' for _ in cols for s in subs) + "</tr>")
    lines += ["</thead>", "<tbody>"]
    for r, (heading, entries) in enumerate(checked):
        tds = []
        for c, items in enumerate(entries):
            whole = len(items) < span  # one entry for the whole cell
            colspan = f' colspan="{span}"' if whole else ""
            for s, item in enumerate(items):
                if item is None or isinstance(item, str):
                    tds.append(f'<td class="missing"{colspan}>{esc(item) if item else "&mdash;"}</td>')
                    continue
                name = f"{r:02d}_{_slug(heading)}__{c:02d}_{_slug(cols[c])}"
                if subs and not whole:
                    name += f"__{_slug(subs[s])}"
                save_png(item, out / f"{name}.png")
                h, w = item.shape[:2]
                dw = _display_width(w, image_width)
                dh = max(1, round(h * dw / w))
                alt = f"{heading}, {cols[c]}" + (f", {subs[s]}" if subs and not whole else "")
                cls = ' class="pixelated"' if dw > w else ""
                tds.append(
                    f'<td{colspan}><img src="{quote(name)}.png" alt="{esc(alt)}" width="{dw}" height="{dh}"{cls}></td>'
                )
        lines.append(f'<tr><th scope="row">{esc(heading)}</th>' + "".join(tds) + "</tr>")
    lines += ["</tbody>", "</table>"]
    if table_html:
        lines.append(f'<section class="summary">\n{table_html}\n</section>')
    if notes.strip():
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", notes) if p.strip()]
        lines.append('<section class="notes">' + "".join(f"<p>{esc(p)}</p>" for p in paragraphs) + "</section>")
    lines += [
        f'<footer>polyviz gallery &middot; <span id="{STATUS_ID}" data-status="pending">loading images</span></footer>',
        f"<script>{_SCRIPT}</script>",
        "</body>",
        "</html>",
    ]
    index = out / "index.html"
    write_text(index, "\n".join(lines) + "\n")  # atomic; a planted symlink is replaced, not followed
    return index
