"""Faithfulness by removing pixels and correlating: faithfulness correlation (Bhatt et al. 2020),
faithfulness estimate (Alvarez-Melis & Jaakkola 2018), monotonicity (Arya et al. 2019),
monotonicity correlation (Nguyen & Martinez 2020) and sensitivity-n (Ancona et al. 2018).

Features are pixels (all channels of a pixel change together, a pixel's attribution is the map
value, see :mod:`polyviz.metrics._perturb`); ``step`` pixels form one feature where a metric walks
over all of them in attribution order, most important first, ties in raster order. Every perturbed
image is built in numpy and sent through the backend ``batch_size`` at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import Setup, as_map, attributions, check_positive_int
from polyviz.metrics._perturb import (
    baseline_fill,
    check_score,
    pearson,
    random_subsets,
    scores,
    setup_from,
    spearman,
)
from polyviz.metrics.info import metric

__all__ = ["faithfulness_correlation", "faithfulness_estimate", "monotonicity", "monotonicity_correlation",
           "sensitivity_n", "feature_groups"]


def feature_groups(maps: np.ndarray, step: int, descending: bool = True) -> np.ndarray:
    """(N, H * W) the group of each pixel: the first ``step`` pixels in attribution order (descending,
    or ascending), ties in raster order, are group 0, and so on."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    order = np.argsort(-flat if descending else flat, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(flat.shape[1])[None, :], axis=1)
    return rank // step


def _base(setup: Setup, score: str) -> np.ndarray:
    return scores(setup, len(setup.x), lambda s: setup.x[s], setup.targets, score, "inputs")


def _flat(setup: Setup) -> tuple[np.ndarray, int, int]:
    n, h, w, c = setup.x.shape
    return setup.x.reshape(n, h * w, c), h * w, c


@metric("faithfulness", higher_is_better=True, reference="Bhatt et al. 2020 (faithfulness correlation)",
        checked="quantus.FaithfulnessCorrelation (aligned draws); closed form on a linear model")
def faithfulness_correlation(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    n_runs: int = 100, subset_size: int = 224, baseline: Any = 0.0, absolute: bool = False,
    score: str = "probability", **kwargs: Any,
) -> np.ndarray:
    """Faithfulness correlation per sample (N,), Bhatt, Weller & Moura 2020, "Evaluating and
    Aggregating Feature-based Model Explanations" (IJCAI), eq. 2:
    ``corr_{S, |S| = subset_size} (sum_{i in S} a_i, f(x) - f(x_[x_S = baseline]))``, the Pearson
    correlation over ``n_runs`` random pixel subsets S (drawn from ``seed``,
    :func:`~polyviz.metrics._perturb.random_subsets`), f the target's softmax probability (``score``)
    or logit. ``baseline``: a number, ``"black"``, ``"white"``, ``"mean"`` or ``"uniform"`` (one
    uniform image per sample). Quantus draws its subsets over the C x H x W values; here S holds
    whole pixels (the same on one channel)."""
    n_runs, subset_size = check_positive_int(n_runs, "n_runs"), check_positive_int(subset_size, "subset_size")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    flat, pixels, c = _flat(setup)
    if subset_size > pixels:
        raise InputError(f"subset_size: expected at most the {pixels} pixels of an image, got {subset_size}")
    a = as_map(attributions(setup, attribution), absolute).reshape(len(flat), -1)
    n = len(flat)
    subsets = random_subsets(n, n_runs, pixels, subset_size, setup.seed)
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed + 1)).reshape(flat.shape)
    image = np.repeat(np.arange(n), n_runs)
    rows = subsets.reshape(n * n_runs, subset_size)

    def build(s: slice) -> np.ndarray:
        out = flat[image[s]].copy()
        idx = np.arange(len(out))[:, None]
        out[idx, rows[s]] = fill[image[s][:, None], rows[s]]
        return out.reshape(-1, *setup.x.shape[1:])

    f = scores(setup, n * n_runs, build, np.repeat(setup.targets, n_runs), score, "faithfulness correlation")
    delta = np.repeat(_base(setup, score), n_runs) - f
    att = np.take_along_axis(a, subsets.reshape(n, -1), axis=1).reshape(n, n_runs, subset_size).sum(-1)
    return pearson(att, delta.reshape(n, n_runs))


@metric("faithfulness", higher_is_better=True, reference="Alvarez-Melis & Jaakkola 2018 (faithfulness estimate)",
        checked="quantus.FaithfulnessEstimate (aligned)")
