"""Surrogate models on feature groups: LIME (Ribeiro et al. 2016, arXiv:1602.04938) and KernelSHAP
(Lundberg & Lee 2017, arXiv:1705.07874). Both switch random subsets of the groups off (to a
baseline), score the perturbed inputs with forward passes, and fit a weighted linear model of the
score on the on/off vector; its coefficients are the attribution of the groups. The fit is done in
numpy (float64)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polyviz.features import Partition
from polyviz.protocol import Capability
from polyviz.techniques import Context, Result, method
from polyviz.techniques._groups import (
    features_doc,
    group_scores,
    groups_metadata,
    partition,
    positive_float,
    positive_int,
)
from polyviz.techniques.gradients import _baseline

__all__ = ["lime", "kernel_shap", "weighted_linear_fit", "cosine_similarity_weights", "kernel_shap_coalitions"]

_CAPS = (Capability.MASKED_SCORES,)

#: Weight of the all-on and all-off coalitions in KernelSHAP (Captum's ``inf_weight``): they stand
#: for the constraints phi_0 = S(baseline) and sum(phi) = S(x) - S(baseline).
INF_WEIGHT = 1e6


def weighted_linear_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = 0.0) -> tuple[np.ndarray, float]:
    """Coefficients and intercept minimising ``sum_i w_i (y_i - z_i . b - c)^2 + alpha |b|^2``.

    The data are centred by their weighted means (so the intercept is not penalised), scaled by
    sqrt(w), and solved by least squares (``alpha = 0``, the minimum-norm solution when the system
    is underdetermined) or by the ridge normal equations: the same steps as scikit-learn's
    ``LinearRegression`` and ``Ridge`` with ``sample_weight``.
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    total = w.sum()
    z_mean = w @ z / total
    y_mean = float(w @ y / total)
    root = np.sqrt(w)
    zc = (z - z_mean) * root[:, None]
    yc = (y - y_mean) * root
    if alpha > 0:
        coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ yc)
    else:
        coef = np.linalg.lstsq(zc, yc, rcond=None)[0]
    return coef, y_mean - float(z_mean @ coef)


def cosine_similarity_weights(
    on: np.ndarray, labels: np.ndarray, image: np.ndarray, baseline: np.ndarray, kernel_width: float
) -> np.ndarray:
    """LIME's sample weights as Captum's default ``Lime`` computes them:
    ``exp(-d^2 / (2 kernel_width^2))`` with ``d = 1 - cos(x, x_z)`` the cosine distance between
    the flattened input and the perturbed input ``x_z`` (groups with ``on = 0`` at the baseline).

    Computed from per-group sums of x.x, x.b and b.b, without building the inputs (masks are 0/1).
    """
    g = on.shape[1]
    flat = labels.ravel()
    xx = np.bincount(flat, (image * image).sum(-1).ravel(), g)
    xb = np.bincount(flat, (image * baseline).sum(-1).ravel(), g)
    bb = np.bincount(flat, (baseline * baseline).sum(-1).ravel(), g)
    on = on.astype(np.float64)
    dot = on @ xx + (1 - on) @ xb
    norm_p = np.sqrt(np.maximum(on @ xx + (1 - on) @ bb, 0.0))
    eps = 1e-8
    cos = dot / (max(np.sqrt(xx.sum()), eps) * np.maximum(norm_p, eps))
    d = 1.0 - cos
    return np.exp(-(d**2) / (2.0 * kernel_width**2))


def kernel_shap_coalitions(rng: np.random.Generator, g: int, n_samples: int) -> np.ndarray:
    """KernelSHAP's (n_samples, g) 0/1 coalitions as Captum draws them: all on, all off, then for
    each further row a size k in 1..g-1 with p(k) proportional to (g - 1) / (k (g - k)) and a
    uniformly random subset of that size (so that, with weight 1 each, the rows follow the Shapley
    kernel). A single group has only the first two rows."""
    rows = [np.ones(g, bool), np.zeros(g, bool)][:n_samples]
    extra = n_samples - 2
    if g < 2 or extra <= 0:
        return np.stack(rows)
    k = np.arange(1, g)
    p = (g - 1) / (k * (g - k))
    sizes = rng.choice(k, size=extra, p=p / p.sum())
    keys = rng.random((extra, g))
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    return np.concatenate([np.stack(rows), ranks < sizes[:, None]])


