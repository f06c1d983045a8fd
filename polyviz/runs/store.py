"""The run folder: what is written, when, and how a resumed run knows what is done.

::

    OUT/manifest.json                what was done: versions, options, seed, inputs, timings
    OUT/shards/rows-000012.parquet   shard 12's rows (one per image x method)
    OUT/shards/arrays-000012.npz     shard 12's attributions, one array per method, + index, skipped
    OUT/results.parquet              all rows, sorted by (index, method order): written at the end
    OUT/skipped.csv                  the images that could not be read, and why
    OUT/summary/index.html           the summary page (:mod:`polyviz.runs.summary`)

**Why .npz shards.** One uncompressed ``.npz`` per shard is readable by numpy alone
(``np.load(f)['gradcam'][row]``, ``allow_pickle=False``), needs no extra dependency, and is
appended to by adding files: a shard file is written once, whole, to a temporary name and renamed
(:mod:`polyviz.render._atomic`), so a reader or a resumed run never sees half of one. Zarr or HDF5
would append inside one file, which is exactly what cannot be made atomic without a lock; a
Parquet list column would make arrays of different shapes (CAM maps, input-shaped gradients)
awkward to read back.

**Nothing lost, nothing twice.** A shard is done when its ``arrays-*.npz`` exists: it is renamed
into place after its rows file, so a killed process leaves at worst a rows file without arrays,
which the next run rewrites. A resumed run computes exactly the shards without an arrays file; the
final table is rebuilt from the shard files, so it has one row per readable image and method.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.render._atomic import atomic_write, write_bytes

__all__ = ["encode_rows", "encode_arrays", "write_shard", "done_shards", "finalize", "read_results",
           "load_attribution", "rows_path", "arrays_path"]


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("out: writing the Parquet table needs pyarrow: pip install 'polyviz[runs]'") from None
    return pa, pq


def rows_path(out: Path, shard: int) -> Path:
    return out / "shards" / f"rows-{shard:06d}.parquet"


def arrays_path(out: Path, shard: int) -> Path:
    return out / "shards" / f"arrays-{shard:06d}.npz"


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    if not rows:
        return b""
    pa, pq = _pyarrow()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def encode_arrays(output: Any) -> bytes:
    skipped = output.skipped
    arrays = {"index": np.asarray(output.index, np.int64),
              "skipped_index": np.array([s[0] for s in skipped], np.int64),
              "skipped_path": np.array([s[1] for s in skipped], dtype=str),
              "skipped_error": np.array([s[2] for s in skipped], dtype=str)}
    for method, a in output.arrays.items():
        arrays[method] = np.ascontiguousarray(a, np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_shard(out: Path, shard: int, rows: bytes, arrays: bytes) -> None:
    """Commit one shard: rows first, then the arrays file whose existence marks it done."""
    if rows:
        write_bytes(rows_path(out, shard), rows)
    else:
        rows_path(out, shard).unlink(missing_ok=True)
    write_bytes(arrays_path(out, shard), arrays)


def done_shards(out: Path) -> set[int]:
    folder = out / "shards"
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("arrays-*.npz")}


def finalize(out: Path, n_shards: int, methods: list[str]) -> tuple[int, list[tuple[int, str, str]]]:
    """Write ``results.parquet`` and ``skipped.csv`` from the shard files; (rows, skipped)."""
    pa, pq = _pyarrow()
    tables, skipped = [], []
    for k in range(n_shards):
        with np.load(arrays_path(out, k), allow_pickle=False) as z:
            skipped += list(zip(z["skipped_index"].tolist(), z["skipped_path"].tolist(),
                                z["skipped_error"].tolist(), strict=True))
        if rows_path(out, k).exists():
            tables.append(pq.read_table(rows_path(out, k)))
    order = {m: i for i, m in enumerate(methods)}
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
        keys = np.lexsort((np.array([order[m] for m in table.column("method").to_pylist()]),
                           table.column("index").to_numpy()))
        table = table.take(pa.array(keys))
        atomic_write(out / "results.parquet", lambda fh: pq.write_table(table, fh))
        n_rows = table.num_rows
    else:
        (out / "results.parquet").unlink(missing_ok=True)
        n_rows = 0
    skipped.sort()
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["index", "path", "error"])
    w.writerows(skipped)
    write_bytes(out / "skipped.csv", text.getvalue().encode())
    return n_rows, skipped


def read_results(out: str | Path) -> Any:
    """The run's results table as a pyarrow Table."""
    _, pq = _pyarrow()
    return pq.read_table(Path(out) / "results.parquet")


def load_attribution(out: str | Path, row: dict[str, Any]) -> np.ndarray:
    """The attribution of one results row (channels-last, raw float32)."""
    with np.load(Path(out) / row["array_file"], allow_pickle=False) as z:
        return z[row["array_key"]][int(row["array_row"])]


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
