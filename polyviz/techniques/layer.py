"""Layer attribution: how much each unit of one layer's output contributes to the target score.

Every method here returns the attribution shaped like the layer's output, channels-last and
without the batch axis in front: (N, h, w, C) for a convolutional map, (N, units) for a dense
layer (``kind="layer"``; ``Explanation.heatmap`` sums the channels, rendering upsamples the map to
the input). ``S`` is the pre-softmax target logit, ``A`` the layer's output. The definitions and the
discretisations are Captum's (``captum.attr.Layer*``, ``InternalInfluence``), with the path
quadratures of :func:`polyviz.techniques.gradients.ig_quadrature`:

* ``layer_activation``: ``A(x)``;
* ``layer_gradient_x_activation``: ``A(x) * dS/dA(x)``;
* ``layer_integrated_gradients``: integrated gradients in the layer's space, the activations
  interpolated straight from ``A(x')`` to ``A(x)`` and the forward continued from them;
* ``layer_conductance`` and ``internal_influence`` (Dhamdhere et al. 2018, arXiv:1805.12233): the
  gradient at the layer along the straight path in *input* space.

Path points of all samples go through the backend together, ``batch_size`` at a time.
"""

from __future__ import annotations

import numpy as np

from polyviz.errors import LayerError
from polyviz.protocol import OUTPUT, Capability, ClassScore, check_output_objective
from polyviz.techniques import Context, Result, method
from polyviz.techniques.gradients import (
    _add_by_sample,
    _baseline,
    _positive_int,
    _target_scores,
    ig_quadrature,
)

__all__ = [
    "layer_activation",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "layer_conductance",
    "internal_influence",
    "target_layer",
    "path_points",
]

_ACTS = (Capability.LAYER_ACTIVATIONS,)
_GRADS = (Capability.LAYER_GRADIENTS,)
_REPLACE = (Capability.LAYER_ACTIVATIONS, Capability.LAYER_REPLACE)


# --------------------------------------------------------------------------------------------
# Shared machinery (also used by polyviz.techniques.neuron)
# --------------------------------------------------------------------------------------------


def target_layer(ctx: Context) -> tuple[str, tuple[int, ...]]:
    """The layer to attribute to (``layer=``, or the last spatial layer) and its output shape
    (channels-last, no batch axis); a layer whose output shape is unknown is an error."""
    layer = ctx.layer
    if layer is None:
        from polyviz.api import default_layer

        layer = default_layer(ctx.backend)
    shape = ctx.backend.layer_info(layer).output_shape
    if shape is not None and any(d is None for d in shape) and Capability.LAYER_ACTIVATIONS in ctx.backend.capabilities:
        # a model with a dynamic input size (Keras Input((None, None, 3))): the size for this x
        acts = ctx.backend.layer_activations(ctx.x[:1], [layer])[layer]
        shape = tuple(acts.shape[1:])
    if shape is None or any(d is None for d in shape):
        raise LayerError(
            f"layer: the output shape of {layer!r} is unknown for this input ({shape}); choose a layer "
            "with one tensor output (a 4-D map whose layout could not be detected has no shape: declare "
            "__polyviz_layout__ on its torch module's class)"
        )
    return layer, tuple(int(d) for d in shape)


def path_points(x: np.ndarray, base: np.ndarray, alphas: np.ndarray, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample, step, points) for the flat indices in ``sl`` of the sample-major path
    ``base + alpha_k (x - base)`` (float32, as Captum builds it)."""
    sample, step = np.divmod(np.arange(sl.start, sl.stop), len(alphas))
    b = base[sample]
    a = alphas[step].astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
    return sample, step, b + a * (x[sample] - b)


def _layer_gradient_stream(ctx: Context, layer: str, x: np.ndarray, base: np.ndarray, alphas: np.ndarray, desc: str):
    """(sample, step, values, activations, gradients) at the input-space path points."""
    n = len(x)
    for sl in ctx.chunks(n * len(alphas), 16, desc):
        sample, step, points = path_points(x, base, alphas, sl)
        out = ctx.backend.layer_gradients(points, [layer], ClassScore(ctx.targets[sample]))
        yield sample, step, np.asarray(out.values, np.float64), out.activations[layer], out.gradients[layer]


def _end_scores(ctx: Context, alphas: np.ndarray, path_values: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S(x') and S(x): from the path when it visits alpha 0 / 1, otherwise by a forward pass."""
    n = len(ctx.x)
    ends: dict[float, np.ndarray | None] = {0.0: None, 1.0: None}
    for a, k in ((0.0, 0), (1.0, len(alphas) - 1)):
        if alphas[k] == a:
            ends[a] = path_values[:, k]
    missing = [a for a, v in ends.items() if v is None]
    if missing:
        stack = np.concatenate([np.asarray(base if a == 0.0 else ctx.x, np.float32) for a in missing])
        scores = _target_scores(ctx, stack, np.tile(ctx.targets, len(missing)))
        for i, a in enumerate(missing):
            ends[a] = scores[i * n : (i + 1) * n]
    return ends[0.0], ends[1.0]


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@method(
    "layer_activation",
    "Layer activation: the output of one layer, unit by unit (Captum's LayerActivation)",
    kind="layer", needs_layer=True, capabilities=_ACTS, family="layer",
)
def layer_activation(ctx: Context) -> Result:
    """``A(x)``, the layer's output (channels-last), in batches (default 32)."""
    layer, _ = target_layer(ctx)
    acts = [ctx.backend.layer_activations(ctx.x[sl], [layer])[layer] for sl in ctx.chunks(len(ctx.x), 32, "layer activation")]
    return Result(attribution=np.concatenate(acts).astype(np.float32))


