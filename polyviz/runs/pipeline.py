"""The one pipeline both engines run, a shard at a time: read -> preprocess -> explain -> score ->
encode. :class:`ShardWorker` loads the model once (in the driver for the in-process engine, once
per actor for Ray) and turns a shard's images into its two files' bytes (:mod:`polyviz.runs.store`).

Per image and method the row holds: the path, index, label, target (the predicted class or the
label), the model's logit and probability for it, the predicted class, every metric, the image's
``disagreement`` between methods, and where the attribution is stored. ``disagreement``: 1 minus
the mean pairwise Spearman rank correlation of the methods' magnitude maps (``explanation_map``:
a CAM's layer-resolution map, else ``|attribution|`` summed over channels), each bilinearly
resized to 16 x 16; 0 with one method.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.loading import ImageReadError, read_image
from polyviz.runs.sources import Item, read_mask
from polyviz.runs.spec import RunConfig, metric_kwargs, shard_seed

__all__ = ["ShardWorker", "ShardOutput", "DISAGREEMENT_GRID"]

DISAGREEMENT_GRID = 16


class NamedBytes(io.BytesIO):
    """Image bytes read by Ray Data, named by their path in error messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self._name = name

    def __str__(self) -> str:
        return self._name


@dataclass
class ShardOutput:
    """A computed shard: its rows (dicts), attributions {method: (n_ok, ...) float32}, the input
    indices they belong to, and the skipped images (index, path, message)."""

    shard: int
    rows: list[dict[str, Any]]
    index: np.ndarray
    arrays: dict[str, np.ndarray]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def encode(self) -> tuple[bytes, bytes]:
        """(rows as Parquet bytes or b'' when none, arrays as .npz bytes): what a Ray actor sends back."""
        from polyviz.runs.store import encode_arrays, encode_rows

        return encode_rows(self.rows), encode_arrays(self)


def _maps(expl: Any) -> np.ndarray:
    from polyviz.metrics.pointing import explanation_map
    from polyviz.render.images import resize_map

    maps = explanation_map(expl)
    g = DISAGREEMENT_GRID
    return np.stack([resize_map(m.astype(np.float32), (g, g)).reshape(-1) for m in maps])


def disagreement(maps: list[np.ndarray]) -> np.ndarray:
    """(N,) 1 - mean pairwise Spearman correlation of the methods' (N, P) maps; 0 for one method."""
    from polyviz.metrics.sanity import spearman

    n = len(maps[0])
    if len(maps) < 2:
        return np.zeros(n)
    pairs = [spearman(maps[i], maps[j]) for i in range(len(maps)) for j in range(i + 1, len(maps))]
    return 1.0 - np.mean(pairs, axis=0)


