"""Neuron attribution: input attributions of one unit of one layer, instead of a class score.

The unit is given by ``layer=`` and ``neuron=``, an index into the layer's output *channels-last*
and without the batch axis: ``(h, w, c)`` for a convolutional map (row, column, channel),
``(unit,)`` or an int for a dense layer. (Captum's ``neuron_selector`` indexes torch's NCHW output,
``(c, h, w)``.) The attributions are input-shaped. The definitions are Captum's
(``NeuronGradient``, ``NeuronIntegratedGradients``, ``NeuronConductance``):

* ``neuron_gradient``: ``dy/dx`` of the unit's value ``y``;
* ``neuron_integrated_gradients``: integrated gradients of ``y`` (Sundararajan et al. 2017);
* ``neuron_conductance`` (Dhamdhere et al. 2018, arXiv:1805.12233): the part of the target score's
  integrated gradients that flows through the unit, ``(x - x') integral dS/dy dy/dx``;
* ``neuron_gradient_shap``: gradient SHAP (Lundberg & Lee 2017) of ``y``, with the draws of
  :func:`~polyviz.techniques.gradients.gradient_shap`;
* ``neuron_deeplift_shap``: DeepLIFT (rescale rule, Shrikumar et al. 2017) of ``y`` averaged over a
  distribution of references.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError, TargetError
from polyviz.protocol import Capability, ClassScore, Neuron
from polyviz.techniques import Context, Result, method
from polyviz.techniques.gradients import _add_by_sample, _baseline, _stream, gradient_shap, ig_quadrature
from polyviz.techniques.layer import path_points, target_layer

__all__ = ["neuron_gradient", "neuron_integrated_gradients", "neuron_conductance", "neuron_gradient_shap",
           "neuron_deeplift_shap", "neuron_index"]

_GRAD = (Capability.INPUT_GRADIENT,)
_CONDUCTANCE = (Capability.INPUT_GRADIENT, Capability.LAYER_GRADIENTS)


def neuron_index(ctx: Context, neuron: Any) -> tuple[str, tuple[int, ...]]:
    """The layer and the validated channels-last index of the unit ``neuron`` names."""
    layer, shape = target_layer(ctx)
    form = "(h, w, c)" if len(shape) == 3 else "(unit,)" if len(shape) == 1 else f"{len(shape)} ints"
    if neuron is None:
        raise InputError(
            f"neuron: this method needs neuron=, the index of one unit of layer {layer!r} (output shape "
            f"{shape}, channels-last): {form}"
        )
    if isinstance(neuron, int | np.integer) and not isinstance(neuron, bool):
        neuron = (neuron,)
    try:
        index = tuple(neuron)
    except TypeError:
        raise InputError(f"neuron: expected a tuple of ints {form}, got {neuron!r}") from None
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in index):
        raise InputError(f"neuron: expected a tuple of ints {form}, got {neuron!r}")
    if len(index) != len(shape):
        raise InputError(
            f"neuron: layer {layer!r} has output shape {shape} (channels-last), so neuron= takes "
            f"{len(shape)} indices {form}; got {len(index)}: {tuple(int(i) for i in index)}"
        )
    index = tuple(int(i) for i in index)
    if any(not 0 <= i < s for i, s in zip(index, shape)):
        raise TargetError(f"neuron: index {index} is out of range for layer {layer!r} of shape {shape} (channels-last)")
    return layer, index


@method(
    "neuron_gradient",
    "Neuron gradient: the gradient of one unit of a layer with respect to the input (Captum's NeuronGradient)",
    kind="input", needs_layer=True, capabilities=_GRAD, family="neuron",
)
def neuron_gradient(ctx: Context, *, neuron: Any = None) -> Result:
    """``dy/dx`` for the unit ``y`` at index ``neuron`` of ``layer`` (the target is not used); the
    forward stops at the layer. Batches of default 32; the unit's values are ``neuron_value``."""
    layer, index = neuron_index(ctx, neuron)
    objective = Neuron(layer, index)
    values, grads = [], []
    for _, v, g in _stream(ctx, len(ctx.x), lambda sl: (ctx.x[sl], objective), None, 32, "neuron gradient"):
        values.append(v)
        grads.append(g)
    return Result(attribution=np.concatenate(grads).astype(np.float32),
                  metadata={"neuron_value": np.concatenate(values).astype(np.float32)})


