"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"), written once: the technique chooses an :class:`~polyviz.protocol.LRPRule`
per weighted layer and hands them to the backend as data (``Rule(lrp=...)``); the backend realises
them as a modified backward pass without editing the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.protocol import LRP_RULES, Backend, Capability, ClassScore, LRPRule, Rule
from polyviz.techniques import Context, Result, method

__all__ = ["lrp", "weighted_layers", "assign_rules", "RULE_CHOICES"]

#: ``rule=`` values: one rule for every weighted layer, the VGG composite, or zennit's composites
#: for ResNet-like families.
RULE_CHOICES = ("zero", "epsilon", "gamma", "alpha_beta", "composite", "epsilon_plus_flat",
                "epsilon_alpha2_beta1_flat")
#: Layer kinds (``Backend.layer_config(name)["kind"]``) that carry an LRP rule.
WEIGHTED_KINDS = ("conv2d", "dense")
#: Layer types a backend reports as kind "other" that are convolutions for LRP.
OTHER_CONVS = ("DepthwiseConv2D", "SeparableConv2D")


def weighted_layers(backend: Backend) -> list[tuple[str, str]]:
    """(name, kind) of every conv and dense layer with parameters, in execution order (a ReLU that
    the backend reports as its fused conv is skipped: it has no parameters of its own)."""
    out = []
    for info in backend.layers():
        if info.params <= 0:
            continue
        try:
            config = backend.layer_config(info.name)
            kind = config.get("kind")
        except Exception:  # a backend that cannot describe the layer: not a rule target
            continue
        if kind in WEIGHTED_KINDS:
            out.append((info.name, kind))
        elif kind == "other" and config.get("type") in OTHER_CONVS:
            out.append((info.name, "conv2d"))
    return out


