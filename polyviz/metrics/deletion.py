"""Deletion and insertion curves (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", arXiv:1806.07421, section 4.1)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import as_map, attributions, check_positive_int, chunks, prepare, softmax
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess
from polyviz.protocol import Capability, FeatureGroups

__all__ = ["deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve", "Curves", "blur", "pixel_order"]

#: RISE's blur for the insertion start: an 11-tap Gaussian of sigma 5 (their ``gkern(11, 5)``).
BLUR_TAPS = 11
BLUR_SIGMA = 5.0


class Curves(NamedTuple):
    """``auc`` (N,), ``scores`` (N, S + 1) after 0, 1, ..., S steps, ``fraction`` (S + 1,) the share
    of pixels deleted (inserted) after each step, from 0 to 1."""

    auc: np.ndarray
    scores: np.ndarray
    fraction: np.ndarray


def blur(x: np.ndarray, sigma: float = BLUR_SIGMA, taps: int = BLUR_TAPS) -> np.ndarray:
    """Channels-last images blurred by a normalised separable Gaussian (``taps`` wide, ``sigma``),
    edges padded by reflection. RISE convolves with zero padding, which darkens the border; a
    reflected edge keeps the blurred image an image of the same content."""
    x = np.asarray(x, np.float64)
    half = taps // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = x
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (half, half)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > half else "edge")
        size = out.shape[axis]
        out = sum(k[i] * np.take(padded, np.arange(i, i + size), axis=axis) for i in range(taps))
    return out.astype(np.float32)


def pixel_order(maps: np.ndarray) -> np.ndarray:
    """(N, H * W) pixel indices, most important first: descending map value, ties in raster order."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    return np.argsort(-flat, axis=1, kind="stable")


def _curves(
    model: Any, x: Any, target: Any, *, insertion: bool, method: str | None, attribution: Any, step: int | None,
    baseline: float | np.ndarray, start: str, absolute: bool, score: str, layer: str | None, backend: str | None,
    preprocess: Preprocess | str | None, layout: str | None, batch_size: int | None, seed: int, progress: bool,
    options: dict[str, Any],
) -> Curves:
    if score not in ("probability", "logit"):
        raise InputError(f"score: expected 'probability' or 'logit', got {score!r}")
    if insertion and start not in ("blur", "baseline"):
        raise InputError(f"start: expected 'blur' or 'baseline', got {start!r}")
    setup = prepare(model, x, target, method=method if attribution is None else None, attribution=attribution,
                    options=options, layer=layer, backend=backend, preprocess=preprocess, layout=layout,
                    batch_size=batch_size, seed=seed, progress=progress)
    be = setup.backend
    be.require(Capability.MASKED_SCORES)
    xs = setup.x
    n, h, w, c = xs.shape
    step = w if step is None else check_positive_int(step, "step")
    maps = as_map(attributions(setup, attribution), absolute)
    order = pixel_order(maps)
    pixels = h * w
    groups = -(-pixels // step)
    k = np.arange(groups + 1)
    # keep[k, g]: after k steps, is group g (the g-th `step` pixels in importance order) the image's?
    keep = (np.arange(groups)[None, :] >= k[:, None]) if not insertion else (np.arange(groups)[None, :] < k[:, None])
    keep = keep.astype(np.float32)
    if np.ndim(baseline) >= 3 and setup.layout == "NCHW":
        baseline = np.moveaxis(np.asarray(baseline, np.float32), -3, -1)  # the caller's layout -> channels-last
    if insertion and start == "blur":
        base = blur(xs)
    else:
        base = np.broadcast_to(be._check_baseline(baseline, xs), xs.shape)
    scores = np.empty((n, groups + 1))
    for i in (s.start for s in chunks(n, 1, "insertion" if insertion else "deletion", setup.progress)):
        rank = np.empty(pixels, np.int64)
        rank[order[i]] = np.arange(pixels)
        spec = FeatureGroups(groups=(rank // step).reshape(h, w), keep=keep)
        out = be.masked_scores(xs[i : i + 1], spec, np.array(base[i], np.float32))  # a writable copy
        out = softmax(out) if score == "probability" else np.asarray(out, np.float64)
        scores[i] = out[:, setup.targets[i]]
    fraction = np.minimum(k * step, pixels) / pixels
    return Curves(np.trapezoid(scores, fraction, axis=1), scores, fraction)


_DOC = """

    Pixels are ranked by the attribution map (a map as it is, an input-shaped attribution summed
    over channels, of ``|a|`` with ``absolute=True``), most important first, ties in raster order,
    and changed ``step`` pixels at a time (default: one image row's worth, W pixels, as RISE's 224
    at 224 px), every step one forward pass (batched on the backend's device). The score is the
    softmax probability of the target (``score="probability"``, as in RISE) or its logit. The AUC
    is the trapezoid rule over the fraction of pixels changed, 0 to 1. ``method``: any registered
    method (options as keywords or in ``method_options``) or ``attribution`` precomputed.
    Returns the AUC per sample (N,), or :class:`Curves` with ``return_curves=True``.
"""


def deletion_curve(model: Any, x: Any, target: Any = None, **kwargs: Any) -> Curves:
    """:func:`deletion_auc` with its curves."""
    return deletion_auc(model, x, target, return_curves=True, **kwargs)


def insertion_curve(model: Any, x: Any, target: Any = None, **kwargs: Any) -> Curves:
    """:func:`insertion_auc` with its curves."""
    return insertion_auc(model, x, target, return_curves=True, **kwargs)


@metric("faithfulness", higher_is_better=False, reference="Petsiuk et al. 2018 (RISE), deletion", checked="quantus.PixelFlipping (aligned)")
def deletion_auc(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    step: int | None = None, baseline: float | np.ndarray = 0.0, absolute: bool = False, score: str = "probability",
    return_curves: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray | Curves:
    """Deletion: the target's score as the most important pixels are replaced by ``baseline``
    (default 0, black, as in RISE; a scalar or one channels-last image); lower is better."""
    curves = _curves(model, x, target, insertion=False, method=method, attribution=attribution, step=step,
                     baseline=baseline, start="baseline", absolute=absolute, score=score, layer=layer, backend=backend,
                     preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress,
                     options={**(method_options or {}), **options})
    return curves if return_curves else curves.auc


@metric("faithfulness", higher_is_better=True, reference="Petsiuk et al. 2018 (RISE), insertion", checked="closed form on a linear model")
def insertion_auc(
    model: Any, x: Any, target: Any = None, *, method: str | None = "saliency", attribution: Any = None,
    step: int | None = None, start: str = "blur", baseline: float | np.ndarray = 0.0, absolute: bool = False,
    score: str = "probability", return_curves: bool = False, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray | Curves:
    """Insertion: the target's score as the most important pixels are put back into a start image,
    the blurred input (``start="blur"``, RISE; :func:`blur`) or ``baseline`` (``start="baseline"``);
    higher is better."""
    curves = _curves(model, x, target, insertion=True, method=method, attribution=attribution, step=step,
                     baseline=baseline, start=start, absolute=absolute, score=score, layer=layer, backend=backend,
                     preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress,
                     options={**(method_options or {}), **options})
    return curves if return_curves else curves.auc


deletion_auc.__doc__ = (deletion_auc.__doc__ or "") + _DOC
insertion_auc.__doc__ = (insertion_auc.__doc__ or "") + _DOC
