"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML, arXiv:2202.00449).

The top (MoRF) or bottom (LeRF) p% of pixels by attribution are removed by *noisy linear
imputation* (section 4): each removed pixel becomes the weighted mean of its 8 neighbours (weight
1/6 for the 4 direct, 1/12 for the 4 diagonal ones; removed neighbours are unknowns too, so one
sparse linear system per image and channel), plus Gaussian noise of std ``noise``; the model then
classifies the imputed image. The system is symmetric positive definite and is solved here by
conjugate gradients in numpy, all images of a batch at once (float64, relative residual 1e-10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import as_map, attributions, chunks, softmax
from polyviz.metrics._perturb import setup_from
from polyviz.metrics.info import metric

__all__ = ["road", "road_morf", "road_lerf", "noisy_linear_imputation", "RoadCurves", "PERCENTAGES"]

#: The removal percentages of the paper's figures.
PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_OFFSETS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
            ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))


class RoadCurves(NamedTuple):
    """``value`` (N,) the mean over the percentages, ``scores`` (N, P) per percentage,
    ``percentages`` (P,)."""

    value: np.ndarray
    scores: np.ndarray
    percentages: np.ndarray


def _neighbours(v: np.ndarray) -> np.ndarray:
    """``sum_o w_o v[:, y + dy_o, x + dx_o]`` over the 8 neighbours of each pixel of (S, H, W), 0
    outside the image."""
    h, w = v.shape[1:]
    padded = np.zeros((len(v), h + 2, w + 2))
    padded[:, 1:-1, 1:-1] = v
    total = np.zeros_like(v, dtype=np.float64)
    for (dy, dx), weight in _OFFSETS:
        total += weight * padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return total


