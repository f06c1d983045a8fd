"""Gradient attribution: one or a few backward passes per sample, written once in numpy.

Every method here asks the backend for ``input_gradient(x, ClassScore(targets), rule)`` (or a layer
objective for :func:`layer_guided_backprop`) in batches, and returns the raw signed attribution,
channels-last (N, H, W, C) and float32. Conventions, fixed and identical in every backend:

* ``S`` is the pre-softmax logit of the target class.
* ``saliency`` is the signed gradient (Captum's ``Saliency`` takes ``abs`` by default; tf-keras-vis
  takes the max of abs over channels): absolute values and channel reductions are rendering choices.
* Path and noise methods build their points in numpy from the same draws (``ctx.rng()``) and the same
  quadrature (Captum's alphas and weights), so torch and Keras see identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from polyviz.errors import InputError, did_you_mean
from polyviz.protocol import DECONVNET, GUIDED, Capability, ChannelMean, ClassScore, Neuron, Rule
from polyviz.techniques import METHODS, Context, Result, method

__all__ = [
    "saliency",
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "smoothgrad",
    "integrated_gradients",
    "gradient_shap",
    "layer_guided_backprop",
    "ig_quadrature",
]

_GRAD = (Capability.INPUT_GRADIENT,)
_RULES = (Capability.INPUT_GRADIENT, Capability.RELU_RULES)
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------

#: make(slice) -> (points, objective) for the flat indices in the slice
PointMaker = Callable[[slice], tuple[np.ndarray, object]]


def _stream(ctx: Context, n: int, make: PointMaker, rule: Rule | None, default: int, desc: str
            ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(slice, values, gradients) for ``n`` points built chunk by chunk: one gradient call per chunk."""
    for sl in ctx.chunks(n, default, desc):
        points, objective = make(sl)
        out = ctx.backend.input_gradient(points, objective, rule)
        yield sl, np.asarray(out.values, np.float64), np.asarray(out.gradient)


def _input_gradients(ctx: Context, rule: Rule | None = None, desc: str = "gradient") -> tuple[np.ndarray, np.ndarray]:
    """Target scores (N,) and d(score)/dx (N, H, W, C) at ``ctx.x``, one call per batch."""
    values, grads = [], []
    for _, v, g in _stream(ctx, len(ctx.x), lambda sl: (ctx.x[sl], ClassScore(ctx.targets[sl])), rule, 32, desc):
        values.append(v)
        grads.append(g)
    return np.concatenate(values), np.concatenate(grads)


def _add_by_sample(acc: np.ndarray, sample: np.ndarray, contrib: np.ndarray) -> None:
    """acc[sample[j]] += contrib[j] for a sorted ``sample`` index (float64 accumulation)."""
    owners, starts = np.unique(sample, return_index=True)
    acc[owners] += np.add.reduceat(contrib.astype(np.float64), starts, axis=0)