def faithfulness_estimate(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    step: int = 1, baseline: Any = 0.0, absolute: bool = False, score: str = "probability", **kwargs: Any,
) -> np.ndarray:
    """Faithfulness estimate per sample (N,), Alvarez-Melis & Jaakkola 2018, "Towards Robust
    Interpretability with Self-Explaining Neural Networks" (NeurIPS), section 3: the Pearson
    correlation over features i of ``a_i`` and ``f(x) - f(x_[x_i = baseline])``, each feature
    (``step`` pixels in attribution order) removed alone. One forward per feature."""
    step = check_positive_int(step, "step")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    flat, pixels, c = _flat(setup)
    n = len(flat)
    a = as_map(attributions(setup, attribution), absolute).reshape(n, -1)
    groups = feature_groups(a, step)
    g = int(groups.max()) + 1
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed)).reshape(flat.shape)
    image, k = np.repeat(np.arange(n), g), np.tile(np.arange(g), n)

    def build(s: slice) -> np.ndarray:
        hit = (groups[image[s]] == k[s][:, None])[..., None]
        return np.where(hit, fill[image[s]], flat[image[s]]).reshape(-1, *setup.x.shape[1:])

    f = scores(setup, n * g, build, np.repeat(setup.targets, g), score, "faithfulness estimate")
    delta = np.repeat(_base(setup, score), g) - f
    att = np.stack([np.bincount(groups[i], a[i], minlength=g) for i in range(n)])
    return pearson(att, delta.reshape(n, g))


@metric("faithfulness", higher_is_better=True, reference="Arya et al. 2019 (AIX360 monotonicity)",
        checked="closed form on a linear model (Quantus' Monotonicity never restores x: always 1)")
def monotonicity(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    step: int = 1, baseline: Any = 0.0, absolute: bool = True, score: str = "probability",
    return_curves: bool = False, **kwargs: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Monotonicity per sample (N,) 1.0 or 0.0, Arya et al. 2019, "One Explanation Does Not Fit
    All" (arXiv:1909.03012), AIX360's ``monotonicity_metric``: starting from the ``baseline`` image,
    put the features back in *ascending* attribution order (``|a|`` by default, as Quantus), ``step``
    pixels at a time; 1 when the target's score never decreases. ``return_curves``: also the (N,
    features) scores.

    Quantus 0.6.0's ``Monotonicity`` departs: it writes the baseline into its baseline image at
    each step instead of putting x's values back, so its curve is constant and its verdict always 1."""
    step = check_positive_int(step, "step")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    flat, pixels, c = _flat(setup)
    n = len(flat)
    a = as_map(attributions(setup, attribution), absolute).reshape(n, -1)
    groups = feature_groups(a, step, descending=False)
    g = int(groups.max()) + 1
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed)).reshape(flat.shape)
    image, k = np.repeat(np.arange(n), g), np.tile(np.arange(g), n)

    def build(s: slice) -> np.ndarray:
        back = (groups[image[s]] <= k[s][:, None])[..., None]
        return np.where(back, flat[image[s]], fill[image[s]]).reshape(-1, *setup.x.shape[1:])

    f = scores(setup, n * g, build, np.repeat(setup.targets, g), score, "monotonicity").reshape(n, g)
    value = np.all(np.diff(f, axis=1) >= 0, axis=1).astype(np.float64)
    return (value, f) if return_curves else value


@metric("faithfulness", higher_is_better=True, reference="Nguyen & Martinez 2020 (monotonicity correlation)",
        checked="quantus.MonotonicityCorrelation (aligned baseline)")