def _surrogate(ctx: Context, part: Partition, coalitions: list[np.ndarray], base: np.ndarray,
               weights_of: Callable[[int, np.ndarray], np.ndarray], alpha: float,
               desc: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """Score every coalition (batched), then fit one weighted linear model per sample."""
    gmax = part.max_groups
    sample = np.concatenate([np.full(len(z), s) for s, z in enumerate(coalitions)])
    first = np.concatenate([[0], np.cumsum([len(z) for z in coalitions])[:-1]])

    def keep(idx: np.ndarray) -> np.ndarray:
        rows = np.zeros((len(idx), gmax), dtype=np.float32)
        for r, flat in enumerate(idx.tolist()):
            z = coalitions[int(sample[flat])]
            rows[r, : z.shape[1]] = z[flat - int(first[sample[flat]])]
        return rows

    scores = group_scores(ctx, part, sample, keep, base, desc)
    coefs, weights, intercepts, row = [], [], [], 0
    for s, z in enumerate(coalitions):
        y = scores[row : row + len(z)]
        row += len(z)
        w = weights_of(s, z)
        coef, intercept = weighted_linear_fit(z, y, w, alpha)
        coefs.append(coef)
        weights.append(w)
        intercepts.append(intercept)
    return coefs, weights, np.asarray(intercepts), len(sample)


@method(
    "lime",
    "LIME (Ribeiro et al. 2016): weighted linear surrogate of the score on random on/off masks of feature groups",
    kind="map", needs_baseline=True, capabilities=_CAPS, family="perturbation",
)
@features_doc
def lime(
    ctx: Context,
    *,
    n_samples: int = 200,
    features: str | np.ndarray = "superpixels",
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
    baseline: float | np.ndarray = 0.0,
    kernel_width: float = 1.0,
    alpha: float = 1.0,
) -> Result:
    """A (N, H, W) map: every pixel gets the coefficient of its group in a linear model
    ``S(x_z) ~ b . z + c`` fitted to ``n_samples`` random on/off vectors z (each group on with
    probability 1/2, drawn per sample from the seed), where ``x_z`` keeps the groups that are on
    and sets the others to the baseline (a scalar, one image (H, W, C) or one per sample).

    Sample weights are Captum's default similarity: ``exp(-d^2 / (2 kernel_width^2))``, d the
    cosine distance between x and x_z, flattened. The surrogate is ridge regression with penalty
    ``alpha`` (1.0, the surrogate of the reference ``lime`` package; 0 gives plain weighted least
    squares, minimum-norm when underdetermined) with an unpenalised intercept, solved in numpy
    (:func:`weighted_linear_fit`). Captum's ``Lime`` defaults to a Lasso surrogate
    (``SkLearnLasso(alpha=0.01)``), which zeroes small coefficients; with the same samples and an
    interpretable model fitting the same ridge (``SkLearnRidge(alpha=alpha)``), Captum gives these
    maps. The reference ``lime`` package measures the cosine distance on the on/off vectors and
    uses a kernel width of 0.25; polyviz follows Captum. Costs ``n_samples`` forward passes per
    sample, batched ``batch_size`` (32) at a time. The intercepts come back in
    ``options["intercepts"]``, the vectors and weights in ``options["coalitions"]`` and
    ``options["sample_weights"]``.
    """
    n_draws = positive_int(n_samples, "n_samples", 2)
    width = positive_float(kernel_width, "kernel_width")
    alpha = positive_float(alpha, "alpha", allow_zero=True)
    part = partition(ctx, features, patch_size, n_segments, compactness)
    full_base = _baseline(ctx, baseline)
    base = np.asarray(baseline, dtype=np.float32)
    rng = ctx.rng()
    coalitions = [rng.random((n_draws, int(g))) < 0.5 for g in part.counts]
    x64 = ctx.x.astype(np.float64)

    def weights_of(s: int, z: np.ndarray) -> np.ndarray:
        return cosine_similarity_weights(z, part.labels[s], x64[s], full_base[s].astype(np.float64), width)

    coefs, weights, intercepts, passes = _surrogate(ctx, part, coalitions, base, weights_of, alpha, "lime")
    return Result(
        attribution=part.spread(coefs),
        metadata={**groups_metadata(part), "coalitions": coalitions, "sample_weights": weights,
                  "intercepts": intercepts.astype(np.float32), "forward_passes": passes},
    )


@method(
    "kernel_shap",
    "KernelSHAP (Lundberg & Lee 2017): linear surrogate on coalitions of feature groups drawn by the Shapley kernel; its coefficients estimate Shapley values",
    kind="map", needs_baseline=True, capabilities=_CAPS, family="perturbation",
)
@features_doc
def kernel_shap(
    ctx: Context,
    *,
    n_samples: int = 200,
    features: str | np.ndarray = "superpixels",
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
    baseline: float | np.ndarray = 0.0,
) -> Result:
    """A (N, H, W) map: every pixel gets the coefficient of its group in a weighted least-squares
    fit of ``S(x_z) ~ phi . z + phi_0`` over ``n_samples`` coalitions z of the groups (on: kept,
    off: set to the baseline, a scalar, one image (H, W, C) or one per sample).

    Captum's ``KernelShap`` semantics: the first two coalitions are all on and all off, weighted
    1e6 (they pin phi_0 = S(baseline) and sum(phi) = S(x) - S(baseline)); the others are drawn
    per sample from the seed with size k in 1..G-1 of probability proportional to
    (G - 1) / (k (G - k)) and uniform members (:func:`kernel_shap_coalitions`), weight 1, which
    samples the Shapley kernel (G - 1) / (C(G, k) k (G - k)). The fit is plain weighted least
    squares with an intercept (minimum-norm when underdetermined; Captum's
    ``SkLearnLinearRegression``), solved in numpy. Costs ``n_samples`` forward passes per sample.
    """
    n_draws = positive_int(n_samples, "n_samples", 2)
    part = partition(ctx, features, patch_size, n_segments, compactness)
    _baseline(ctx, baseline)
    base = np.asarray(baseline, dtype=np.float32)
    rng = ctx.rng()
    coalitions = [kernel_shap_coalitions(rng, int(g), n_draws) for g in part.counts]

    def weights_of(s: int, z: np.ndarray) -> np.ndarray:
        size = z.sum(axis=1)
        return np.where((size == 0) | (size == z.shape[1]), INF_WEIGHT, 1.0)

    coefs, weights, intercepts, passes = _surrogate(ctx, part, coalitions, base, weights_of, 0.0, "kernel_shap")
    return Result(
        attribution=part.spread(coefs),
        metadata={**groups_metadata(part), "coalitions": coalitions, "intercepts": intercepts.astype(np.float32),
                  "forward_passes": passes},
    )
