"""Axiomatic metrics: does the explanation satisfy a property every explanation of its kind should?

* :func:`completeness`: Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks",
  ICML (arXiv:1703.01365): the attributions sum to ``f(x) - f(baseline)``.
* :func:`non_sensitivity`: Nguyen & Martinez 2020, "On Quantitative Aspects of Model
  Interpretability", arXiv:2007.07584: features the model is insensitive to get zero attribution,
  and only those.
* :func:`input_invariance`: Kindermans et al. 2019, "The (Un)reliability of Saliency Methods", in
  Explainable AI (LNCS 11700), arXiv:1711.00867: a constant shift of the input, absorbed by the
  model so that its function is unchanged, leaves the explanation unchanged.

Quantus returns booleans for completeness and input invariance (exact float equality, resp.
``np.isclose`` with atol 1e-4 on max-normalised maps); polyviz returns the size of the violation,
so methods can be ranked and the threshold is the reader's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import (
    attributions,
    batched_forward,
    check_positive_int,
    chunks,
    explain_fn,
    prepare,
    softmax,
)
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, range_already_checked

__all__ = ["completeness", "non_sensitivity", "input_invariance", "shifted_backend"]

SCORES = ("logit", "probability")


def _score(out: np.ndarray, targets: np.ndarray, score: str) -> np.ndarray:
    values = softmax(out) if score == "probability" else out
    return values[np.arange(len(targets)), targets]


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise InputError(f"score: expected one of {SCORES}, got {score!r}")


def _baseline(baseline: Any, x: np.ndarray) -> np.ndarray:
    """A channels-last baseline like ``x``: a number, or an array broadcastable to it."""
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return np.full_like(x, float(baseline))
    b = np.asarray(baseline, np.float32)
    try:
        return np.broadcast_to(b, x.shape).astype(np.float32)
    except ValueError:
        raise InputError(f"baseline: expected a number or an array broadcastable to {x.shape} (channels-last), "
                         f"got shape {b.shape}") from None


@metric("axiomatic", higher_is_better=False, reference="Sundararajan et al. 2017",
        checked="closed form (bias-free linear model; quantus.Completeness is exact equality)")
def completeness(
    model: Any, x: Any, target: Any = None, *, method: str | None = "integrated_gradients",
    attribution: Any = None, baseline: Any = 0.0, score: str = "logit", relative: bool = False,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Completeness gap (Sundararajan et al. 2017), (N,) float64:
    ``|sum_i a_i - (f(x) - f(baseline))|`` with ``f`` the target's ``score`` ("logit" or
    "probability"), ``baseline`` a number (default 0, black) or an array like ``x`` (channels-last);
    with ``relative=True`` divided by ``|f(x) - f(baseline)|``. 0 for a complete method (integrated
    gradients up to its Riemann error, with the same baseline; gradient x input on a bias-free
    linear model). Quantus' ``Completeness`` returns whether the two are exactly equal.
    """
    _check_score(score)
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    a = attributions(setup, attribution).astype(np.float64)
    base = _baseline(baseline, setup.x)
    n = len(setup.x)
    with range_already_checked():
        out = batched_forward(setup, np.concatenate([setup.x, base]), "completeness")
    scores = _score(out, np.tile(setup.targets, 2), score)
    delta = scores[:n] - scores[n:]
    gap = np.abs(a.reshape(n, -1).sum(axis=1) - delta)
    if relative:
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = gap / np.abs(delta)
    return gap


@metric("axiomatic", higher_is_better=False, reference="Nguyen & Martinez 2020",
        checked="closed form (bias-free linear model); departs from quantus.NonSensitivity")