def monotonicity_correlation(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    n_samples: int = 10, step: int = 1, baseline: Any = "uniform", absolute: bool = True,
    score: str = "probability", **kwargs: Any,
) -> np.ndarray:
    """Monotonicity correlation per sample (N,), Nguyen & Martinez 2020, "On Quantitative Aspects of
    Model Interpretability" (arXiv:2007.07584), section 4.2: the Spearman correlation over features
    i of ``|a_i|`` and ``E[(f(x_[x_i = u]) - f(x))^2]``, the expectation over ``n_samples``
    replacements u of the feature (``step`` pixels in ascending attribution order), u uniform in
    [0, 1) per value, drawn from ``seed`` (``baseline="uniform"``; a number or ``"black"`` etc.
    replaces deterministically). Quantus scales the variance by ``1 / f(x)^2``, a constant per
    image that leaves the rank correlation unchanged."""
    n_samples, step = check_positive_int(n_samples, "n_samples"), check_positive_int(step, "step")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    flat, pixels, c = _flat(setup)
    n = len(flat)
    a = as_map(attributions(setup, attribution), absolute).reshape(n, -1)
    groups = feature_groups(a, step, descending=False)
    g = int(groups.max()) + 1
    rows = n * g * n_samples
    image = np.repeat(np.arange(n), g * n_samples)
    k = np.tile(np.repeat(np.arange(g), n_samples), n)
    # the pixels of each feature (N, G, step); a smaller last feature repeats its first pixel
    order = np.argsort(groups, axis=1, kind="stable")
    members = np.concatenate([order, np.repeat(order[:, -1:], g * step - pixels, axis=1)], axis=1).reshape(n, g, step)
    if baseline == "uniform":  # the replaced values only: (rows, step, C), row-major, from the seed
        draws = np.random.default_rng(setup.seed).uniform(0.0, 1.0, (rows, step, c)).astype(np.float32)
    else:
        fill = baseline_fill(baseline, setup.x).reshape(flat.shape)
        draws = fill[image[:, None], members[image, k]]

    def build(s: slice) -> np.ndarray:
        out = flat[image[s]].copy()
        out[np.arange(len(out))[:, None], members[image[s], k[s]]] = draws[s]
        return out.reshape(-1, *setup.x.shape[1:])

    f = scores(setup, rows, build, np.repeat(setup.targets, g * n_samples), score, "monotonicity correlation")
    var = ((f.reshape(n, g, n_samples) - _base(setup, score)[:, None, None]) ** 2).mean(-1)
    att = np.stack([np.bincount(groups[i], a[i], minlength=g) for i in range(n)])
    return spearman(att, var)


def _default_ns(pixels: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unique(np.geomspace(1, max(1, int(0.8 * pixels)), 10).astype(int)))


@metric("faithfulness", higher_is_better=True, reference="Ancona et al. 2018 (sensitivity-n)",
        checked="closed form on a linear model (Quantus' SensitivityN departs from the paper)")
def sensitivity_n(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    n: int | tuple[int, ...] | None = None, n_subsets: int = 100, baseline: Any = 0.0, absolute: bool = False,
    score: str = "logit", return_curves: bool = False, **kwargs: Any,
) -> np.ndarray:
    """Sensitivity-n per sample, Ancona et al. 2018, "Towards better understanding of gradient-based
    attribution methods for Deep Neural Networks" (ICLR), section 4: for each subset size n, the
    Pearson correlation over ``n_subsets`` random sets S of n pixels (drawn from ``seed``) of
    ``sum_{i in S} a_i`` and ``f(x) - f(x_[x_S = baseline])``, f the target's logit (the paper's
    output) or probability. ``n``: one size or several (default: 10 sizes log-spaced from 1 to 80%
    of the pixels, as the paper's plots). Returns the mean over the sizes (N,), or (N, sizes) with
    ``return_curves``.

    Quantus' ``SensitivityN`` departs from this definition: it removes features cumulatively in
    attribution order (one set per n, not random sets) and correlates across the images of a batch,
    not across sets per image; it is therefore checked against the closed form of a linear model
    instead."""
    n_subsets = check_positive_int(n_subsets, "n_subsets")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    score = check_score(score)
    flat, pixels, c = _flat(setup)
    count = len(flat)
    ns = _default_ns(pixels) if n is None else ((n,) if isinstance(n, int | np.integer) else tuple(n))
    for size in ns:
        check_positive_int(size, "n")
        if size > pixels:
            raise InputError(f"n: expected sizes of at most the {pixels} pixels of an image, got {size}")
    a = as_map(attributions(setup, attribution), absolute).reshape(count, -1)
    fill = baseline_fill(baseline, setup.x, np.random.default_rng(setup.seed + 1)).reshape(flat.shape)
    base = _base(setup, score)
    out = np.empty((count, len(ns)))
    image = np.repeat(np.arange(count), n_subsets)
    for j, size in enumerate(ns):
        subsets = random_subsets(count, n_subsets, pixels, size, setup.seed + j)
        rows = subsets.reshape(-1, size)

        def build(s: slice, rows: np.ndarray = rows) -> np.ndarray:
            img = flat[image[s]].copy()
            img[np.arange(len(img))[:, None], rows[s]] = fill[image[s][:, None], rows[s]]
            return img.reshape(-1, *setup.x.shape[1:])

        f = scores(setup, count * n_subsets, build, np.repeat(setup.targets, n_subsets), score, f"sensitivity-{size}")
        delta = np.repeat(base, n_subsets) - f
        att = np.take_along_axis(a, subsets.reshape(count, -1), axis=1).reshape(count, n_subsets, size).sum(-1)
        out[:, j] = pearson(att, delta.reshape(count, n_subsets))
    return out if return_curves else out.mean(axis=1)
