"""What a dataset run reads: the list of images (a folder, a glob or a manifest), with optional
labels, object masks and boxes, cut into shards of consecutive images.

Only the list is held in memory (a path, a label and a mask path per image: about 0.2 kB an image,
10 MB for ImageNet-val); the pixels are read shard by shard. ``write_shapes_folder`` writes the
shapes data set (:func:`polyviz.datasets.shapes`) as PNG files, masks and a manifest, for trying a
run end to end.
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.loading import IMAGE_SUFFIXES

__all__ = ["Item", "list_inputs", "shards_of", "read_mask", "write_shapes_folder", "inputs_digest"]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Item:
    """One input image: its position ``index`` in the run, its ``path``, and optionally its class
    ``label``, an object ``mask`` file (non-zero pixels are the object) or a ``box`` (x0, y0, x1, y1)
    in the image's own pixels."""

    index: int
    path: str
    label: int | None = None
    mask: str | None = None
    box: tuple[float, float, float, float] | None = None


def _label(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected an integer class label, got {value!r}") from None
    if out < 0 or out != float(value):
        raise InputError(f"{where}: expected an integer class label >= 0, got {value!r}")
    return out


def _box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return None
    parts = value if isinstance(value, (list, tuple, np.ndarray)) else str(value).replace(",", " ").split()
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise InputError(f"{where}: expected a box 'x0 y0 x1 y1' with x0 < x1 and y0 < y1, got {value!r}")
    return box  # type: ignore[return-value]


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("inputs: reading a Parquet manifest needs pyarrow: pip install 'polyviz[runs]'") from None
    return pq.read_table(path).to_pylist()


def _from_manifest(path: Path) -> list[Item]:
    rows = _manifest_rows(path)
    if not rows:
        raise InputError(f"inputs: the manifest {str(path)!r} has no rows")
    if "path" not in rows[0]:
        raise InputError(f"inputs: the manifest {str(path)!r} needs a 'path' column, has {sorted(rows[0])}")
    base = path.parent
    items = []
    for i, row in enumerate(rows):
        where = f"inputs: {path.name} row {i + 2 if path.suffix.lower() == '.csv' else i}"
        p = row.get("path")
        if not p:
            raise InputError(f"{where}: empty path")
        mask = row.get("mask") or None
        items.append(Item(i, str(base / p) if not Path(p).is_absolute() else str(p), _label(row.get("label"), where),
                          None if mask is None else (str(base / mask) if not Path(mask).is_absolute() else str(mask)),
                          _box(row.get("box"), where)))
    return items


def list_inputs(inputs: str | Path | list[str | Path], masks: str | Path | None = None) -> list[Item]:
    """The images of ``inputs``: a folder (its image files in name order), a glob pattern
    (``'data/**/*.jpg'``, sorted), a manifest (``.csv`` or ``.parquet`` with a ``path`` column,
    optional ``label``, ``mask`` and ``box`` columns; relative paths are relative to the manifest),
    or a list of those. ``masks``: a folder of mask images with the same file names as the images
    (for folder and glob inputs). Paths must be unique: a run has one row per image and method."""
    given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not given:
        raise InputError("inputs: give a folder, a glob pattern or a manifest (.csv, .parquet)")
    items: list[Item] = []
    for entry in given:
        p = Path(entry)
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            found = _from_manifest(p)
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"inputs: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {str(p)!r}")
            found = [Item(0, str(f)) for f in files]
        elif p.is_file():
            found = [Item(0, str(p))]
        elif any(ch in str(entry) for ch in "*?["):
            files = sorted(f for f in globlib.glob(str(entry), recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"inputs: the pattern {str(entry)!r} matches no image files")
            found = [Item(0, f) for f in files]
        else:
            raise InputError(f"inputs: no such folder, file or manifest {str(entry)!r}")
        items += found
    if masks is not None:
        folder = Path(masks)
        if not folder.is_dir():
            raise InputError(f"masks: expected a folder of mask images, got {str(masks)!r}")
        items = [Item(0, it.path, it.label, str(folder / Path(it.path).name), it.box) for it in items]
    seen: set[str] = set()
    out = []
    for i, it in enumerate(items):
        if it.path in seen:
            raise InputError(f"inputs: {it.path!r} is listed twice; a run has one row per image and method")
        seen.add(it.path)
        out.append(Item(i, it.path, it.label, it.mask, it.box))
    return out


def inputs_digest(items: list[Item]) -> str:
    """A short hash of the input list (paths, labels, masks, boxes, in order): a resumed run must
    see the same list, or its shards would mean other images."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.path, it.label, it.mask, it.box]).encode())
    return h.hexdigest()[:16]


def shards_of(items: list[Item], shard_size: int) -> list[list[Item]]:
    """Shard k holds items ``k * shard_size`` to ``(k + 1) * shard_size - 1``: the unit of work."""
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


def read_mask(item: Item, size: tuple[int, int]) -> np.ndarray | None:
    """The item's object mask (H, W) bool at the model's input ``size``: its mask file (non-zero
    pixels, nearest-neighbour resized) or its box (scaled from the image's own size); None without
    either."""
    from PIL import Image

    h, w = size
    if item.mask is not None:
        try:
            with Image.open(item.mask) as im:
                m = np.asarray(im.convert("L").resize((w, h), Image.NEAREST)) > 0
        except (OSError, ValueError) as exc:
            raise InputError(f"masks: cannot read mask {item.mask!r} of {item.path!r} ({type(exc).__name__})") from None
        return m
    if item.box is not None:
        with Image.open(item.path) as im:
            iw, ih = im.size
        x0, y0, x1, y1 = item.box
        yy = (np.arange(h) + 0.5) * ih / h
        xx = (np.arange(w) + 0.5) * iw / w
        return ((yy >= y0) & (yy < y1))[:, None] & ((xx >= x0) & (xx < x1))[None, :]
    return None


def write_shapes_folder(folder: str | Path, n: int, *, seed: int = 7, size: int = 64) -> Path:
    """Write ``n`` images of the shapes data set (``polyviz.datasets.shapes(n, seed, size)``) as
    ``folder/shape-00000.png``..., their object masks as ``folder/masks/shape-00000.png`` and a
    ``folder/manifest.csv`` (path, label, mask). Returns the manifest's path. Seed 7 (the default)
    is the demo's held-out images, not the demo model's training seed."""
    from PIL import Image

    from polyviz.datasets import shapes

    out = Path(folder)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,mask"]
    for start in range(0, n, 256):
        data = shapes(min(256, n - start), seed=seed + start, size=size) if start else shapes(min(256, n), seed, size)
        for j in range(len(data)):
            name = f"shape-{start + j:05d}.png"
            Image.fromarray(np.round(data.images[j] * 255).astype(np.uint8)).save(out / name)
            Image.fromarray(data.masks[j].astype(np.uint8) * 255).save(out / "masks" / name)
            lines.append(f"{name},{int(data.labels[j])},masks/{name}")
    manifest = out / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