def noisy_linear_imputation(x: np.ndarray, removed: np.ndarray, noise: float = 0.01,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """Channels-last images (B, H, W, C) with the ``removed`` pixels (B, H, W) bool replaced by ROAD's
    noisy linear imputation (see the module docstring); ``noise`` > 0 needs ``rng``. float32."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    # one system per image and channel: (S, H, W) with S = N * C
    xs = np.moveaxis(x, -1, 1).reshape(n * c, h, w)
    unknown = np.repeat(np.asarray(removed, bool), c, axis=0)
    mask = unknown.astype(np.float64)
    degree = _neighbours(np.ones((1, h, w)))[0]  # weight of the in-image neighbours of each pixel
    b = _neighbours(xs * (1 - mask)) * mask
    v = np.zeros_like(xs)
    # conjugate gradients with the Jacobi preconditioner, only on the systems not yet converged
    r = b.copy()
    z = r / degree
    p = z.copy()
    rz = (r * z).sum(axis=(1, 2))
    target = 1e-20 * np.maximum((b * b).sum(axis=(1, 2)), 1e-300)  # residual 1e-10 of b: far below float32
    active = np.flatnonzero((r * r).sum(axis=(1, 2)) > target)
    for _ in range(int(unknown.sum(axis=(1, 2)).max()) + 1):
        if len(active) == 0:
            break
        pa, ma = p[active], mask[active]
        ap = (degree * pa - _neighbours(pa)) * ma
        pap = (pa * ap).sum(axis=(1, 2))
        alpha = np.where(pap > 0, rz[active] / np.where(pap > 0, pap, 1.0), 0.0)[:, None, None]
        v[active] += alpha * pa
        ra = r[active] - alpha * ap
        za = ra / degree
        new = (ra * za).sum(axis=(1, 2))
        beta = np.where(rz[active] > 0, new / np.where(rz[active] > 0, rz[active], 1.0), 0.0)[:, None, None]
        r[active], p[active], rz[active] = ra, za + beta * pa, new
        active = active[(ra * ra).sum(axis=(1, 2)) > target[active]]
    v = np.moveaxis(v.reshape(n, c, h, w), 1, -1)
    unknown = np.asarray(removed, bool)[..., None]
    if noise:
        if rng is None:
            raise InputError("noise: a noisy imputation needs a random generator")
        v = v + noise * rng.standard_normal(v.shape)
    return np.where(unknown, v, x).astype(np.float32)


def road(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    order: str = "morf", percentages: Sequence[float] = PERCENTAGES, noise: float = 0.01, absolute: bool = False,
    score: str = "accuracy", return_curves: bool = False, **kwargs: Any,
) -> np.ndarray | RoadCurves:
    """ROAD per sample (N,): the mean over ``percentages`` p of the score of the image whose top
    (``order="morf"``) or bottom (``"lerf"``) ``int(H * W * p / 100)`` pixels by attribution (the
    map; ties in raster order) were imputed (:func:`noisy_linear_imputation`, ``noise`` drawn from
    ``seed``, image i and percentage j from ``default_rng([seed, i, j])``). ``score``:
    ``"accuracy"`` (1 when the model still predicts the target, the paper's and Quantus'),
    ``"probability"`` or ``"logit"`` of the target. MoRF: lower is better; LeRF: higher."""
    if order not in ("morf", "lerf"):
        raise InputError(f"order: expected 'morf' or 'lerf', got {order!r}")
    if score not in ("accuracy", "probability", "logit"):
        raise InputError(f"score: expected 'accuracy', 'probability' or 'logit', got {score!r}")
    pcts = np.asarray(list(percentages), np.float64)
    if pcts.ndim != 1 or len(pcts) == 0 or np.any(pcts < 0) or np.any(pcts > 100):
        raise InputError(f"percentages: expected numbers in [0, 100], got {percentages!r}")
    if not isinstance(noise, int | float) or noise < 0:
        raise InputError(f"noise: expected a number >= 0, got {noise!r}")
    setup = setup_from(model, x, target, method, attribution, kwargs)
    n, h, w, c = setup.x.shape
    maps = as_map(attributions(setup, attribution), absolute).reshape(n, -1)
    ranked = np.argsort(-maps if order == "morf" else maps, axis=1, kind="stable")
    rank = np.empty_like(ranked)
    np.put_along_axis(rank, ranked, np.arange(h * w)[None, :], axis=1)
    ks = np.array([int(h * w * p / 100) for p in pcts])
    rows = n * len(ks)
    image, j = np.repeat(np.arange(n), len(ks)), np.tile(np.arange(len(ks)), n)
    out = np.empty(rows)
    for s in chunks(rows, setup.batch_size or 32, f"road {order}", setup.progress):
        removed = (rank[image[s]] < ks[j[s]][:, None]).reshape(-1, h, w)
        imputed = noisy_linear_imputation(setup.x[image[s]], removed, 0.0)
        if noise:
            draws = np.stack([np.random.default_rng([setup.seed, i, k]).standard_normal((h, w, c))
                              for i, k in zip(image[s], j[s])])
            imputed = np.where(removed[..., None], imputed + np.float32(noise) * draws, imputed).astype(np.float32)
        z = np.asarray(setup.backend.forward(imputed), np.float64)
        t = setup.targets[image[s]]
        if score == "accuracy":
            out[s] = (z.argmax(axis=1) == t).astype(np.float64)
        else:
            z = softmax(z) if score == "probability" else z
            out[s] = z[np.arange(len(z)), t]
    curves = out.reshape(n, len(ks))
    value = curves.mean(axis=1)
    return RoadCurves(value, curves, pcts) if return_curves else value


@metric("faithfulness", higher_is_better=False, reference="Rong et al. 2022 (ROAD), most relevant first",
        checked="quantus.ROAD (noise 0; noise from the seed checked separately)")
def road_morf(model: Any, x: Any, target: Any = None, **kwargs: Any) -> np.ndarray | RoadCurves:
    """:func:`road` with ``order="morf"``: the score as the most relevant pixels are imputed; lower is
    better."""
    return road(model, x, target, order="morf", **kwargs)


@metric("faithfulness", higher_is_better=True, reference="Rong et al. 2022 (ROAD), least relevant first",
        checked="quantus.ROAD on the negated map (noise 0)")
def road_lerf(model: Any, x: Any, target: Any = None, **kwargs: Any) -> np.ndarray | RoadCurves:
    """:func:`road` with ``order="lerf"``: the score as the least relevant pixels are imputed; higher is
    better."""
    return road(model, x, target, order="lerf", **kwargs)
