"""Localisation metrics: does the map put its relevance on the object? Each compares the map
(input-shaped attributions summed over channels, signed) with an object mask (N, H, W) at the
input's resolution, per sample. A sample whose mask is empty scores NaN (nothing to localise), as in
Quantus. The pointing game is in :mod:`polyviz.metrics.pointing`.

* :func:`relevance_mass_accuracy` and :func:`relevance_rank_accuracy`: Arras et al. 2022,
  "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network explanations",
  Information Fusion 81.
* :func:`attribution_localisation`: Kohlbrenner et al. 2020, "Towards Best Practice in Explaining
  Neural Network Decisions with LRP", IJCNN.
* :func:`top_k_intersection`: Theiner et al. 2021, "Interpretable Semantic Photo Geolocation",
  WACV 2022 (arXiv:2104.14995).
* :func:`auc`: Fawcett 2006, "An introduction to ROC analysis": the ROC AUC of the map as a
  classifier of object pixels.

Each takes the model (or None when ``attribution`` is given), ``x``, the masks and the target, and
either a method name with its options or precomputed attributions (an Explanation or an array; see
:func:`polyviz.metrics._common.given_attributions` for how a raw array's layout is read).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import as_map, check_masks, check_positive_int, given_attributions
from polyviz.metrics.info import metric
from polyviz.metrics.sanity import _ranks
from polyviz.preprocess import Preprocess

__all__ = ["relevance_mass_accuracy", "relevance_rank_accuracy", "attribution_localisation", "top_k_intersection",
           "auc", "localisation_maps"]


def _spatial(masks: Any) -> tuple[int, int]:
    shape = np.shape(masks)
    if len(shape) == 4 and shape[1] == 1:
        return int(shape[2]), int(shape[3])
    if len(shape) == 4 and shape[3] == 1:
        return int(shape[1]), int(shape[2])
    if len(shape) != 3:
        raise InputError(f"masks: expected one (H, W) mask per sample, (N, H, W), got shape {shape}")
    return int(shape[1]), int(shape[2])


def localisation_maps(model: Any, x: Any, masks: Any, target: Any = None, *, absolute: bool = False,
                      **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, H, W) float64, masks (N, H, W) bool): the attributions of ``method`` or the given
    ``attribution`` summed over channels (of ``|a|`` when ``absolute``), and the checked masks."""
    options = {**(kwargs.pop("method_options", None) or {}), **kwargs.pop("options", {})}
    a = given_attributions(model, x, target, options=options, spatial=_spatial(masks), **kwargs)
    maps = as_map(a, absolute=absolute)
    return maps, check_masks(masks, len(maps), maps.shape[1:])