class ShardWorker:
    """Loads the model once; :meth:`run` computes one shard. Picklable config in, bytes out."""

    def __init__(self, config: RunConfig) -> None:
        from polyviz.registry import backend_for

        self.config = config
        self.model, self.size, pre = config.model.load()  # held: the backend refers to it weakly
        self.backend = backend_for(self.model, preprocess=pre)

    # ---- reading ------------------------------------------------------------------------------
    def read(self, items: list[Item], data: dict[str, bytes] | None = None
             ) -> tuple[list[Item], np.ndarray, list[tuple[int, str, str]]]:
        """The shard's readable images (H, W, 3) in [0, 1] and the skipped ones. ``data``: the
        files' bytes by path (read by Ray Data); None: read from disk here."""
        good, images, skipped = [], [], []
        for it in items:
            try:
                if data is not None:
                    if it.path not in data:
                        raise ImageReadError(f"images: no such file {it.path!r}", it.path)  # type: ignore[arg-type]
                    src: Any = NamedBytes(data[it.path], it.path)
                else:
                    src = it.path
                images.append(read_image(src, self.size))
                good.append(it)
            except ImageReadError as exc:
                skipped.append((it.index, it.path, str(exc)))
        h, w = self.size
        x = np.stack(images) if images else np.zeros((0, h, w, 3), np.float32)
        return good, x.astype(np.float32, copy=False), skipped

    # ---- computing ----------------------------------------------------------------------------
    def run(self, shard: int, items: list[Item], data: dict[str, bytes] | None = None) -> ShardOutput:
        good, x, skipped = self.read(items, data)
        index = np.array([it.index for it in good], np.int64)
        if not good:
            return ShardOutput(shard, [], index, {}, skipped)
        return self.compute(shard, good, x, skipped)

    def compute(self, shard: int, items: list[Item], x: np.ndarray, skipped: list[tuple[int, str, str]]) -> ShardOutput:
        from polyviz.api import explain, predict
        from polyviz.metrics import METRICS
        from polyviz.metrics._common import softmax

        cfg = self.config
        be = self.backend
        seed = shard_seed(cfg.seed, shard)
        n = len(items)
        logits = predict(be, x, cfg.batch_size).astype(np.float64)
        pred = logits.argmax(axis=1)
        if cfg.target == "label":
            missing = [it.path for it in items if it.label is None]
            if missing:
                raise InputError(f"target: 'label' needs a label for every image; {missing[0]!r} has none")
            targets = np.array([it.label for it in items], np.int64)
            if (targets >= logits.shape[1]).any():
                raise InputError(f"target: label {int(targets.max())} is out of range for {logits.shape[1]} classes")
        else:
            targets = pred.astype(np.int64)
        probs = softmax(logits)
        masks_list = [read_mask(it, self.size) for it in items]
        masks = np.stack(masks_list) if all(m is not None for m in masks_list) else None
        arrays: dict[str, np.ndarray] = {}
        maps, per_method = [], []
        for method, opts in cfg.methods:
            opts = dict(opts)
            layer = opts.pop("layer", None)
            expl = explain(be, x, method, target=targets, layer=layer, layout="NHWC", batch_size=cfg.batch_size,
                           seed=seed, progress=False, **opts)
            if cfg.store_arrays:
                arrays[method] = np.asarray(expl.attribution, np.float32)
            maps.append(_maps(expl))
            values = {}
            available = {"model": be, "x": x, "target": targets, "masks": masks, "method": method,
                         "method_options": opts or None, "attribution": expl, "layer": layer, "seed": seed,
                         "batch_size": cfg.batch_size, "progress": False, "layout": "NHWC"}
            for metric, mopts in cfg.metrics:
                kwargs = metric_kwargs(METRICS[metric].fn, available, mopts)
                if kwargs is None:  # needs what this data set lacks (masks): not applicable
                    values[metric] = np.full(n, np.nan)
                    continue
                out = METRICS[metric].fn(**kwargs)
                out = getattr(out, "auc", out)
                v = np.asarray(out, np.float64)
                if v.shape != (n,):
                    warnings.warn(f"metric {metric!r} returned shape {v.shape}, not one value per image; left empty",
                                  stacklevel=2)
                    v = np.full(n, np.nan)
                values[metric] = v
            per_method.append(values)
        dis = disagreement(maps)
        rows = []
        for i, it in enumerate(items):
            for k, (method, _) in enumerate(cfg.methods):
                row: dict[str, Any] = {
                    "index": it.index, "path": it.path, "label": it.label, "method": method,
                    "target": int(targets[i]), "score": float(logits[i, targets[i]]),
                    "probability": float(probs[i, targets[i]]), "predicted": int(pred[i]),
                }
                for metric, _ in cfg.metrics:
                    row[metric] = float(per_method[k][metric][i])
                row["disagreement"] = float(dis[i])
                row["shard"] = shard
                row["array_file"] = f"shards/arrays-{shard:06d}.npz" if cfg.store_arrays else None
                row["array_key"] = method if cfg.store_arrays else None
                row["array_row"] = i if cfg.store_arrays else None
                rows.append(row)
        return ShardOutput(shard, rows, np.array([it.index for it in items], np.int64), arrays, skipped)