def _bounds(ctx: Context, bounds: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """z^B bounds per input channel in the model's input space (after preprocessing)."""
    if bounds is None:  # the usual image ranges, so that the rule (and a compiled function) is reused
        lo, hi = float(ctx.x.min()), float(ctx.x.max())
        for low, high in ((0.0, 1.0), (0.0, 255.0)):
            if low <= lo and hi <= high:
                lo, hi = low, high
                break
        if not lo < hi:
            raise InputError(
                f"bounds: x is constant ({lo:.4g}) and lies in neither [0, 1] nor [0, 255]; pass bounds=(low, high)"
            )
    else:
        try:
            lo, hi = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise InputError(f"bounds: expected (low, high) floats or None, got {bounds!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"bounds: expected finite (low, high), got {bounds!r}")
        if not lo < hi:
            raise InputError(f"bounds: expected low < high, got {bounds!r}")
        if ctx.x.min() < lo - 1e-6 or ctx.x.max() > hi + 1e-6:
            raise InputError(
                f"bounds: x has values in [{ctx.x.min():.4g}, {ctx.x.max():.4g}], outside {bounds!r}"
            )
    channels = ctx.x.shape[-1]
    pre = ctx.backend.preprocess
    low, high = np.full(channels, lo), np.full(channels, hi)
    if pre is not None:
        mean, std = pre.arrays(channels)
        low = (lo * pre.scale - np.asarray(mean)) / np.asarray(std)
        high = (hi * pre.scale - np.asarray(mean)) / np.asarray(std)
        low, high = np.minimum(low, high), np.maximum(low, high)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def _as_rule(value: Any, where: str, epsilon: float, gamma: float, alpha: float, beta: float,
             bounds: tuple[tuple[float, ...], tuple[float, ...]]) -> LRPRule:
    if isinstance(value, LRPRule):
        return value
    if not isinstance(value, str) or value not in LRP_RULES:
        raise InputError(f"rules: {where} has unknown rule {value!r} (expected one of {', '.join(LRP_RULES)} or an LRPRule)")
    if value == "epsilon":
        return LRPRule("epsilon", epsilon=epsilon)
    if value == "gamma":
        return LRPRule("gamma", gamma=gamma)
    if value == "alpha_beta":
        return LRPRule("alpha_beta", alpha=alpha, beta=beta)
    if value == "zbox":
        return LRPRule("zbox", low=bounds[0], high=bounds[1])
    return LRPRule("zero")


def assign_rules(
    layers: list[tuple[str, str]],
    rule: str,
    rules: Mapping[str, Any] | None,
    *,
    epsilon: float,
    gamma: float,
    alpha: float,
    beta: float,
    bounds: tuple[tuple[float, ...], tuple[float, ...]],
) -> tuple[tuple[str, LRPRule], ...]:
    """One :class:`LRPRule` per weighted layer.

    ``rule="composite"`` (Montavon et al. 2019, sec. 10.3, for VGG16): z^B on the first layer,
    gamma on the lower half of the remaining convs, epsilon on the upper half, LRP-0 on the dense
    layers. ``"epsilon_plus_flat"`` / ``"epsilon_alpha2_beta1_flat"`` (zennit's ``EpsilonPlusFlat``
    and ``EpsilonAlpha2Beta1Flat``, advised by zennit's maintainers for ResNets): flat on the first
    layer, z+ (alpha=1, beta=0) or alpha=2, beta=1 on the other convs, epsilon on the dense layers.
    Any other ``rule`` puts that rule on every layer. ``rules`` then overrides by layer
    name, by kind ("conv2d", "dense") or "first" (the first weighted layer); values are rule names
    or :class:`LRPRule` objects. Names beat "first", which beats kinds.
    """
    if not isinstance(rule, str) or rule not in RULE_CHOICES:
        raise InputError(f"rule: expected one of {', '.join(RULE_CHOICES)}, got {rule!r}")
    if not layers:
        raise InputError("rule: the model has no conv or dense layer for LRP")
    make = lambda value, where: _as_rule(value, where, epsilon, gamma, alpha, beta, bounds)  # noqa: E731
    if rule == "composite":
        convs = [name for name, kind in layers[1:] if kind == "conv2d"]
        lower = set(convs[: len(convs) // 2])
        chosen = {}
        for i, (name, kind) in enumerate(layers):
            if i == 0:
                chosen[name] = make("zbox", name)
            elif kind == "dense":
                chosen[name] = make("zero", name)
            else:
                chosen[name] = make("gamma" if name in lower else "epsilon", name)
    elif rule in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):
        conv = LRPRule("alpha_beta", alpha=1.0, beta=0.0) if rule == "epsilon_plus_flat" else LRPRule(
            "alpha_beta", alpha=2.0, beta=1.0)
        chosen = {name: LRPRule("flat") if i == 0 else conv if kind == "conv2d" else make("epsilon", name)
                  for i, (name, kind) in enumerate(layers)}
    else:
        chosen = {name: make(rule, name) for name, _ in layers}
    if rules is not None and not isinstance(rules, Mapping):
        raise InputError(f"rules: expected a mapping {{layer name or kind: rule}} or None, got {type(rules).__name__}")
    overrides = dict(rules or {})
    known = {name for name, _ in layers}
    for key in overrides:
        if key not in known and key not in WEIGHTED_KINDS and key != "first":
            raise InputError(
                f"rules: {key!r} is neither a conv/dense layer of this model nor a kind "
                f"({', '.join(WEIGHTED_KINDS)}, first); weighted layers: {', '.join(sorted(known))}"
            )
    for i, (name, kind) in enumerate(layers):
        for key in (kind, "first" if i == 0 else None, name):
            if key is not None and key in overrides:
                chosen[name] = make(overrides[key], name)
    return tuple(chosen.items())


@method(
    "lrp",
    "Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): the score redistributed layer by layer to the pixels, by epsilon, gamma, alpha-beta, z^B or composite rules",
    kind="input", capabilities=(Capability.INPUT_GRADIENT, Capability.LRP), family="lrp",
)
def lrp(
    ctx: Context,
    *,
    rule: str = "epsilon",
    rules: Mapping[str, Any] | None = None,
    epsilon: float = 0.25,
    gamma: float = 0.25,
    alpha: float = 1.0,
    beta: float = 0.0,
    bounds: tuple[float, float] | None = None,
) -> Result:
    """Relevance per input value (N, H, W, C), in the units of the target score: the relevance at
    the output is the target's (pre-softmax) score, and each layer passes it down by its rule, so
    that it sums to the score up to what biases and epsilons absorb (``metadata["relevance_sum"]``).

    ``rule``: "zero" (LRP-0), "epsilon" (LRP-epsilon, ``epsilon`` 0.25 by default), "gamma"
    (``gamma``), "alpha_beta" (``alpha`` - ``beta`` = 1; alpha=1, beta=0 is z+), each on every conv
    and dense layer, or "composite": z^B on the first layer, gamma on the lower half of the other
    convs, epsilon on the upper half, LRP-0 on the dense layers (Montavon et al. 2019's
    recommendation for VGG16), or "epsilon_plus_flat" / "epsilon_alpha2_beta1_flat" (zennit's
    composites for ResNets and other modern CNNs: flat first layer, z+ or alpha2-beta1 convs,
    epsilon dense layers). ``rules`` overrides per layer name, kind ("conv2d", "dense") or
    "first", with rule names or :class:`~polyviz.protocol.LRPRule` objects. ``bounds``: the input
    range (low, high) for z^B, in the caller's units (default: (0, 1) when x lies in it, else
    (0, 255) when x lies in that, else x's min and max over the batch); mapped through the
    backend's preprocessing. The stabiliser of every rule but epsilon is 1e-6.

    Activations (ReLU, ReLU6, SiLU, GELU, hardswish, sigmoid, ...) pass relevance through, max
    pooling to the maximum, average pooling by LRP-0; a BatchNorm right after a conv/dense layer is
    merged into it (zennit's ``SequentialMergeBatchNorm``), virtually, the model untouched; other
    BatchNorms are diagonal affine layers (epsilon 1e-6); residual additions split relevance in
    proportion to each term (stabiliser 1e-6); a squeeze-excitation gate is a constant weight (all
    relevance to the gated activation, as in zennit); concatenations route each slice back.
    LayerNorm, attention and layer scale (ConvNeXt, transformers) are refused (AttnLRP is not
    implemented). Matches zennit's rules (its ``EpsilonGammaBox``
    composite given the same assignment) and Captum's ``LRP`` with matching rules; Captum's
    default is epsilon 1e-9 on every layer, zennit starts from relevance 1 at the target (multiply
    by the score to compare). Costs one forward pass and one modified backward pass per batch.
    """
    be = ctx.backend
    # every numeric option is checked by LRPRule (epsilon > 0, gamma >= 0, alpha - beta = 1, ...),
    # whichever rules end up using it
    checked = LRPRule("epsilon", epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta)
    assignment = assign_rules(
        weighted_layers(be), rule, rules, epsilon=checked.epsilon, gamma=checked.gamma,
        alpha=checked.alpha, beta=checked.beta, bounds=_bounds(ctx, bounds),
    )
    lrp_rule = Rule(lrp=assignment)
    n = len(ctx.x)
    relevance = np.zeros(ctx.x.shape, np.float32)
    scores = np.zeros(n, np.float32)
    for sl in ctx.chunks(n, 32, "lrp"):
        values, rel = be.input_gradient(ctx.x[sl], ClassScore(ctx.targets[sl]), lrp_rule)
        scores[sl] = values
        relevance[sl] = rel * values.reshape(-1, 1, 1, 1)
    return Result(
        attribution=relevance,
        scores=scores,
        metadata={
            "rules": {name: r.name for name, r in assignment},
            "relevance_sum": relevance.reshape(n, -1).sum(axis=1).astype(np.float32),
        },
    )
