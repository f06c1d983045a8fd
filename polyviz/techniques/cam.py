"""Class activation maps: a weighting of one layer's channels, summed into a map and upsampled.

Written once in numpy over the backend protocol. The shared machinery lives here once
(pytorch-grad-cam's ``BaseCAM`` idea): :func:`_gradient_pass` gets the layer activations ``A``
(N, h, w, C) and the gradients ``G = dS/dA`` of the target scores with ONE ``layer_gradients`` call
per batch, and each gradient variant is a small function ``(A, G) -> (N, h, w)`` layer map.
Gradient-free variants (Score-CAM, Ablation-CAM, Eigen-CAM, CAM) get ``A`` with
``layer_activations`` and their channel weights from masked or ablated forward passes.

Every method returns the raw layer map (``layer_attribution``, (N, h, w), unnormalised) and the
map upsampled to the input (``attribution``, (N, H, W)) with :func:`polyviz.interpolation.resize`,
``upsample="bilinear"`` (half-pixel centres, = torch ``bilinear, align_corners=False``) by
default or ``"nearest"``. Conventions, fixed and identical in every backend:

* ``S`` is the pre-softmax logit of the target class (Score-CAM's ``score="softmax"`` aside).
* Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Score-CAM and Ablation-CAM apply the
  final ReLU of their papers; CAM (Zhou et al.) and Eigen-CAM are returned signed (their papers
  have no ReLU; pytorch-grad-cam clips every map at 0 before its min-max scaling).
* No min-max normalisation: that belongs to rendering.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polyviz.errors import InputError, LayerError
from polyviz.interpolation import MODES, resize
from polyviz.protocol import GUIDED, Capability, ClassScore, LowResMasks
from polyviz.techniques import Context, Result, method

__all__ = [
    "gradcam",
    "gradcam_plus_plus",
    "xgradcam",
    "hirescam",
    "layercam",
    "guided_gradcam",
    "scorecam",
    "ablationcam",
    "eigencam",
    "cam",
]

_GRAD_CAPS = (Capability.LAYER_GRADIENTS,)


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _layer(ctx: Context) -> str:
    """The CAM layer (explicit or the default), checked to have a spatial (h, w, C) output."""
    be = ctx.backend
    if ctx.layer is None:
        from polyviz.api import default_layer

        layer = default_layer(be)
    else:
        (layer,) = be.check_layers([ctx.layer])
    info = be.layer_info(layer)
    if not info.spatial:
        shape = ("an unknown shape (no single tensor output, or a map whose layout could not be detected: "
                 "declare __polyviz_layout__ on a torch module's class)" if info.output_shape is None
                 else f"output shape {tuple(info.output_shape)}")
        raise LayerError(
            f"layer {layer!r} has {shape}, not a spatial map; CAM methods need a conv/pool layer"
        )
    return layer


def _check_upsample(upsample: str) -> None:
    if upsample not in MODES:
        raise InputError(f"upsample: expected one of {MODES}, got {upsample!r}")


def _upsample(layer_map: np.ndarray, ctx: Context, upsample: str) -> np.ndarray:
    return resize(layer_map, (ctx.x.shape[1], ctx.x.shape[2]), upsample)


def _weighted_sum(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_c weights[n, c] * A[n, :, :, c] -> (N, h, w), accumulated in float64."""
    return np.einsum("nhwc,nc->nhw", acts.astype(np.float64), np.asarray(weights, np.float64))