@method(
    "neuron_integrated_gradients",
    "Neuron integrated gradients: integrated gradients of one unit of a layer (Captum's NeuronIntegratedGradients)",
    kind="input", needs_layer=True, needs_baseline=True, capabilities=_GRAD, family="neuron",
)
def neuron_integrated_gradients(
    ctx: Context, *, neuron: Any = None, n_steps: int = 50, baseline: float | np.ndarray = 0.0,
    method: str = "gausslegendre",
) -> Result:
    """``(x - x') * sum_k w_k dy/dx(x' + a_k (x - x'))`` for the unit ``y`` at ``neuron`` of
    ``layer``; alphas, weights and ``method`` as
    :func:`~polyviz.techniques.gradients.integrated_gradients` (the target is not used).
    ``N * n_steps`` gradient passes that stop at the layer, in batches (default 16)."""
    layer, index = neuron_index(ctx, neuron)
    alphas, weights = ig_quadrature(n_steps, method)
    x = ctx.x
    base = _baseline(ctx, baseline)
    objective = Neuron(layer, index)
    acc = np.zeros(x.shape, np.float64)

    def make(sl: slice) -> tuple[np.ndarray, Neuron]:
        return path_points(x, base, alphas, sl)[2], objective

    for sl, _, grads in _stream(ctx, len(x) * len(alphas), make, None, 16, "neuron integrated gradients"):
        sample, step = np.divmod(np.arange(sl.start, sl.stop), len(alphas))
        _add_by_sample(acc, sample, grads * weights[step].reshape(-1, 1, 1, 1))
    return Result(attribution=((x - base) * acc).astype(np.float32), metadata={"alphas": alphas, "weights": weights})


@method(
    "neuron_conductance",
    "Neuron conductance (Dhamdhere et al. 2018, arXiv:1805.12233): the target's integrated gradients that flow through one unit of a layer",
    kind="input", needs_layer=True, needs_baseline=True, capabilities=_CONDUCTANCE, family="neuron",
)
def neuron_conductance(
    ctx: Context, *, neuron: Any = None, n_steps: int = 50, baseline: float | np.ndarray = 0.0,
    method: str = "riemann_trapezoid",
) -> Result:
    """Captum's ``NeuronConductance``: ``(x - x') * sum_k w_k dS/dy(x_k) dy/dx(x_k)`` with
    ``x_k = x' + a_k (x - x')``, ``y`` the unit at ``neuron`` of ``layer`` and ``S`` the target
    logit. The default quadrature is Captum's for this method, ``"riemann_trapezoid"`` (whose weights
    sum to ``(n - 1)/n``, see :func:`~polyviz.techniques.gradients.ig_quadrature`).

    Two backend calls per batch of path points (default 16): the target's gradient at the layer
    (forward, backward down to the layer) and the unit's input gradient (forward to the layer,
    backward from it)."""
    layer, index = neuron_index(ctx, neuron)
    alphas, weights = ig_quadrature(n_steps, method)
    x = ctx.x
    base = _baseline(ctx, baseline)
    n = len(x)
    be = ctx.backend
    unit = (slice(None), *index)
    acc = np.zeros(x.shape, np.float64)
    for sl in ctx.chunks(n * len(alphas), 16, "neuron conductance"):
        sample, step, points = path_points(x, base, alphas, sl)
        through = be.layer_gradients(points, [layer], ClassScore(ctx.targets[sample])).gradients[layer][unit]
        inner = be.input_gradient(points, Neuron(layer, index)).gradient
        scale = (weights[step] * through).reshape(-1, 1, 1, 1)
        _add_by_sample(acc, sample, inner * scale)
    return Result(attribution=((x - base) * acc).astype(np.float32), metadata={"alphas": alphas, "weights": weights})


