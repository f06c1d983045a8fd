"""Complexity metrics: how concentrated is the explanation? Each looks only at the attribution's
values (every element of an input-shaped attribution, or every pixel of a map), so the layout of a
raw array does not matter.

* :func:`sparseness`: Chalasani et al. 2020, "Concise Explanations of Neural Networks using
  Adversarial Training", ICML (the Gini index of ``|a|``).
* :func:`complexity`: Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model
  Explanations", IJCAI (the entropy of the fractional contributions ``|a_i| / sum |a|``).
* :func:`effective_complexity`: Nguyen & Martinez 2020, "On Quantitative Aspects of Model
  Interpretability", arXiv:2007.07584 (the number of attributions above a threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import given_attributions
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess

__all__ = ["sparseness", "complexity", "effective_complexity", "gini", "entropy"]


def _values(model: Any, x: Any, target: Any, method: str | None, attribution: Any, layer: str | None,
            backend: str | None, preprocess: Preprocess | str | None, layout: str | None, batch_size: int | None,
            seed: int, progress: bool, options: dict[str, Any]) -> np.ndarray:
    """(N, P) float64 ``|a|``, one row per sample."""
    a = given_attributions(model, x, target, method=method, attribution=attribution, options=options, spatial=None,
                           layer=layer, backend=backend, preprocess=preprocess, layout=layout,
                           batch_size=batch_size, seed=seed, progress=progress)
    return np.abs(a.astype(np.float64)).reshape(len(a), -1)


def gini(values: np.ndarray) -> np.ndarray:
    """Gini index per row of non-negative (N, P) values, ``sum_k (2k - P - 1) v_(k) / (P sum v)`` with
    ``v_(k)`` sorted ascending (Hurley & Rickard 2009): 0 for a flat row, (P - 1) / P for one
    non-zero value; 0 for an all-zero row."""
    v = np.sort(np.asarray(values, np.float64), axis=1)
    p = v.shape[1]
    weights = 2 * np.arange(1, p + 1) - p - 1
    total = v.sum(axis=1)
    return np.where(total > 0, (v * weights).sum(axis=1) / (p * np.where(total > 0, total, 1.0)), 0.0)


def entropy(values: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) per row of the fractions ``v_i / sum v`` (0 log 0 = 0); 0 for an
    all-zero row."""
    v = np.asarray(values, np.float64)
    total = v.sum(axis=1, keepdims=True)
    p = v / np.where(total > 0, total, 1.0)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


@metric("complexity", higher_is_better=True, reference="Chalasani et al. 2020 (Gini index)",
        checked="quantus.Sparseness (aligned)")
def sparseness(
    model: Any, x: Any = None, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Sparseness (Chalasani et al. 2020): the Gini index of ``|a|`` over every value of the
    attribution (:func:`gini`), (N,) float64 in [0, 1); higher is sparser (more concise). Quantus
    adds 1e-7 to every value first (after normalising the maximum to 1), which moves its values
    by about 1e-7; polyviz uses the exact index (0 for an all-zero map).

    ``model`` may be None when ``attribution`` (an Explanation or array) is given.
    """
    v = _values(model, x, target, method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress,
                {**(method_options or {}), **options})
    return gini(v)


@metric("complexity", higher_is_better=False, reference="Bhatt et al. 2020 (entropy)",
        checked="quantus.Complexity (aligned)")
def complexity(
    model: Any, x: Any = None, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Complexity (Bhatt et al. 2020): the entropy ``-sum_i P_i log P_i`` of the fractional
    contributions ``P_i = |a_i| / sum_j |a_j|`` over every value of the attribution (:func:`entropy`),
    (N,) float64 in nats, between 0 (one value carries everything) and ``log P`` (flat); lower is
    simpler. Quantus writes ``log(P_i + 1e-12)``; the difference is below 1e-11.
    """
    v = _values(model, x, target, method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress,
                {**(method_options or {}), **options})
    return entropy(v)


@metric("complexity", higher_is_better=False, reference="Nguyen & Martinez 2020",
        checked="quantus.EffectiveComplexity (aligned)")
def effective_complexity(
    model: Any, x: Any = None, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    eps: float = 1e-5, relative: bool = True, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Effective complexity (Nguyen & Martinez 2020): the number of attribution values whose
    magnitude exceeds ``eps``, (N,) int; fewer is simpler. Attributions are raw and their scale is
    the method's, so by default (``relative=True``) the threshold is relative to each sample's
    largest magnitude, ``|a_i| > eps * max |a|`` (what Quantus computes after its default
    normalisation by the maximum, which by default is the whole batch's maximum, so that one
    sample's count depends on the others; polyviz's is per sample); ``relative=False`` uses ``eps`` in attribution units, as the
    paper writes it.
    """
    if not isinstance(eps, int | float) or eps < 0:
        raise InputError(f"eps: expected a number >= 0, got {eps!r}")
    v = _values(model, x, target, method, attribution, layer, backend, preprocess, layout, batch_size, seed, progress,
                {**(method_options or {}), **options})
    threshold = eps * v.max(axis=1, keepdims=True) if relative else eps
    return (v > threshold).sum(axis=1)