def _baseline(ctx: Context, value: object, name: str = "baseline") -> np.ndarray:
    """A scalar, one image (H, W, C) or one per sample (N, H, W, C), as float32 broadcast to x."""
    try:
        b = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number or an array, got {type(value).__name__}") from None
    shape = ctx.x.shape
    if b.ndim not in (0, 3, 4) or (b.ndim == 3 and b.shape != shape[1:]) or (b.ndim == 4 and b.shape != shape):
        raise InputError(
            f"{name}: expected a scalar, one image {shape[1:]} or one per sample {shape} "
            f"(channels-last), got shape {b.shape}"
        )
    if not np.all(np.isfinite(b)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return np.broadcast_to(b, shape)


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _target_scores(ctx: Context, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pre-softmax target scores of ``x`` with forward passes only (batched)."""
    out = []
    for sl in ctx.chunks(len(x), 32, "forward"):
        logits = ctx.backend.forward(x[sl])
        out.append(logits[np.arange(sl.stop - sl.start), targets[sl]])
    return np.concatenate(out).astype(np.float64)


def _gradient_result(ctx: Context, rule: Rule | None = None, times_input: bool = False) -> Result:
    values, grads = _input_gradients(ctx, rule)
    attr = grads * ctx.x if times_input else grads
    return Result(attribution=attr.astype(np.float32), scores=values.astype(np.float32))


# --------------------------------------------------------------------------------------------
# One backward pass
# --------------------------------------------------------------------------------------------


@method(
    "saliency",
    "Saliency / vanilla gradient (Simonyan et al. 2013, arXiv:1312.6034): the signed gradient dS/dx",
    kind="input", capabilities=_GRAD, family="gradient",
)
def saliency(ctx: Context) -> Result:
    """The raw, signed gradient of the target logit with respect to the input.

    Unlike Captum's ``Saliency`` (``abs=True`` by default) and tf-keras-vis (max of abs over
    channels), no absolute value or channel reduction is taken: those are rendering choices
    (``Explanation.render(sign=...)``). Captum's ``Saliency(...).attribute(x, abs=False)`` equals it.
    """
    return _gradient_result(ctx)


@method(
    "input_x_gradient",
    "Gradient x input (Shrikumar et al. 2016, arXiv:1605.01713): x * dS/dx",
    kind="input", capabilities=_GRAD, family="gradient",
)
def input_x_gradient(ctx: Context) -> Result:
    """The input times the signed gradient of the target logit (Captum's ``InputXGradient``)."""
    return _gradient_result(ctx, times_input=True)


@method(
    "guided_backprop",
    "Guided backpropagation (Springenberg et al. 2014, arXiv:1412.6806): every rectifier (ReLU, ReLU6, LeakyReLU, SiLU, GELU, hardswish) passes back only positive gradient at positive input",
    kind="input", capabilities=_RULES, family="gradient",
)
def guided_backprop(ctx: Context) -> Result:
    """Input gradient under ``Rule(relu="guided")``: every rectifier (ReLU, ReLU6, LeakyReLU, SiLU,
    GELU, hardswish; module, functional or fused) passes back ``g * f'(z) * [g > 0] * [z > 0]``
    (Springenberg et al., generalised beyond ReLU; definitions and sources in
    :mod:`polyviz.rules.guided`). Other rectifiers, and networks with no rectifier (where this would
    be saliency under another name), raise a :class:`~polyviz.errors.CapabilityError`."""
    return _gradient_result(ctx, GUIDED)


@method(
    "deconvnet",
    "Deconvnet (Zeiler & Fergus 2013, arXiv:1311.2901): every rectifier (ReLU, ReLU6, LeakyReLU, SiLU, GELU, hardswish) passes back only positive gradient, whatever its input",
    kind="input", capabilities=_RULES, family="gradient",
)
def deconvnet(ctx: Context) -> Result:
    """Input gradient under ``Rule(relu="deconvnet")``: every rectifier passes back ``g * [g > 0]``
    whatever its input (Zeiler & Fergus; Captum's ``Deconvolution`` for ReLU); the same rectifiers
    and refusals as :func:`guided_backprop` (:mod:`polyviz.rules.guided`)."""
    return _gradient_result(ctx, DECONVNET)


@method(
    "layer_guided_backprop",
    "Layer activation with guided backprop (Springenberg et al. 2014, fig. 3): guided backprop started from one filter of one layer",
    kind="input", needs_layer=True, capabilities=_RULES, family="gradient",
)
def layer_guided_backprop(ctx: Context, *, channel: int | list[int] = 0, position: str = "mean") -> Result:
    """Guided backprop of one channel (``channel``: an int or one per sample) of ``layer``.

    ``position="mean"``: the objective is the channel's mean activation (its whole feature map, as
    pytorch-cnn-visualizations' sum over the map, up to the constant 1/(h w)). ``position="max"``: the
    single strongest activation of the channel (Springenberg et al.'s fig. 3 / Zeiler & Fergus'
    reconstructions start from one neuron), found with one activation pass; samples whose maximum
    lies at the same position share a gradient call.
    """
    be = ctx.backend
    layer = ctx.layer
    if layer is None:
        from polyviz.api import default_layer

        layer = default_layer(be)
    n = len(ctx.x)
    channels = ChannelMean(layer, channel).channels(n)
    if position == "mean":
        scores, grads = [], []
        for _, v, g in _stream(ctx, n, lambda sl: (ctx.x[sl], ChannelMean(layer, channels[sl])), GUIDED, 32, "guided"):
            scores.append(v)
            grads.append(g)
        return Result(attribution=np.concatenate(grads).astype(np.float32),
                      metadata={"layer_objective": np.concatenate(scores).astype(np.float32)})
    if position != "max":
        raise InputError(f"position: expected 'mean' or 'max', got {position!r}")
    acts = []
    for sl in ctx.chunks(n, 32, "activations"):
        acts.append(be.layer_activations(ctx.x[sl], [layer])[layer])
    acts = np.concatenate(acts)
    if acts.ndim < 3 or channels.max(initial=0) >= acts.shape[-1]:
        from polyviz.errors import TargetError

        raise TargetError(f"channel: out of range for layer {layer!r} with output shape {acts.shape[1:]}")
    picked = acts[np.arange(n), ..., channels].reshape(n, -1)
    positions = np.unravel_index(picked.argmax(axis=1), acts.shape[1:-1])
    index = np.stack([*positions, channels], axis=1)
    attr = np.zeros_like(ctx.x)
    values = np.zeros(n, np.float32)
    for key in np.unique(index, axis=0):
        rows = np.flatnonzero((index == key).all(axis=1))
        out = be.input_gradient(ctx.x[rows], Neuron(layer, tuple(int(k) for k in key)), GUIDED)
        attr[rows], values[rows] = out.gradient, out.values
    return Result(attribution=attr, metadata={"layer_objective": values, "neuron_index": index})


# --------------------------------------------------------------------------------------------
# Path methods
# --------------------------------------------------------------------------------------------


def ig_quadrature(n_steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Captum's alphas and step weights (``captum.attr._utils.approximation_methods``).

    Gauss-Legendre on [0, 1]; Riemann left/right/middle with weights 1/n; trapezoid with
    ``linspace(0, 1, n)`` and half weights at both ends. Kept exactly as Captum has it: its
    trapezoid weights are ``1/n`` (not ``1/(n-1)``) with halved ends, so they sum to ``(n-1)/n``
    and the attribution is scaled by that factor (the convergence delta shows it).
    """
    if rule not in IG_METHODS:
        raise InputError(f"method: expected one of {IG_METHODS}, got {rule!r}.{did_you_mean(str(rule), IG_METHODS)}")
    n = _positive_int(n_steps, "n_steps", 1 if rule == "gausslegendre" else 2)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    weights = np.full(n, 1.0 / n)
    if rule == "riemann_trapezoid":
        weights[[0, -1]] /= 2
        alphas = np.linspace(0.0, 1.0, n)
    elif rule == "riemann_left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
    elif rule == "riemann_middle":
        alphas = np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
    else:
        alphas = np.linspace(1.0 / n, 1.0, n)
    # Captum builds them with torch.linspace in float32
    return alphas.astype(np.float32).astype(np.float64), weights


@method(
    "integrated_gradients",
    "Integrated gradients (Sundararajan et al. 2017, arXiv:1703.01365): (x - x') * integral of dS/dx along the straight path from x'",
    kind="input", needs_baseline=True, capabilities=_GRAD, family="gradient",
)
def integrated_gradients(
    ctx: Context, *, n_steps: int = 50, baseline: float | np.ndarray = 0.0, method: str = "gausslegendre"
) -> Result:
    """``(x - x') * sum_k w_k dS/dx(x' + a_k (x - x'))`` with Captum's alphas ``a_k`` and weights
    ``w_k`` for the quadrature ``method`` (as Captum's: ``"gausslegendre"``, Captum's default, or
    ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``, ``"riemann_trapezoid"``).

    All ``N * n_steps`` path points go through the backend in batches (default 16). The metadata
    holds ``convergence_delta`` per sample, ``sum(attr) - (S(x) - S(x'))``: the end scores come from
    the path points when the rule has alpha 0 / 1, otherwise from one extra forward pass.
    """
    alphas, weights = ig_quadrature(n_steps, method)
    steps = len(alphas)
    x = ctx.x.astype(np.float32)
    base = _baseline(ctx, baseline)
    n = len(x)
    acc = np.zeros(x.shape, np.float64)
    path_values = np.zeros((n, steps))

    def points(sl: slice) -> tuple[np.ndarray, ClassScore]:
        sample, step = np.divmod(np.arange(sl.start, sl.stop), steps)
        b = base[sample]
        a = alphas[step].astype(np.float32).reshape(-1, 1, 1, 1)
        return b + a * (x[sample] - b), ClassScore(ctx.targets[sample])

    for sl, values, grads in _stream(ctx, n * steps, points, None, 16, "integrated gradients"):
        sample, step = np.divmod(np.arange(sl.start, sl.stop), steps)
        path_values[sample, step] = values
        _add_by_sample(acc, sample, grads * weights[step].reshape(-1, 1, 1, 1))
    attr = (x - base) * acc
    ends = {0.0: None, 1.0: None}
    for a, k in ((0.0, 0), (1.0, steps - 1)):
        if alphas[k] == a:
            ends[a] = path_values[:, k]
    missing = [a for a, v in ends.items() if v is None]
    if missing:  # one forward pass for the end points the quadrature does not visit
        stack = np.concatenate([np.asarray(base if a == 0.0 else x, np.float32) for a in missing])
        scores = _target_scores(ctx, stack, np.tile(ctx.targets, len(missing)))
        for i, a in enumerate(missing):
            ends[a] = scores[i * n : (i + 1) * n]
    delta = attr.reshape(n, -1).sum(axis=1) - (ends[1.0] - ends[0.0])
    return Result(
        attribution=attr.astype(np.float32),
        scores=ends[1.0].astype(np.float32),
        metadata={"convergence_delta": delta.astype(np.float32), "alphas": alphas, "weights": weights},
    )


@method(
    "gradient_shap",
    "Gradient SHAP (Lundberg & Lee 2017): expected gradient x (x - x') over random baselines and random points on the path, with input noise",
    kind="input", needs_baseline=True, capabilities=_GRAD, family="gradient",
)
def gradient_shap(
    ctx: Context, *, n_samples: int = 25, stdevs: float = 0.0, baselines: float | np.ndarray = 0.0
) -> Result:
    """Captum's ``GradientShap``: for each of ``n_samples`` draws per sample, a noisy input
    ``x~ = x + stdevs * N(0, 1)`` (absolute ``stdevs``, as Captum), a baseline ``b`` drawn uniformly
    from ``baselines`` (a scalar, one image (H, W, C) or a distribution (B, H, W, C)) and
    ``alpha ~ U(0, 1)``; attribution = mean of ``(x~ - b) * dS/dx(alpha x~ + (1 - alpha) b)``.

    Draws, all numpy: ``ctx.rng(0)`` gives the baseline indices ``integers(0, B, N * n)`` then the
    alphas ``uniform(0, 1, N * n)``; ``ctx.rng(1)`` gives the noise ``standard_normal`` in the order
    of the flat index (sample major), only when ``stdevs > 0``. All ``N * n_samples`` points are
    batched (default 32); batch size does not change the draws.
    """
    n_draws = _positive_int(n_samples, "n_samples")
    try:
        stdev = float(stdevs)
    except (TypeError, ValueError):
        raise InputError(f"stdevs: expected a non-negative number, got {stdevs!r}") from None
    if not stdev >= 0:
        raise InputError(f"stdevs: expected a non-negative number, got {stdevs!r}")
    x = ctx.x.astype(np.float32)
    dist = np.asarray(baselines, dtype=np.float32)
    if dist.ndim == 0:
        dist = np.broadcast_to(dist, (1, *x.shape[1:]))
    elif dist.ndim == 3:
        dist = dist[None]
    if dist.ndim != 4 or dist.shape[1:] != x.shape[1:] or not np.all(np.isfinite(dist)):
        raise InputError(
            f"baselines: expected a scalar, one image {x.shape[1:]} or a distribution (B, *{x.shape[1:]}) "
            f"of finite values (channels-last), got shape {np.shape(baselines)}"
        )
    n = len(x)
    rng = ctx.rng(0)
    pick = rng.integers(0, len(dist), n * n_draws)
    alpha = rng.uniform(0.0, 1.0, n * n_draws).astype(np.float32)
    noise_rng = ctx.rng(1)
    acc = np.zeros(x.shape, np.float64)
    diffs: dict[int, np.ndarray] = {}

    def points(sl: slice) -> tuple[np.ndarray, ClassScore]:
        sample = np.arange(sl.start, sl.stop) // n_draws
        noisy = x[sample]
        if stdev > 0:
            noisy = noisy + np.float32(stdev) * noise_rng.standard_normal(noisy.shape, dtype=np.float32)
        b = dist[pick[sl]]
        a = alpha[sl].reshape(-1, 1, 1, 1)
        diffs[sl.start] = noisy - b
        return a * noisy + (1 - a) * b, ClassScore(ctx.targets[sample])

    for sl, _, grads in _stream(ctx, n * n_draws, points, None, 32, "gradient shap"):
        _add_by_sample(acc, np.arange(sl.start, sl.stop) // n_draws, diffs.pop(sl.start) * grads)
    return Result(attribution=(acc / n_draws).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Noise tunnel
# --------------------------------------------------------------------------------------------

SMOOTHING = ("mean", "square", "variance")
_GROUP_BYTES = 256 * 2**20  # noisy copies held at once


@method(
    "smoothgrad",
    "SmoothGrad / noise tunnel (Smilkov et al. 2017, arXiv:1706.03825; VarGrad, Adebayo et al. 2018): any input-space method averaged over noisy copies",
    kind="input", capabilities=_GRAD, family="gradient",
)
def smoothgrad(
    ctx: Context,
    *,
    base: str = "saliency",
    n_samples: int = 25,
    noise_level: float = 0.15,
    kind: str = "mean",
    base_options: dict | None = None,
) -> Result:
    """``base`` (any input-space method) on ``n_samples`` noisy copies ``x + sigma N(0, 1)`` per
    sample, with ``sigma = noise_level * (max(x_i) - min(x_i))`` of each sample (PAIR's 0.15 and 25).

    ``kind``: ``"mean"`` (SmoothGrad), ``"square"`` (mean of squares, SmoothGrad-Squared) or
    ``"variance"`` (VarGrad, mean of squares minus squared mean, as Captum's ``vargrad``).
    Noise: ``ctx.rng()``'s ``standard_normal`` drawn sample after sample. The noisy copies of
    several samples are passed to the base method together (it batches them with ``batch_size``).
    """
    from polyviz.techniques import load_all

    load_all()
    if base not in METHODS or base == "smoothgrad" or METHODS[base].kind != "input":
        names = [k for k, v in METHODS.items() if v.kind == "input" and k != "smoothgrad"]
        raise InputError(
            f"base: expected an input-space method ({', '.join(sorted(names))}), got {base!r}."
            f"{did_you_mean(str(base), names)}"
        )
    info = METHODS[base]
    if base_options is not None and not isinstance(base_options, Mapping):
        raise InputError(f"base_options: expected a dict of {base!r}'s options or None, got {type(base_options).__name__}")
    options = dict(base_options or {})
    unknown = [k for k in options if k not in info.options]
    if unknown:
        raise InputError(
            f"base_options: {unknown[0]!r} is not an option of {base!r}.{did_you_mean(unknown[0], info.options)}"
            f" Its options: {', '.join(info.options) or 'none'}"
        )
    for capability in info.capabilities:
        ctx.backend.require(capability)
    copies = _positive_int(n_samples, "n_samples")
    if kind not in SMOOTHING:
        raise InputError(f"kind: expected one of {SMOOTHING}, got {kind!r}")
    try:
        level = float(noise_level)
    except (TypeError, ValueError):
        raise InputError(f"noise_level: expected a non-negative number, got {noise_level!r}") from None
    if not level >= 0:
        raise InputError(f"noise_level: expected a non-negative number, got {noise_level!r}")
    x = ctx.x.astype(np.float32)
    n = len(x)
    sigma = (level * (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1))).astype(np.float32)
    group = max(1, _GROUP_BYTES // max(1, copies * x[0].nbytes))
    rng = ctx.rng()
    total = np.zeros(x.shape, np.float64)
    squares = np.zeros(x.shape, np.float64)
    for start in range(0, n, group):
        rows = np.arange(start, min(start + group, n))
        noise = rng.standard_normal((len(rows), copies, *x.shape[1:]), dtype=np.float32)
        noisy = x[rows, None] + sigma[rows].reshape(-1, 1, 1, 1, 1) * noise
        sub = Context(ctx.backend, noisy.reshape(-1, *x.shape[1:]), np.repeat(ctx.targets[rows], copies),
                      ctx.layer, ctx.batch_size, ctx.seed, ctx.progress)
        attr = np.asarray(info.fn(sub, **options).attribution, np.float64).reshape(len(rows), copies, *x.shape[1:])
        total[rows] = attr.mean(axis=1)
        squares[rows] = (attr**2).mean(axis=1)
    out = {"mean": total, "square": squares, "variance": squares - total**2}[kind]
    return Result(attribution=out.astype(np.float32), metadata={"sigma": sigma})