@method(
    "layer_gradient_x_activation",
    "Layer gradient x activation: A * dS/dA at one layer (Captum's LayerGradientXActivation)",
    kind="layer", needs_layer=True, capabilities=_GRADS, family="layer",
)
def layer_gradient_x_activation(ctx: Context) -> Result:
    """``A(x) * dS/dA(x)``: one forward and one backward down to the layer per batch (default 32)."""
    layer, _ = target_layer(ctx)
    attr, scores = [], []
    for sl in ctx.chunks(len(ctx.x), 32, "layer gradient x activation"):
        out = ctx.backend.layer_gradients(ctx.x[sl], [layer], ClassScore(ctx.targets[sl]))
        attr.append(out.activations[layer] * out.gradients[layer])
        scores.append(out.values)
    return Result(attribution=np.concatenate(attr).astype(np.float32), scores=np.concatenate(scores).astype(np.float32))


@method(
    "layer_integrated_gradients",
    "Layer integrated gradients (Sundararajan et al. 2017 at a layer): (A(x) - A(x')) * integral of dS/dA along the straight path of the layer's activations",
    kind="layer", needs_layer=True, needs_baseline=True, capabilities=_REPLACE, family="layer",
)
def layer_integrated_gradients(
    ctx: Context, *, n_steps: int = 50, baseline: float | np.ndarray = 0.0, method: str = "gausslegendre"
) -> Result:
    """Captum's ``LayerIntegratedGradients``: with ``A' = A(x')`` the layer's output at the input
    baseline ``x'`` (``baseline``: a scalar, one image or one per sample),
    ``(A(x) - A') * sum_k w_k dS/dA(A' + a_k (A(x) - A'))``, where the forward pass runs on ``x``
    with the layer's output replaced by the interpolated activations
    (``Backend.replaced_layer_gradients``: nothing below the layer is differentiated). Alphas and
    weights as :func:`~polyviz.techniques.gradients.integrated_gradients` (``method``).

    Passes: one forward each on ``x`` and ``x'`` (activations and end scores), then ``N * n_steps``
    replaced points in batches (default 16). ``convergence_delta`` (metadata):
    ``sum(attr) - (S(x) - S(x'))``, as Captum's.
    """
    layer, _ = target_layer(ctx)
    alphas, weights = ig_quadrature(n_steps, method)
    steps = len(alphas)
    x = ctx.x
    base = _baseline(ctx, baseline)
    n = len(x)
    stack = np.concatenate([x, base])
    targets = np.tile(ctx.targets, 2)
    acts, scores = [], []
    for sl in ctx.chunks(2 * n, 32, "layer activations"):
        out = ctx.backend.layer_activations(stack[sl], [layer], include_output=True)
        check_output_objective(ClassScore(targets[sl]), out[OUTPUT].shape)
        acts.append(out[layer])
        scores.append(out[OUTPUT].reshape(sl.stop - sl.start, -1)[np.arange(sl.stop - sl.start), targets[sl]])
    acts_all = np.concatenate(acts).astype(np.float32)
    scores_all = np.concatenate(scores).astype(np.float64)
    a_x, a_b = acts_all[:n], acts_all[n:]
    acc = np.zeros(a_x.shape, np.float64)
    for sl in ctx.chunks(n * steps, 16, "layer integrated gradients"):
        sample, step, points = path_points(a_x, a_b, alphas, sl)
        out = ctx.backend.replaced_layer_gradients(x[sample], layer, points, ClassScore(ctx.targets[sample]))
        w = weights[step].reshape(-1, *([1] * (a_x.ndim - 1)))
        _add_by_sample(acc, sample, out.gradients[layer] * w)
    attr = (a_x.astype(np.float64) - a_b) * acc
    delta = attr.reshape(n, -1).sum(axis=1) - (scores_all[:n] - scores_all[n:])
    return Result(
        attribution=attr.astype(np.float32),
        scores=scores_all[:n].astype(np.float32),
        metadata={"convergence_delta": delta.astype(np.float32), "alphas": alphas, "weights": weights},
    )