class _UnitGradients:
    """The backend as a class-score technique sees it, with every input gradient taken of the unit
    ``objective`` instead: lets :func:`neuron_gradient_shap` reuse gradient SHAP's draws and
    batching unchanged. Anything else the technique would ask (a forward pass for class scores)
    is refused rather than answered for the class."""

    def __init__(self, backend: Any, objective: Neuron) -> None:
        self._backend = backend
        self._objective = objective

    def input_gradient(self, x: np.ndarray, objective: Any, rule: Any = None) -> Any:
        return self._backend.input_gradient(x, self._objective, rule)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"neuron methods reuse input_gradient only, not {name!r}")


@method(
    "neuron_gradient_shap",
    "Neuron gradient SHAP (Lundberg & Lee 2017): gradient SHAP of one unit of a layer (Captum's NeuronGradientShap)",
    kind="input", needs_layer=True, needs_baseline=True, capabilities=_GRAD, family="neuron",
)
def neuron_gradient_shap(
    ctx: Context, *, neuron: Any = None, n_samples: int = 25, stdevs: float = 0.0, baselines: float | np.ndarray = 0.0
) -> Result:
    """:func:`~polyviz.techniques.gradients.gradient_shap` of the unit ``y`` at ``neuron`` of
    ``layer`` instead of the target score (Captum's ``NeuronGradientShap``): the mean over
    ``n_samples`` draws per sample of ``(x~ - b) * dy/dx(alpha x~ + (1 - alpha) b)``, with the same
    draws from ``seed`` (baseline indices, alphas, noise) as ``gradient_shap``. The target is not used."""
    layer, index = neuron_index(ctx, neuron)
    unit = Context(_UnitGradients(ctx.backend, Neuron(layer, index)), ctx.x, ctx.targets, layer,  # type: ignore[arg-type]
                   ctx.batch_size, ctx.seed, ctx.progress)
    result = gradient_shap(unit, n_samples=n_samples, stdevs=stdevs, baselines=baselines)
    return Result(attribution=result.attribution, metadata=result.metadata)


@method(
    "neuron_deeplift_shap",
    "Neuron DeepLIFT SHAP (Shrikumar et al. 2017; Lundberg & Lee 2017): DeepLIFT of one unit of a layer averaged over references (Captum's NeuronDeepLiftShap)",
    kind="input", needs_layer=True, needs_baseline=True, capabilities=(Capability.DEEPLIFT,), family="neuron",
)
def neuron_deeplift_shap(ctx: Context, *, neuron: Any = None, baselines: float | np.ndarray = 0.0) -> Result:
    """The mean over the references ``b`` in ``baselines`` (a scalar, one image or a distribution
    (B, H, W, C)) of DeepLIFT's ``(x - b) * m(x, b)`` for the unit ``y`` at ``neuron`` of ``layer``
    (``Backend.deeplift_gradient`` with a :class:`~polyviz.protocol.Neuron` objective: the rescale
    rule at the nonlinearities below the layer), as Captum's ``NeuronDeepLiftShap``. Every input is
    paired with every reference (pair ``k``: sample ``k // B``, reference ``k % B``), ``batch_size``
    pairs per call (default 16). The target is not used."""
    layer, index = neuron_index(ctx, neuron)
    x = ctx.x
    try:
        dist = np.asarray(baselines, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"baselines: expected a number or an array, got {type(baselines).__name__}") from None
    dist = np.broadcast_to(dist, (1, *x.shape[1:])) if dist.ndim == 0 else dist[None] if dist.ndim == 3 else dist
    if dist.ndim != 4 or dist.shape[1:] != x.shape[1:] or len(dist) == 0 or not np.all(np.isfinite(dist)):
        raise InputError(
            f"baselines: expected a scalar, one image {x.shape[1:]} or a distribution (B, *{x.shape[1:]}) of "
            f"finite values (channels-last), got shape {np.shape(baselines)}"
        )
    n, b = len(x), len(dist)
    objective = Neuron(layer, index)
    acc = np.zeros(x.shape, np.float64)
    for sl in ctx.chunks(n * b, 16, "neuron deeplift shap"):
        sample, ref = np.divmod(np.arange(sl.start, sl.stop), b)
        xs, refs = x[sample], np.ascontiguousarray(dist[ref])
        out = ctx.backend.deeplift_gradient(xs, refs, objective)
        _add_by_sample(acc, sample, (xs - refs) * out.gradient)
    return Result(attribution=(acc / b).astype(np.float32))