def _gradient_pass(ctx: Context, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target scores (N,), activations A and gradients dS/dA (N, h, w, C): one
    ``layer_gradients`` call per batch, backward pass stopped at the layer."""
    values, acts, grads = [], [], []
    for sl in ctx.chunks(len(ctx.x), 32, "cam"):
        out = ctx.backend.layer_gradients(ctx.x[sl], [layer], ClassScore(ctx.targets[sl]))
        values.append(out.values)
        acts.append(out.activations[layer])
        grads.append(out.gradients[layer])
    return np.concatenate(values), np.concatenate(acts), np.concatenate(grads)


def _activation_pass(ctx: Context, layer: str, default: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Activations of ``layer`` (N, h, w, C) and the model outputs (N, K), one call per batch."""
    from polyviz.protocol import OUTPUT

    acts, outs = [], []
    for sl in ctx.chunks(len(ctx.x), default, "activations"):
        out = ctx.backend.layer_activations(ctx.x[sl], [layer], include_output=True)
        acts.append(out[layer])
        outs.append(out[OUTPUT])
    return np.concatenate(acts), np.concatenate(outs)


def _target_scores(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs)
    if outputs.ndim != 2:
        raise InputError(f"model output: CAM methods need (N, classes) outputs, got shape {outputs.shape}")
    if (targets >= outputs.shape[1]).any():
        from polyviz.errors import TargetError

        raise TargetError(
            f"target: class index {int(targets.max())} is out of range for a model with "
            f"{outputs.shape[1]} outputs"
        )
    return outputs[np.arange(len(outputs)), targets]


def _result(ctx: Context, layer_map: np.ndarray, scores: np.ndarray | None, upsample: str,
            **metadata) -> Result:
    layer_map = np.asarray(layer_map, np.float32)
    return Result(
        attribution=_upsample(layer_map, ctx, upsample),
        layer_attribution=layer_map,
        scores=None if scores is None else np.asarray(scores, np.float32),
        metadata=metadata,
    )


def _gradient_cam(ctx: Context, variant: Callable[[np.ndarray, np.ndarray], np.ndarray], upsample: str) -> Result:
    _check_upsample(upsample)
    layer = _layer(ctx)
    values, acts, grads = _gradient_pass(ctx, layer)
    return _result(ctx, variant(acts, grads), values, upsample)


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


# --------------------------------------------------------------------------------------------
# Gradient variants: (A, G) -> (N, h, w)
# --------------------------------------------------------------------------------------------


def gradcam_map(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_c mean_hw(dS/dA_c) A_c)."""
    return _relu(_weighted_sum(acts, grads.astype(np.float64).mean(axis=(1, 2))))


def gradcam_plus_plus_map(acts: np.ndarray, grads: np.ndarray, eps: float = 0.0,
                          normalize_alphas: bool = False) -> np.ndarray:
    """Grad-CAM++ closed form (Chattopadhyay et al. 2017, eq. 19 with Y = exp(S)).

    alpha_ij^c = g^2 / (2 g^2 + sum_ab A_ab^c g^3) (0 where g = 0 or the denominator is 0),
    w_c = sum_ij alpha_ij^c ReLU(g_ij^c), map = ReLU(sum_c w_c A_c), with g = dS/dA. The factor
    exp(S) of dY/dA = exp(S) dS/dA cancels in alpha and is a positive per-sample constant in w_c:
    it is left out (as pytorch-grad-cam does), so that large logits do not overflow.
    ``eps`` is added to the denominator (pytorch-grad-cam uses 1e-6); ``normalize_alphas``
    divides alpha by its spatial sum per channel (the authors' TF code and tf-keras-vis).
    """
    g = grads.astype(np.float64)
    a = acts.astype(np.float64)
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(axis=(1, 2), keepdims=True)
    denom = 2.0 * g2 + sum_a * g3 + eps
    ok = (g != 0) & (denom != 0)
    alpha = np.where(ok, g2 / np.where(ok, denom, 1.0), 0.0)
    if normalize_alphas:
        total = alpha.sum(axis=(1, 2), keepdims=True)
        alpha = alpha / np.where(total == 0, 1.0, total)
    weights = (alpha * _relu(g)).sum(axis=(1, 2))
    return _relu(_weighted_sum(a, weights))


def xgradcam_map(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_c w_c A_c), w_c = sum_hw(A_c dS/dA_c) / sum_hw(A_c) (0 for a channel whose sum is 0)."""
    a = acts.astype(np.float64)
    num = (a * grads).sum(axis=(1, 2))
    den = a.sum(axis=(1, 2))
    weights = np.where(den != 0, num / np.where(den != 0, den, 1.0), 0.0)
    return _relu(_weighted_sum(a, weights))


def hirescam_map(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_c dS/dA_c * A_c), elementwise (no spatial averaging of the gradient)."""
    return _relu((acts.astype(np.float64) * grads).sum(axis=-1))


def layercam_map(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_c ReLU(dS/dA_c) * A_c), elementwise."""
    return _relu((acts.astype(np.float64) * _relu(grads.astype(np.float64))).sum(axis=-1))


# --------------------------------------------------------------------------------------------
# Registered methods
# --------------------------------------------------------------------------------------------


@method(
    "gradcam",
    "Grad-CAM (Selvaraju et al. 2016, arXiv:1610.02391): ReLU(sum_c mean_hw(dS/dA_c) A_c) at a conv layer, upsampled",
    kind="map", needs_layer=True, capabilities=_GRAD_CAPS, family="cam",
)
def gradcam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    """Grad-CAM with the paper's ReLU; raw (unnormalised) layer map and its upsampling."""
    return _gradient_cam(ctx, gradcam_map, upsample)


@method(
    "gradcam_plus_plus",
    "Grad-CAM++ (Chattopadhyay et al. 2017, arXiv:1710.11063): channel weights from the second- and third-order terms of exp(S)",
    kind="map", needs_layer=True, capabilities=_GRAD_CAPS, family="cam",
)
def gradcam_plus_plus(ctx: Context, *, upsample: str = "bilinear", eps: float = 0.0,
                      normalize_alphas: bool = False) -> Result:
    """Grad-CAM++ closed form (see :func:`gradcam_plus_plus_map`). ``eps=1e-6`` reproduces
    pytorch-grad-cam; ``normalize_alphas=True`` reproduces tf-keras-vis / the authors' code."""
    return _gradient_cam(
        ctx, lambda a, g: gradcam_plus_plus_map(a, g, eps=float(eps), normalize_alphas=bool(normalize_alphas)),
        upsample,
    )


@method(
    "xgradcam",
    "XGrad-CAM (Fu et al. 2020, arXiv:2008.02312): weights sum_hw(A_c dS/dA_c) / sum_hw(A_c)",
    kind="map", needs_layer=True, capabilities=_GRAD_CAPS, family="cam",
)
def xgradcam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    return _gradient_cam(ctx, xgradcam_map, upsample)


@method(
    "hirescam",
    "HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): ReLU(sum_c dS/dA_c * A_c), elementwise",
    kind="map", needs_layer=True, capabilities=_GRAD_CAPS, family="cam",
)
def hirescam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    return _gradient_cam(ctx, hirescam_map, upsample)


@method(
    "layercam",
    "LayerCAM (Jiang et al. 2021, IEEE TIP): ReLU(sum_c ReLU(dS/dA_c) * A_c), elementwise",
    kind="map", needs_layer=True, capabilities=_GRAD_CAPS, family="cam",
)
def layercam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    return _gradient_cam(ctx, layercam_map, upsample)


@method(
    "guided_gradcam",
    "Guided Grad-CAM (Selvaraju et al. 2016): guided backprop (Springenberg et al. 2014) times the upsampled Grad-CAM",
    kind="input", needs_layer=True,
    capabilities=(Capability.LAYER_GRADIENTS, Capability.INPUT_GRADIENT, Capability.RELU_RULES), family="cam",
)
def guided_gradcam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    """Guided gradient (N, H, W, C) * Grad-CAM upsampled to (N, H, W), broadcast over channels.

    Captum's ``GuidedGradCam`` computes the same product with ``interpolate_mode="nearest"`` by
    default; ``upsample="nearest"`` matches it (for integer scale factors torch's ``nearest`` and
    polyviz's half-pixel nearest pick the same pixels).
    """
    _check_upsample(upsample)
    layer = _layer(ctx)
    values, acts, grads = _gradient_pass(ctx, layer)
    layer_map = gradcam_map(acts, grads).astype(np.float32)
    up = _upsample(layer_map, ctx, upsample)
    guided = []
    for sl in ctx.chunks(len(ctx.x), 32, "guided backprop"):
        guided.append(ctx.backend.input_gradient(ctx.x[sl], ClassScore(ctx.targets[sl]), GUIDED).gradient)
    guided = np.concatenate(guided)
    return Result(
        attribution=(guided * up[..., None]).astype(np.float32),
        layer_attribution=layer_map,
        scores=np.asarray(values, np.float32),
    )


def _softmax_target(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = outputs.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[np.arange(len(z)), targets] / e.sum(axis=1)


def _unique_channel_masks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one sample's activations (h, w, C): the distinct Score-CAM masks (U, h, w) and, per
    channel, the index of its mask (-1: no pass needed). Upsampling is linear and the min-max
    normalisation is affine invariant, so channels equal up to a positive affine map give the same
    mask, and every constant channel gives the all-zero mask; each distinct mask is evaluated once.
    An all-zero channel adds ``w_c * 0`` to the map whatever its weight: it gets no mask at all, so
    the all-zero mask is evaluated only for constant channels that are not zero."""
    maps = np.moveaxis(a, -1, 0).astype(np.float64)  # (C, h, w)
    flat = maps.reshape(len(maps), -1)
    zero = ~flat.any(axis=1)
    inverse = np.full(len(maps), -1, dtype=np.int64)
    if zero.all():
        return np.zeros((0, *maps.shape[1:]), np.float32), inverse
    flat, maps = flat[~zero], maps[~zero]
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    const = span[:, 0] <= 0
    keys = np.where(const[:, None], 0.0, (flat - lo) / np.where(const[:, None], 1.0, span))
    _, first, unique_inverse = np.unique(keys.astype(np.float32), axis=0, return_index=True, return_inverse=True)
    masks = maps[first]
    masks[const[first]] = 0.0
    inverse[~zero] = unique_inverse.reshape(-1)
    return masks.astype(np.float32), inverse


def _top_channels(a: np.ndarray, k: int | None) -> np.ndarray:
    """Faster Score-CAM's channel choice for one sample's activations (h, w, C): the ``k`` channels
    of largest spatial variance, largest first, ties to the lower index (``tf.math.top_k``'s order,
    as tf-keras-vis' ``max_N``); every channel when ``k`` is None or >= C."""
    c = a.shape[-1]
    if k is None or k >= c:
        return np.arange(c)
    var = a.reshape(-1, c).astype(np.float64).var(axis=0)
    return np.argsort(-var, kind="stable")[:k]


@method(
    "scorecam",
    "Score-CAM (Wang et al. 2020, CVPR workshops, arXiv:1910.01279): channel weight = target score of the input masked by the channel's upsampled, min-max normalised map; no gradients",
    kind="map", needs_layer=True,
    capabilities=(Capability.LAYER_ACTIVATIONS, Capability.MASKED_SCORES), family="cam",
)
def scorecam(ctx: Context, *, score: str = "softmax", upsample: str = "bilinear",
             max_channels: int | None = None) -> Result:
    """Score-CAM: ReLU(sum_c w_c A_c), w_c = softmax probability (``score="softmax"``) or logit
    (``score="logit"``) of the target class for ``x * m_c``, where ``m_c`` is channel c upsampled
    (bilinear, the polyviz definition) and min-max normalised to [0, 1] (baseline 0).

    As pytorch-grad-cam and tf-keras-vis, the paper's baseline score f(x_b) is not subtracted
    (it shifts every weight alike). pytorch-grad-cam then takes a softmax of the weights over the
    channels; tf-keras-vis uses the class probabilities, as here. Identical masks (constant
    channels, duplicated channels) are evaluated once and all-zero channels not at all (their
    term is 0 whatever their weight); masks are batched ``batch_size`` (32) at a time, across
    samples. ``metadata["forward_passes"]`` counts the masked inputs evaluated.

    ``max_channels=k``: Faster Score-CAM (tabayashi0117, github.com/tabayashi0117/Score-CAM;
    tf-keras-vis' ``max_N``): only the k channels of largest spatial variance of A_c enter the
    map, at most k passes per sample instead of C. The channels are chosen per sample
    (tf-keras-vis takes the union over the batch, which is the same for one image);
    ``max_channels >= C`` or None is full Score-CAM.
    """
    if score not in ("softmax", "logit"):
        raise InputError(f"score: expected 'softmax' or 'logit', got {score!r}")
    if max_channels is not None and (
        isinstance(max_channels, bool) or not isinstance(max_channels, int | np.integer) or max_channels < 1
    ):
        raise InputError(f"max_channels: expected a positive int or None, got {max_channels!r}")
    _check_upsample(upsample)
    layer = _layer(ctx)
    acts, outputs = _activation_pass(ctx, layer)
    base_scores = _target_scores(outputs, ctx.targets)
    masks, owners, inverses = [], [], []
    offset = 0
    for n in range(len(acts)):
        channels = _top_channels(acts[n], max_channels)
        m, inv = _unique_channel_masks(acts[n][..., channels])
        full = np.full(acts.shape[-1], -1, dtype=np.int64)
        full[channels] = np.where(inv >= 0, inv + offset, -1)
        masks.append(m)
        owners.append(np.full(len(m), n, dtype=np.int64))
        inverses.append(full)
        offset += len(m)
    masks_all = np.concatenate(masks)
    owner = np.concatenate(owners)
    weights_unique = np.empty(len(masks_all), dtype=np.float64)
    for sl in ctx.chunks(len(masks_all), 32, "scorecam"):
        samples, local = np.unique(owner[sl], return_inverse=True)
        spec = LowResMasks(masks_all[sl], mode="bilinear", normalize=True)
        targets = ctx.targets[owner[sl]]
        if score == "softmax":
            out = ctx.backend.masked_scores(ctx.x[samples], spec, 0.0, sample_index=local)
            weights_unique[sl] = _softmax_target(np.asarray(out), targets)
        else:
            out = ctx.backend.masked_scores(
                ctx.x[samples], spec, 0.0, sample_index=local, objective=ClassScore(targets)
            )
            weights_unique[sl] = np.asarray(out, np.float64)
    # (N, C): a channel without a mask (index -1: all zero, or not among the max_channels) weighs 0
    padded = np.append(weights_unique, 0.0)
    weights = np.stack([padded[inv] for inv in inverses])
    layer_map = _relu(_weighted_sum(acts, weights))
    return _result(ctx, layer_map, base_scores, upsample, forward_passes=int(len(masks_all)))


@method(
    "ablationcam",
    "Ablation-CAM (Desai & Ramaswamy 2020, WACV): channel weight = relative drop (S - S_c) / S of the score when channel c is zeroed",
    kind="map", needs_layer=True,
    capabilities=(Capability.LAYER_ACTIVATIONS, Capability.LAYER_MASKED_SCORES), family="cam",
)
def ablationcam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    """Ablation-CAM: ReLU(sum_c w_c A_c), w_c = (S - S_c) / S, S_c the target logit with channel c
    of the layer set to 0 (pytorch-grad-cam's formula; it too zeroes the channel when the layer's
    minimum is 0, and for a layer with negative values uses a very negative value instead, where
    polyviz keeps the paper's zero). A channel that is already all zero is not run: its S_c is S. Where S is exactly 0
    the relative drop is undefined and the absolute drop S - S_c is used. Ablations are batched
    ``batch_size`` (32) at a time, across samples.
    """
    _check_upsample(upsample)
    layer = _layer(ctx)
    acts, outputs = _activation_pass(ctx, layer)
    s = _target_scores(outputs, ctx.targets).astype(np.float64)
    n, _, _, c = acts.shape
    active = np.abs(acts).reshape(n, -1, c).max(axis=1) > 0  # (N, C)
    sample_idx, channel_idx = np.nonzero(active)
    ablated = np.repeat(s[:, None], c, axis=1)
    for sl in ctx.chunks(len(sample_idx), 32, "ablationcam"):
        samples, local = np.unique(sample_idx[sl], return_inverse=True)
        keep = np.ones((len(local), c), dtype=np.float32)
        keep[np.arange(len(local)), channel_idx[sl]] = 0.0
        out = ctx.backend.layer_masked_scores(
            ctx.x[samples], layer, keep, sample_index=local, objective=ClassScore(ctx.targets[sample_idx[sl]])
        )
        ablated[sample_idx[sl], channel_idx[sl]] = np.asarray(out, np.float64)
    drop = s[:, None] - ablated
    weights = np.where(s[:, None] != 0, drop / np.where(s[:, None] != 0, s[:, None], 1.0), drop)
    layer_map = _relu(_weighted_sum(acts, weights))
    return _result(ctx, layer_map, s, upsample, forward_passes=int(len(sample_idx)))


def eigencam_map(acts: np.ndarray) -> np.ndarray:
    """Projection of each position's channel vector on the first principal component.

    As pytorch-grad-cam's ``get_2d_projection``: the (h*w, C) matrix is centred by its mean over
    positions, decomposed by SVD and projected on the first right singular vector ``VT[0]``. The
    sign of a singular vector is arbitrary (LAPACK's flips under round-off, e.g. between a batch and
    a single image), so polyviz fixes it as Seg-Eigen-CAM (Chung & Ying 2025, eq. 13) and
    pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` do: the map is negated when
    ``|min| > |max|``, so that its largest-magnitude values are positive.
    """
    out = np.empty(acts.shape[:3], dtype=np.float32)
    for i, a in enumerate(np.asarray(acts, np.float64)):
        flat = a.reshape(-1, a.shape[-1])
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        proj = flat @ vt[0]
        if abs(proj.min()) > abs(proj.max()):
            proj = -proj
        out[i] = proj.reshape(a.shape[:2])
    return out


@method(
    "eigencam",
    "Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): first principal component of the layer activations (class independent)",
    kind="map", needs_layer=True, capabilities=(Capability.LAYER_ACTIVATIONS,), family="cam",
)
def eigencam(ctx: Context, *, upsample: str = "bilinear") -> Result:
    """Eigen-CAM, signed (the paper has no ReLU; pytorch-grad-cam clips at 0 when it scales),
    with the sign fixed as in :func:`eigencam_map`."""
    _check_upsample(upsample)
    layer = _layer(ctx)
    acts, outputs = _activation_pass(ctx, layer)
    return _result(ctx, eigencam_map(acts), _target_scores(outputs, ctx.targets), upsample)


def _last_weighted_layer(ctx: Context) -> str:
    infos = [info for info in ctx.backend.layers() if info.params > 0]
    if not infos:
        raise LayerError("fc_layer: this model has no layer with weights; pass fc_layer= explicitly")
    return infos[-1].name


@method(
    "cam",
    "CAM (Zhou et al. 2015, arXiv:1512.04150): the final dense layer's weights of the class on the channels feeding global average pooling",
    kind="map", needs_layer=True,
    capabilities=(Capability.LAYER_ACTIVATIONS, Capability.LAYER_WEIGHTS), family="cam",
)
def cam(ctx: Context, *, fc_layer: str | None = None, upsample: str = "bilinear") -> Result:
    """CAM: sum_c w_c^target A_c at the layer that feeds global average pooling (the default
    layer), w from the kernel (C, classes) of ``fc_layer`` (default: the last layer with
    weights). Raw and signed: the original has no ReLU, and the dense bias is left out."""
    _check_upsample(upsample)
    layer = _layer(ctx)
    fc = _last_weighted_layer(ctx) if fc_layer is None else ctx.backend.check_layers([fc_layer])[0]
    kernel = ctx.backend.layer_weights(fc).get("kernel")
    acts, outputs = _activation_pass(ctx, layer)
    channels = acts.shape[-1]
    if kernel is None or np.ndim(kernel) != 2 or kernel.shape[0] != channels:
        shape = None if kernel is None else tuple(np.shape(kernel))
        raise LayerError(
            f"fc_layer {fc!r}: CAM needs a dense layer with {channels} inputs (the channels of layer "
            f"{layer!r}) right after global average pooling; its kernel has shape {shape}"
        )
    if (ctx.targets >= kernel.shape[1]).any():
        from polyviz.errors import TargetError

        raise TargetError(f"target: class index {int(ctx.targets.max())} is out of range for {fc!r} with {kernel.shape[1]} units")
    weights = np.asarray(kernel, np.float64)[:, ctx.targets].T  # (N, C)
    return _result(ctx, _weighted_sum(acts, weights), _target_scores(outputs, ctx.targets), upsample, fc_layer=fc)