@method(
    "layer_conductance",
    "Layer conductance (Dhamdhere et al. 2018, arXiv:1805.12233): the flow of integrated gradients through each unit of a layer",
    kind="layer", needs_layer=True, needs_baseline=True, capabilities=_GRADS, family="layer",
)
def layer_conductance(
    ctx: Context, *, n_steps: int = 50, baseline: float | np.ndarray = 0.0, method: str = "gausslegendre"
) -> Result:
    """Conductance of every unit y of the layer: ``sum_x (x - x') integral dS/dy dy/dx`` along the
    straight input path from ``x'``, discretised as Captum's ``LayerConductance``: with the
    ``n_steps + 1`` alphas ``a_0 < ... < a_n`` of ``method`` (including 0 and 1 only for
    ``"riemann_trapezoid"``) and ``x_k = x' + a_k (x - x')``,
    ``sum_{k<n} (A(x_{k+1}) - A(x_k)) * dS/dA(x_k)``. With Gauss-Legendre (Captum's default) the
    differences telescope to ``A(x_n) - A(x_0)``, not ``A(x) - A(x')``, as in Captum.

    Passes: ``N * (n_steps + 1)`` forward/backward passes down to the layer (batches of default
    16); one forward more for the end scores of ``convergence_delta`` (``sum(attr) - (S(x) - S(x'))``)
    when the alphas miss 0 or 1.
    """
    layer, _ = target_layer(ctx)
    steps = _positive_int(n_steps, "n_steps") + 1
    alphas, _ = ig_quadrature(steps, method)
    x = ctx.x
    base = _baseline(ctx, baseline)
    n = len(x)
    acc: np.ndarray | None = None
    path_values = np.zeros((n, steps))
    carry: tuple[np.ndarray, np.ndarray] | None = None  # (activation, gradient) of the previous point
    for sample, step, values, acts, grads in _layer_gradient_stream(ctx, layer, x, base, alphas, "layer conductance"):
        if acc is None:
            acc = np.zeros((n, *acts.shape[1:]), np.float64)
        path_values[sample, step] = values
        prev_a = np.concatenate([carry[0][None] if carry else acts[:1], acts[:-1]])
        prev_g = np.concatenate([carry[1][None] if carry else grads[:1], grads[:-1]])
        later = step > 0  # the first point of each sample starts its sum
        if later.any():
            contrib = (acts[later].astype(np.float64) - prev_a[later]) * prev_g[later]
            _add_by_sample(acc, sample[later], contrib)
        carry = (acts[-1], grads[-1])
    start, end = _end_scores(ctx, alphas, path_values, base)
    delta = acc.reshape(n, -1).sum(axis=1) - (end - start)
    return Result(
        attribution=acc.astype(np.float32),
        scores=end.astype(np.float32),
        metadata={"convergence_delta": delta.astype(np.float32), "alphas": alphas},
    )


@method(
    "internal_influence",
    "Internal influence (Leino et al. 2018; Dhamdhere et al. 2018): the integral of dS/dA at a layer along the straight input path",
    kind="layer", needs_layer=True, needs_baseline=True, capabilities=_GRADS, family="layer",
)
def internal_influence(
    ctx: Context, *, n_steps: int = 50, baseline: float | np.ndarray = 0.0, method: str = "gausslegendre"
) -> Result:
    """Captum's ``InternalInfluence``: ``sum_k w_k dS/dA(x' + a_k (x - x'))`` with the alphas and
    weights of ``method`` (as :func:`~polyviz.techniques.gradients.integrated_gradients`); the
    layer's gradient integrated along the input path, not multiplied by anything.
    ``N * n_steps`` passes down to the layer, in batches (default 16).
    """
    layer, _ = target_layer(ctx)
    alphas, weights = ig_quadrature(n_steps, method)
    x = ctx.x
    base = _baseline(ctx, baseline)
    n = len(x)
    acc: np.ndarray | None = None
    for sample, step, _, _, grads in _layer_gradient_stream(ctx, layer, x, base, alphas, "internal influence"):
        if acc is None:
            acc = np.zeros((n, *grads.shape[1:]), np.float64)
        _add_by_sample(acc, sample, grads * weights[step].reshape(-1, *([1] * (grads.ndim - 1))))
    return Result(attribution=acc.astype(np.float32), metadata={"alphas": alphas, "weights": weights})