def _empty_is_nan(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    values[masks.reshape(len(masks), -1).sum(axis=1) == 0] = np.nan
    return values


_DOC_ARGS = """
    ``method`` (any registered method; options as keywords or in ``method_options``) or
    ``attribution`` (an Explanation, or an array input-shaped or maps) gives the map; ``masks``:
    (N, H, W) object masks at the input's resolution. Returns (N,) float64 (NaN for an empty mask).
"""


def _common_kwargs(method: str | None, attribution: Any, layer: str | None, backend: str | None,
                   preprocess: Preprocess | str | None, layout: str | None, batch_size: int | None, seed: int,
                   progress: bool, method_options: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "attribution": attribution, "layer": layer, "backend": backend,
            "preprocess": preprocess, "layout": layout, "batch_size": batch_size, "seed": seed,
            "progress": progress, "method_options": method_options, "options": options}


@metric("localisation", higher_is_better=True, reference="Arras et al. 2022 (CLEVR-XAI)",
        checked="quantus.RelevanceMassAccuracy (aligned)")
def relevance_mass_accuracy(
    model: Any, x: Any, masks: Any, target: Any = None, *, method: str | None = "saliency",
    attribution: Any = None, absolute: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Relevance mass accuracy (Arras et al. 2022): the share of the map's total relevance that
    falls on the object, ``sum(R * mask) / sum(R)``, on the signed map (Quantus' default) or on
    ``|R|`` with ``absolute=True``. 1 when all relevance is on the object.
    """
    maps, m = localisation_maps(model, x, masks, target, absolute=absolute, **_common_kwargs(
        method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress, method_options, options))
    flat, mflat = maps.reshape(len(maps), -1), m.reshape(len(m), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (flat * mflat).sum(axis=1) / flat.sum(axis=1)
    return _empty_is_nan(values, m)


def _top(flat: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(N, P) bool: the k[i] largest values of each row (ties in index order)."""
    order = np.argsort(-flat, axis=1, kind="stable")
    chosen = np.zeros(flat.shape, bool)
    rank = np.arange(flat.shape[1])[None, :] < np.asarray(k)[:, None]
    np.put_along_axis(chosen, order, rank, axis=1)
    return chosen


@metric("localisation", higher_is_better=True, reference="Arras et al. 2022 (CLEVR-XAI)",
        checked="quantus.RelevanceRankAccuracy (aligned)")
def relevance_rank_accuracy(
    model: Any, x: Any, masks: Any, target: Any = None, *, method: str | None = "saliency",
    attribution: Any = None, absolute: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Relevance rank accuracy (Arras et al. 2022): with K the object's size in pixels, the
    fraction of the K highest-relevance pixels that lie on the object (ties broken by pixel order).
    """
    maps, m = localisation_maps(model, x, masks, target, absolute=absolute, **_common_kwargs(
        method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress, method_options, options))
    flat, mflat = maps.reshape(len(maps), -1), m.reshape(len(m), -1)
    k = mflat.sum(axis=1)
    hits = (_top(flat, k) & mflat).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _empty_is_nan(hits / k, m)


@metric("localisation", higher_is_better=True, reference="Kohlbrenner et al. 2020",
        checked="quantus.AttributionLocalisation (aligned)")
def attribution_localisation(
    model: Any, x: Any, masks: Any, target: Any = None, *, method: str | None = "saliency",
    attribution: Any = None, weighted: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Attribution localisation (Kohlbrenner et al. 2020): the share of the positive relevance
    that falls on the object, ``sum(R+ * mask) / sum(R+)`` (0 when the map has no positive
    relevance). ``weighted=True`` multiplies it by the object's share of the image,
    ``|mask| / (H * W)``, as Kohlbrenner et al.'s weighted variant (Quantus' ``weighted`` uses the
    wrong size there, ``x_batch[2:].size``; polyviz uses H * W).
    """
    maps, m = localisation_maps(model, x, masks, target, **_common_kwargs(
        method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress, method_options, options))
    flat, mflat = np.clip(maps.reshape(len(maps), -1), 0, None), m.reshape(len(m), -1)
    total = flat.sum(axis=1)
    values = np.where(total > 0, (flat * mflat).sum(axis=1) / np.where(total > 0, total, 1.0), 0.0)
    if weighted:
        values = values * mflat.mean(axis=1)
    return _empty_is_nan(values, m)


@metric("localisation", higher_is_better=True, reference="Theiner et al. 2021",
        checked="quantus.TopKIntersection (aligned)")
def top_k_intersection(
    model: Any, x: Any, masks: Any, target: Any = None, *, method: str | None = "saliency",
    attribution: Any = None, k: int = 1000, concept_influence: bool = False, absolute: bool = False,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Top-k intersection (Theiner et al. 2021): the fraction of the ``k`` highest-relevance pixels
    that lie on the object (default k = 1000 as in Quantus; at most H * W). ``concept_influence``:
    divided by the object's share of the image (> 1 when better than chance).
    """
    k = check_positive_int(k, "k")
    maps, m = localisation_maps(model, x, masks, target, absolute=absolute, **_common_kwargs(
        method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress, method_options, options))
    flat, mflat = maps.reshape(len(maps), -1), m.reshape(len(m), -1)
    if k > flat.shape[1]:
        raise InputError(f"k: expected at most H * W = {flat.shape[1]} pixels, got {k}")
    values = (_top(flat, np.full(len(flat), k)) & mflat).sum(axis=1) / k
    if concept_influence:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = values / mflat.mean(axis=1)
    return _empty_is_nan(values, m)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC per row of (N, P) scores against (N, P) bool labels, by the rank statistic
    (Mann-Whitney U / (P+ * P-), ties counted half, which equals the trapezoid area under the ROC
    curve); NaN where a row has only one class."""
    ranks = _ranks(np.asarray(scores, np.float64)) + 1.0
    pos = labels.sum(axis=1).astype(np.float64)
    neg = labels.shape[1] - pos
    u = (ranks * labels).sum(axis=1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), u / (pos * neg), np.nan)


@metric("localisation", higher_is_better=True, reference="Fawcett 2006 (ROC AUC)", checked="quantus.AUC (aligned)")
def auc(
    model: Any, x: Any, masks: Any, target: Any = None, *, method: str | None = "saliency",
    attribution: Any = None, absolute: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """AUC (Fawcett 2006): the area under the ROC curve of the map as a score for "this pixel is on
    the object" (1: every object pixel outranks every background pixel; 0.5: chance). NaN when the
    mask is empty or covers the whole image.
    """
    maps, m = localisation_maps(model, x, masks, target, absolute=absolute, **_common_kwargs(
        method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress, method_options, options))
    return roc_auc(maps.reshape(len(maps), -1), m.reshape(len(m), -1))


for _f in (relevance_mass_accuracy, relevance_rank_accuracy, attribution_localisation, top_k_intersection, auc):
    _f.__doc__ = (_f.__doc__ or "").rstrip() + "\n" + _DOC_ARGS
