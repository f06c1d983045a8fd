"""The run's summary page, ``OUT/summary/index.html``, built with the gallery
(:func:`polyviz.render.gallery.write_gallery`): thumbnails of the images where the methods disagree
most (input and each method's overlay), and a table per method with the mean, standard deviation
and count of every metric, the target's probability and the disagreement."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.runs.sources import Item
from polyviz.runs.spec import RunConfig

__all__ = ["write_summary", "aggregate", "SHOWN"]

#: Images shown on the page: the ones with the largest disagreement.
SHOWN = 8


def aggregate(table: Any, methods: list[str], columns: list[str]) -> list[list[Any]]:
    """Rows [method, n, then mean and std of each column] from the results table (NaN ignored)."""
    method_col = np.array(table.column("method").to_pylist())
    out = []
    for m in methods:
        sel = method_col == m
        row: list[Any] = [m, int(sel.sum())]
        for c in columns:
            v = np.array(table.column(c).to_pylist(), dtype=np.float64)[sel]
            v = v[np.isfinite(v)]
            row += [float(v.mean()) if len(v) else None, float(v.std(ddof=1)) if len(v) > 1 else None]
        out.append(row)
    return out


def _table(header: list[str], rows: list[list[Any]], caption: str) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "&mdash;"
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = [f"<table><caption>{html.escape(caption)}</caption>",
             "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows]
    return "\n".join(lines + ["</table>"])


def write_summary(out: Path, config: RunConfig, items: list[Item], shown: int = SHOWN) -> Path | None:
    """Write the page from ``OUT/results.parquet`` and the shard arrays; None when no row exists."""
    from polyviz.loading import read_image
    from polyviz.render.gallery import write_gallery
    from polyviz.render.images import overlay
    from polyviz.runs.store import load_attribution, read_results

    if not (out / "results.parquet").exists():
        return None
    table = read_results(out)
    methods = [m for m, _ in config.methods]
    metrics = [m for m, _ in config.metrics]
    from polyviz.metrics import METRICS

    cols = [*metrics, "probability", "disagreement"]
    header = ["method", "images"]
    for c in cols:
        arrow = f" ({'higher' if METRICS[c].higher_is_better else 'lower'} better)" if c in METRICS else ""
        header += [f"{c}{arrow} mean", "std"]
    agg = _table(header, aggregate(table, methods, cols), "Per method: mean and standard deviation over images")

    first = table.filter(np.array(table.column("method").to_pylist()) == methods[0]).to_pylist()
    first.sort(key=lambda r: (-r["disagreement"], r["index"]))
    top = first[:shown]
    dis_rows = [[r["index"], Path(r["path"]).name, r["target"], r["disagreement"]] for r in top]
    dis = _table(["index", "image", "target", "disagreement"], dis_rows,
                 "Where the methods disagree most (1 - mean pairwise Spearman correlation of their maps)")
    pictures: dict[str, list[Any]] = {"input": []}
    by_key = {(r["index"], r["method"]): r for r in table.filter(
        np.isin(np.array(table.column("index").to_pylist()), [r["index"] for r in top])).to_pylist()}
    for r in top:
        shape = None
        maps = {}
        for m in methods:
            row = by_key[(r["index"], m)]
            if row.get("array_file"):
                a = np.asarray(load_attribution(out, row), np.float64)
                maps[m] = np.abs(a).sum(axis=-1) if a.ndim == 3 else a
                shape = shape or a.shape[:2]
        try:
            img = read_image(r["path"], shape or (64, 64))
        except Exception:  # noqa: BLE001 - a file gone since the run: show a dash, not fail the page
            img = None
        pictures["input"].append(img)
        for m in methods:
            pictures.setdefault(m, []).append(
                None if img is None or m not in maps else overlay(img, maps[m], sign="absolute"))
    columns = [f"{Path(r['path']).name} ({r['disagreement']:.2f})" for r in top]
    rows = [(name, cells) for name, cells in pictures.items()]
    notes = (f"{len(set(table.column('index').to_pylist()))} images x {len(methods)} methods; "
             f"seed {config.seed}; attributions in OUT/shards/arrays-*.npz, table in OUT/results.parquet.")
    return write_gallery(out / "summary", title="polyviz run: summary", columns=columns, rows=rows,
                         table_html=agg + "\n" + dis, notes=notes)
