"""DeepLIFT (rescale rule) and DeepLIFT SHAP, written once in numpy over ``deeplift_gradient``.

DeepLIFT (Shrikumar, Greenside & Kundaje 2017, "Learning Important Features Through Propagating
Activation Differences", arXiv:1704.02685) explains the difference ``S(x) - S(x')`` between the
target logit at the input and at a reference ``x'``. The backend returns the multipliers ``m``
of the rescale rule (each element-wise nonlinearity's local gradient replaced by
``(f(z) - f(z')) / (z - z')``, max pooling by Captum's rule, products of two activations such as
squeeze-excitation gates by the exact two-factor rule; the maths once, in
:mod:`polyviz.rules.deeplift`), in the gradient formulation of Ancona et al. 2018
(arXiv:1711.06104); the attribution is ``(x - x') * m``. It is *complete*, ``sum(attr) = S(x) -
S(x')`` up to round-off, on every network the backends accept (nonlinearities without a rule are
refused), checked on 17 torchvision / keras.applications CNNs.

DeepLIFT SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions") averages
DeepLIFT over a distribution of references, as Captum's ``DeepLiftShap``: each input is paired with
every baseline and the N * B attributions are averaged over the baselines.

Both equal Captum 0.9's ``DeepLift`` / ``DeepLiftShap`` (``multiply_by_inputs=True``) where
Captum's module hooks work. Captum differs on one common pattern: a ReLU module whose output goes
straight into a MaxPool module (every VGG block) gets the plain max-pool gradient instead of the
DeepLIFT max-pool multipliers (its output-gradient hook runs before the pool's input hook rewrites
the gradient), so Captum's attributions there are not complete (its convergence delta is far from
0; cf. pytorch/captum#1104); polyviz's are.
"""

from __future__ import annotations

import numpy as np

from polyviz.errors import InputError
from polyviz.protocol import Capability, ClassScore
from polyviz.techniques import Context, Result, method
from polyviz.techniques.gradients import _add_by_sample, _baseline

__all__ = ["deeplift", "deeplift_shap"]

_CAPS = (Capability.DEEPLIFT,)


def _scores_of(ctx: Context, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(M, N) target logits: images (M, H, W, C) scored for each of the N ``targets``."""
    rows = []
    for sl in ctx.chunks(len(images), 32, "forward"):
        rows.append(np.asarray(ctx.backend.forward(images[sl]), np.float64)[:, targets])
    return np.concatenate(rows)


def _reference_scores(ctx: Context, baseline: object, base: np.ndarray) -> np.ndarray:
    """S(x') per sample: one forward pass when every sample shares the reference."""
    if np.ndim(baseline) < 4:
        return _scores_of(ctx, np.ascontiguousarray(base[:1]), ctx.targets)[0]
    out = []
    for sl in ctx.chunks(len(base), 32, "forward"):
        logits = np.asarray(ctx.backend.forward(np.ascontiguousarray(base[sl])), np.float64)
        out.append(logits[np.arange(len(logits)), ctx.targets[sl]])
    return np.concatenate(out)


@method(
    "deeplift",
    "DeepLIFT, rescale rule (Shrikumar et al. 2017, arXiv:1704.02685): (x - x') times the rescale-rule multipliers of S, complete: sums to S(x) - S(x')",
    kind="input", needs_baseline=True, capabilities=_CAPS, family="gradient",
)
def deeplift(ctx: Context, *, baseline: float | np.ndarray = 0.0) -> Result:
    """``(x - x') * m`` with ``m`` the DeepLIFT (rescale rule) multipliers of the target logit
    against the reference ``x'`` = ``baseline`` (a scalar, one image (H, W, C) or one per sample
    (N, H, W, C), channels-last). One forward/backward pass of the batch ``[x, x']`` per chunk
    (``batch_size`` samples, default 16), plus one forward pass of the reference(s) for the
    convergence delta.

    Metadata: ``convergence_delta`` per sample, ``sum(attr) - (S(x) - S(x'))`` (0 up to round-off),
    as Captum's ``return_convergence_delta``.
    """
    x = ctx.x.astype(np.float32)
    base = _baseline(ctx, baseline)
    n = len(x)
    multipliers = np.zeros(x.shape, np.float32)
    values = np.zeros(n, np.float64)
    for sl in ctx.chunks(n, 16, "deeplift"):
        out = ctx.backend.deeplift_gradient(x[sl], np.ascontiguousarray(base[sl]), ClassScore(ctx.targets[sl]))
        multipliers[sl] = out.gradient
        values[sl] = out.values
    attr = (x - base) * multipliers
    delta = attr.reshape(n, -1).sum(axis=1, dtype=np.float64) - (values - _reference_scores(ctx, baseline, base))
    return Result(attribution=attr.astype(np.float32), scores=values.astype(np.float32),
                  metadata={"convergence_delta": delta.astype(np.float32)})


def _distribution(baselines: object, shape: tuple[int, ...]) -> np.ndarray:
    try:
        dist = np.asarray(baselines, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"baselines: expected a number or an array, got {type(baselines).__name__}") from None
    if dist.ndim == 0:
        dist = np.broadcast_to(dist, (1, *shape))
    elif dist.ndim == 3:
        dist = dist[None]
    if dist.ndim != 4 or dist.shape[1:] != shape or len(dist) == 0 or not np.all(np.isfinite(dist)):
        raise InputError(
            f"baselines: expected a distribution of references (B, *{shape}), one image {shape} or a "
            f"scalar, finite, channels-last; got shape {np.shape(baselines)}"
        )
    return dist


@method(
    "deeplift_shap",
    "DeepLIFT SHAP (Lundberg & Lee 2017; Shrikumar et al. 2017): DeepLIFT averaged over a distribution of references",
    kind="input", needs_baseline=True, capabilities=_CAPS, family="gradient",
)
def deeplift_shap(ctx: Context, *, baselines: float | np.ndarray = 0.0) -> Result:
    """The mean over the references ``b`` in ``baselines`` (B, H, W, C) of DeepLIFT's
    ``(x - b) * m(x, b)``, Captum's ``DeepLiftShap``: every input paired with every reference
    (pair ``k`` is sample ``k // B`` with reference ``k % B``), the N * B pairs batched
    (``batch_size`` pairs per backend call, default 16). A scalar or one image is a distribution of
    one (DeepLIFT itself; Captum asks for at least two).

    Metadata: ``convergence_delta`` per sample, ``sum(attr) - (S(x) - mean_b S(b))``, 0 up to
    round-off where DeepLIFT is complete (the mean of complete attributions is complete).
    """
    x = ctx.x.astype(np.float32)
    dist = _distribution(baselines, x.shape[1:])
    n, b = len(x), len(dist)
    acc = np.zeros(x.shape, np.float64)
    values = np.zeros(n, np.float64)
    for sl in ctx.chunks(n * b, 16, "deeplift shap"):
        sample, ref = np.divmod(np.arange(sl.start, sl.stop), b)
        xs, refs = x[sample], dist[ref]
        out = ctx.backend.deeplift_gradient(xs, np.ascontiguousarray(refs), ClassScore(ctx.targets[sample]))
        values[sample] = out.values
        _add_by_sample(acc, sample, (xs - refs) * out.gradient)
    attr = (acc / b).astype(np.float32)
    ref_scores = _scores_of(ctx, np.ascontiguousarray(dist), ctx.targets).mean(axis=0)
    delta = attr.reshape(n, -1).sum(axis=1, dtype=np.float64) - (values - ref_scores)
    return Result(attribution=attr, scores=values.astype(np.float32),
                  metadata={"convergence_delta": delta.astype(np.float32)})
