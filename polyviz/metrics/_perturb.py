"""What the perturbation metrics (faithfulness, robustness) share: the common keyword arguments,
the target's score on many perturbed images built a batch at a time, baselines, seeded random
subsets, patch grids and row-wise correlations.

Features are pixels: every channel of a pixel is replaced together and a pixel's attribution is the
map value (an input-shaped attribution summed over channels, of ``|a|`` with ``absolute``). Quantus
treats each of the C x H x W values as a feature; on single-channel images both are the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import Setup, chunks, prepare, softmax

__all__ = ["COMMON", "setup_from", "scores", "check_score", "baseline_fill", "random_subsets", "patch_labels",
           "pearson", "ranks", "spearman"]

#: Keyword arguments every metric takes besides the method's own options.
COMMON = ("layer", "backend", "preprocess", "layout", "batch_size", "seed", "progress", "method_options")


def setup_from(model: Any, x: Any, target: Any, method: str | None, attribution: Any, kwargs: dict[str, Any],
               needs_method: bool = False) -> Setup:
    """:func:`prepare` from a metric's ``**kwargs``: the :data:`COMMON` ones, the rest method options.
    ``needs_method``: the metric recomputes explanations, so ``method`` is kept with ``attribution``."""
    common = {k: kwargs.pop(k) for k in COMMON if k in kwargs}
    options = {**(common.pop("method_options", None) or {}), **kwargs}
    return prepare(model, x, target, method=method if (attribution is None or needs_method) else None,
                   attribution=attribution, options=options, **common)


def check_score(score: str) -> str:
    if score not in ("probability", "logit"):
        raise InputError(f"score: expected 'probability' or 'logit', got {score!r}")
    return score


def scores(setup: Setup, rows: int, build: Callable[[slice], np.ndarray], targets: np.ndarray, score: str,
           desc: str, default: int = 64) -> np.ndarray:
    """The target's score (softmax probability or logit, float64) of ``rows`` perturbed images,
    ``build(slice)`` making the channels-last images of those rows, ``batch_size`` (default
    ``default``) rows per forward pass; ``targets`` is one class per row."""
    out = np.empty(rows)
    size = setup.batch_size or default
    for s in chunks(rows, size, desc, setup.progress):
        z = np.asarray(setup.backend.forward(np.ascontiguousarray(build(s), np.float32)), np.float64)
        z = softmax(z) if score == "probability" else z
        out[s] = z[np.arange(len(z)), targets[s]]
    return out


def baseline_fill(baseline: Any, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """What replaced pixels become, per image (N, H, W, C) float32: a number; ``"black"`` / ``"white"``
    (each image's minimum / maximum, Quantus' names); ``"mean"`` (each image's mean);
    ``"uniform"`` (uniform in [0, 1) per value, drawn from ``rng``)."""
    if isinstance(baseline, str):
        if baseline == "uniform":
            if rng is None:
                raise InputError("baseline: 'uniform' needs a seed")
            return rng.uniform(0.0, 1.0, x.shape).astype(np.float32)
        reducers = {"black": np.min, "white": np.max, "mean": np.mean}
        if baseline not in reducers:
            raise InputError(f"baseline: expected a number, 'black', 'white', 'mean' or 'uniform', got {baseline!r}")
        value = reducers[baseline](x.reshape(len(x), -1), axis=1)
        return np.broadcast_to(value[:, None, None, None], x.shape).astype(np.float32)
    if isinstance(baseline, bool) or not isinstance(baseline, int | float | np.number) or not np.isfinite(baseline):
        raise InputError(f"baseline: expected a number, 'black', 'white', 'mean' or 'uniform', got {baseline!r}")
    return np.full(x.shape, baseline, np.float32)


def random_subsets(n: int, runs: int, pixels: int, size: int, seed: int) -> np.ndarray:
    """(n, runs, size) pixel indices: for each image and run, ``size`` distinct pixels of ``pixels``
    drawn uniformly: the ``size`` smallest of uniform keys from ``numpy.random.default_rng(seed)``,
    one row of keys per run, image-major."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, runs, size), np.int64)
    for i in range(n):
        keys = rng.random((runs, pixels))
        out[i] = np.argpartition(keys, size - 1, axis=1)[:, :size] if size < pixels else np.argsort(keys, axis=1)
    return out


def patch_labels(h: int, w: int, patch: int) -> np.ndarray:
    """(H, W) int: the index of each pixel's square patch on a ``patch``-pixel grid from the top left,
    raster order (the last row and column of patches are smaller where H or W is not a multiple)."""
    cols = -(-w // patch)
    return (np.arange(h)[:, None] // patch) * cols + np.arange(w)[None, :] // patch


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either row is constant, as scipy)."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=-1, keepdims=True)
    b = np.asarray(b, np.float64) - np.mean(b, axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their average rank (scipy's ``rankdata``)."""
    a = np.asarray(a, np.float64)
    order = np.argsort(a, axis=-1, kind="stable")
    s = np.take_along_axis(a, order, -1)
    out = np.empty_like(a)
    flat_s, flat_o, flat_out = s.reshape(-1, a.shape[-1]), order.reshape(-1, a.shape[-1]), out.reshape(-1, a.shape[-1])
    for row, (sv, ov) in enumerate(zip(flat_s, flat_o)):
        new = np.r_[True, sv[1:] != sv[:-1]]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], len(sv)]
        avg = (starts + ends - 1) / 2.0 + 1
        flat_out[row, ov] = np.repeat(avg, ends - starts)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation along the last axis (average ranks for ties)."""
    return pearson(ranks(a), ranks(b))
