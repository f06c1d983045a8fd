"""Faithfulness by removing regions cumulatively, most relevant first: region perturbation (Samek et
al. 2017), selectivity (Montavon et al. 2018) and IROF (Rieger & Hansen 2020).

Regions are square patches on a grid from the top-left corner (region perturbation, selectivity;
the last row and column of patches are smaller when the image is not a multiple of the patch) or
given segments (IROF). After k steps the k most relevant regions hold the ``baseline``; every
step's image is built in numpy and all of them go through the backend ``batch_size`` at a time.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import Setup, as_map, attributions, check_positive_int
from polyviz.metrics._perturb import baseline_fill, check_score, patch_labels, scores, setup_from
from polyviz.metrics.info import metric

__all__ = ["region_perturbation", "selectivity", "irof", "RegionCurves", "grid_segments"]


class RegionCurves(NamedTuple):
    """``value`` (N,) the metric, ``scores`` (N, L + 1) the target's score after 0, 1, ..., L regions
    were replaced."""

    value: np.ndarray
    scores: np.ndarray


def grid_segments(n: int, h: int, w: int, patch: int) -> np.ndarray:
    """(N, H, W) int: square ``patch``-pixel regions, numbered in raster order."""
    return np.broadcast_to(patch_labels(h, w, patch), (n, h, w)).copy()


def _removal_scores(setup: Setup, segments: np.ndarray, relevance: np.ndarray, steps: int, fill: np.ndarray,
                    score: str, desc: str) -> np.ndarray:
    """(N, steps + 1) scores after replacing the 0..steps regions of highest ``relevance`` (N, G)
    (ties in region order) by ``fill``."""
    n = len(setup.x)
    order = np.argsort(-relevance, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(relevance.shape[1])[None, :], axis=1)
    pixel_rank = np.take_along_axis(rank, segments.reshape(n, -1), axis=1).reshape(segments.shape)
    image, k = np.repeat(np.arange(n), steps + 1), np.tile(np.arange(steps + 1), n)

    def build(s: slice) -> np.ndarray:
        gone = (pixel_rank[image[s]] < k[s][:, None, None])[..., None]
        return np.where(gone, fill[image[s]], setup.x[image[s]])

    return scores(setup, n * (steps + 1), build, np.repeat(setup.targets, steps + 1), score, desc).reshape(n, -1)


def _patch_curves(model: Any, x: Any, target: Any, method: str | None, attribution: Any, patch_size: int,
                  order: str, n_regions: int | None, baseline: Any, absolute: bool, score: str,
                  kwargs: dict[str, Any], desc: str) -> tuple[Setup, np.ndarray]:
    patch_size = check_positive_int(patch_size, "patch_size")
    if order not in ("morf", "lerf"):
        raise InputError(f"order: expected 'morf' or 'lerf', got {order!r}")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    n, h, w, _ = setup.x.shape
    maps = as_map(attributions(setup, attribution), absolute)
    segments = grid_segments(n, h, w, patch_size)
    g = int(segments.max()) + 1
    relevance = np.stack([np.bincount(segments[i].ravel(), maps[i].ravel(), minlength=g) for i in range(n)])
    if order == "lerf":
        relevance = -relevance
    steps = g if n_regions is None else min(check_positive_int(n_regions, "n_regions"), g)
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed))
    return setup, _removal_scores(setup, segments, relevance, steps, fill, score, desc)


@metric("faithfulness", higher_is_better=True, reference="Samek et al. 2017 (region perturbation, AOPC)",
        checked="quantus.RegionPerturbation (aligned)")
def region_perturbation(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    patch_size: int = 8, order: str = "morf", n_regions: int | None = None, baseline: Any = "uniform",
    absolute: bool = False, score: str = "probability", return_curves: bool = False, **kwargs: Any,
) -> np.ndarray | RegionCurves:
    """Region perturbation per sample (N,), Samek et al. 2017, "Evaluating the Visualization of What
    a Deep Neural Network Has Learned" (IEEE TNNLS), eq. 12: the area over the perturbation curve
    ``AOPC = 1/(L+1) sum_{k=0..L} (f(x) - f(x_MoRF^(k)))``, the k-th image with the k most relevant
    ``patch_size`` squares (sum of the map) replaced, ``order="morf"`` (higher is better) or least
    relevant first (``"lerf"``, lower is better). ``baseline="uniform"`` (the paper: uniform values,
    drawn from ``seed``), a number, ``"black"``, ``"white"`` or ``"mean"``. ``n_regions``: L
    (default: all patches). Quantus pads the image to a multiple of the patch; here the last patches
    are smaller."""
    setup, f = _patch_curves(model, x, target, method, attribution, patch_size, order, n_regions, baseline,
                             absolute, score, kwargs, "region perturbation")
    value = (f[:, :1] - f).mean(axis=1)
    return RegionCurves(value, f) if return_curves else value


@metric("faithfulness", higher_is_better=False, reference="Montavon et al. 2018 (selectivity)",
        checked="quantus.Selectivity (aligned)")
def selectivity(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    patch_size: int = 8, baseline: Any = 0.0, absolute: bool = False, score: str = "probability",
    return_curves: bool = False, **kwargs: Any,
) -> np.ndarray | RegionCurves:
    """Selectivity per sample (N,), Montavon, Samek & Mueller 2018, "Methods for Interpreting and
    Understanding Deep Neural Networks" (Digital Signal Processing), section 5.1: remove the
    ``patch_size`` squares most relevant first (replaced by ``baseline``) and record how fast the
    target's score drops; the value is the area under the curve of scores over the fraction of
    patches removed (trapezoid on [0, 1]); a fast drop, a small area, is better."""
    setup, f = _patch_curves(model, x, target, method, attribution, patch_size, "morf", None, baseline,
                             absolute, score, kwargs, "selectivity")
    value = np.trapezoid(f, np.linspace(0, 1, f.shape[1]), axis=1)
    return RegionCurves(value, f) if return_curves else value


@metric("faithfulness", higher_is_better=True, reference="Rieger & Hansen 2020 (IROF)",
        checked="quantus.IROF (same SLIC segments)")
def irof(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    segments: np.ndarray | None = None, patch_size: int = 8, baseline: Any = "mean", absolute: bool = False,
    score: str = "probability", return_curves: bool = False, **kwargs: Any,
) -> np.ndarray | RegionCurves:
    """IROF per sample (N,), Rieger & Hansen 2020, "IROF: a low resource evaluation metric for
    explanation methods" (arXiv:2003.08747): segments are ranked by their mean attribution and
    replaced cumulatively (by each image's mean, ``baseline="mean"``); the curve is the target's
    score relative to the unperturbed one, ``c_k = f(x_k) / f(x)`` for k = 0..K, and IROF is the area
    over it, ``1 - trapezoid(c, k / K)`` (higher is better).

    ``segments``: (N, H, W) int labels 0..K-1, e.g. ``skimage.segmentation.slic`` superpixels as in
    the paper (pass them in; polyviz does not depend on scikit-image); default a square grid of
    ``patch_size``. Quantus reports ``K - trapezoid(c_1..c_K, dx=1)``, which is ``K * IROF + (1 +
    c_1) / 2``."""
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    n, h, w, _ = setup.x.shape
    if segments is None:
        segments = grid_segments(n, h, w, check_positive_int(patch_size, "patch_size"))
    segments = np.asarray(segments)
    if segments.shape != (n, h, w) or not np.issubdtype(segments.dtype, np.integer) or segments.min() < 0:
        raise InputError(f"segments: expected ({n}, {h}, {w}) integer labels >= 0, got {segments.dtype} {segments.shape}")
    maps = as_map(attributions(setup, attribution), absolute)
    g = int(segments.max()) + 1
    counts = np.stack([np.bincount(segments[i].ravel(), minlength=g) for i in range(n)])
    sums = np.stack([np.bincount(segments[i].ravel(), maps[i].ravel(), minlength=g) for i in range(n)])
    relevance = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)  # absent labels come last
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed))
    f = _removal_scores(setup, segments, relevance, g, fill, score, "irof")
    k_seg = (counts > 0).sum(axis=1)
    curves = f / f[:, :1]
    value = np.array([1 - np.trapezoid(curves[i, : k + 1], np.linspace(0, 1, k + 1)) for i, k in enumerate(k_seg)])
    return RegionCurves(value, curves) if return_curves else value