def non_sensitivity(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    eps: float = 1e-5, relative: bool = True, baseline: Any = 0.0, patch_size: int = 1, score: str = "logit",
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Non-sensitivity (Nguyen & Martinez 2020), (N,) int: the number of features in the symmetric
    difference of {features with zero attribution} and {features the model is insensitive to};
    0 is perfect.

    A feature is a ``patch_size`` x ``patch_size`` patch of pixels (default one pixel, every
    channel). Its attribution is the sum of ``|a|`` over the patch, zero when ``<= eps`` (relative
    to the sample's largest feature when ``relative``, as Quantus' max normalisation does); the model
    is insensitive to it when setting it to ``baseline`` moves the target's ``score`` by ``<= eps``.
    One forward per feature and image, batched. Quantus' ``NonSensitivity`` departs from the
    paper: it tests ``a < eps`` on signed values, and with ``features_in_step > 1`` compares
    per-value attributions with per-step predictions (its issue tracker reports both).
    """
    _check_score(score)
    patch_size = check_positive_int(patch_size, "patch_size")
    if not isinstance(eps, int | float) or eps < 0:
        raise InputError(f"eps: expected a number >= 0, got {eps!r}")
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    xs = setup.x
    n, h, w, c = xs.shape
    a = np.abs(attributions(setup, attribution).astype(np.float64))
    amap = a.sum(axis=-1) if a.ndim == 4 else a
    gh, gw = -(-h // patch_size), -(-w // patch_size)
    cell = (np.arange(h)[:, None] // patch_size) * gw + np.arange(w)[None, :] // patch_size  # (H, W) feature id
    features = gh * gw
    a_feat = np.zeros((n, features))
    np.add.at(a_feat, (slice(None), cell.ravel()), amap.reshape(n, -1))
    threshold = eps * a_feat.max(axis=1, keepdims=True) if relative else eps
    zero_attr = a_feat <= threshold
    base = _baseline(baseline, xs)
    with range_already_checked():
        f0 = _score(batched_forward(setup, xs, "non-sensitivity"), setup.targets, score)
        size = setup.batch_size or 64
        moved = np.empty((n, features))
        jobs = n * features
        for s in chunks(jobs, size, "non-sensitivity", setup.progress):
            idx = np.arange(s.start, s.stop)
            img, feat = idx // features, idx % features
            batch = xs[img].copy()
            sel = (cell[None] == feat[:, None, None])  # (B, H, W)
            batch[sel] = base[img][sel]
            out = setup.backend.forward(batch).astype(np.float64)
            moved[img, feat] = _score(out, setup.targets[img], score)
    insensitive = np.abs(moved - f0[:, None]) <= eps
    return (zero_attr ^ insensitive).sum(axis=1)


def shifted_backend(backend: Backend, shift: float) -> Backend:
    """A backend over the same model whose function of the input is moved by ``shift``:
    ``g(x + shift) = f(x)`` for every x (the shift is subtracted before the model, as a
    preprocessing step; the model is not touched)."""
    pre = backend.preprocess
    if pre is None:
        new = Preprocess(mean=(float(shift),), std=(1.0,))
    else:
        new = dataclasses.replace(pre, mean=tuple(m + float(shift) * pre.scale for m in pre.mean))
    return type(backend)(backend.model, preprocess=new, **backend.options)


@metric("axiomatic", higher_is_better=False, reference="Kindermans et al. 2019",
        checked="closed form (gradient invariant, gradient x input moves by shift x gradient), torch = keras")
def input_invariance(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", input_shift: float = -1.0,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Input invariance (Kindermans et al. 2019), (N,) float64: the relative change of the
    explanation, ``||a_g(x + s) - a_f(x)|| / ||a_f(x)||`` (0 when invariant; Frobenius norms; a zero
    ``a_f(x)`` counts as 1), where ``g`` is the model with the constant input shift ``s``
    (``input_shift``, default -1 as in Quantus) absorbed, ``g(x + s) = f(x)``.

    Kindermans et al. absorb the shift into the first layer's bias, ``b' = b - W s``: the same
    function for a dense first layer, but not at the zero-padded border of a convolution (where
    Quantus' ``add_mean_shift_to_first_layer`` subtracts one value per channel, the minimum of the
    shifted response). polyviz subtracts ``s`` before the model instead (:func:`shifted_backend`),
    the exact same function for any first layer; a method that reads the first layer's input
    (LRP's z^B bounds) sees the unshifted values. ``method`` is recomputed for the shifted model
    (options as keywords or in ``method_options``), with the same seed.
    """
    if not isinstance(input_shift, int | float) or isinstance(input_shift, bool):
        raise InputError(f"input_shift: expected a number, got {input_shift!r}")
    setup = prepare(model, x, target, method=method, attribution=None,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    run = explain_fn(setup)
    n = len(setup.x)
    base = run(setup.x, setup.targets).astype(np.float64)
    shifted = shifted_backend(setup.backend, input_shift)
    with range_already_checked():
        moved = run(setup.x + np.float32(input_shift), setup.targets, shifted).astype(np.float64)
    norm = np.linalg.norm(base.reshape(n, -1), axis=1)
    return np.linalg.norm((moved - base).reshape(n, -1), axis=1) / np.where(norm == 0, 1.0, norm)
