"""Layer-wise relevance propagation's rules, written once over :class:`polyviz.rules.ops.LRPOps`.

Sources: Bach et al. 2015 ("On pixel-wise explanations ... by layer-wise relevance propagation",
PLoS ONE), Montavon et al. 2019 ("Layer-wise relevance propagation: an overview"), Lapuschkin et
al. 2019 (the flat rule), in the generalised forms of zennit (Anders et al. 2021, arXiv:2106.13200),
whose results they reproduce to round-off. Each rule maps the relevance ``r`` at a layer's output
to the relevance at its input ``a``, as zennit's (input, parameter, output modifiers, gradient
mapper, reducer):

* :func:`linear_relevance`, for a conv / dense layer ``z = W a + b`` under an
  :class:`~polyviz.protocol.LRPRule`: zero, epsilon, gamma, alpha-beta (z+ is alpha=1, beta=0,
  zennit's ``ZPlus``), z^B and flat. Every denominator is stabilised as ``z + eps * sign(z)`` with
  sign(0) = +1; gamma and alpha-beta treat positive and negative inputs and weights separately.
* :func:`average_relevance`: average pooling (global or windowed) by LRP-0, stabiliser 1e-6
  (zennit's ``Norm``).
* :func:`sum_relevance`: a residual addition ``z = x_1 + x_2 + ...``, split in proportion to each
  term, ``R_i = x_i R / stab(z)`` (stabiliser 1e-6; zennit's ``Norm`` on its ``Sum`` module).
* :func:`fold_batchnorm`: an inference BatchNorm merged into the linear layer before it (zennit's
  ``MergeBatchNorm``), on copies of the parameters (numpy copies in torch).
* :func:`affine_relevance`: a BatchNorm (or Rescaling / Normalization) that follows no linear
  layer, as the diagonal linear layer ``z = s a + t`` under LRP-epsilon (stabiliser 1e-6).

What needs no rule, and is differentiated as usual by the backend: element-wise activations
(relevance passes through, zennit's ``Pass``), max pooling (to the maximum), concatenation,
flatten, reshape, padding, dropout. A multiplicative gate (squeeze-excitation ``x * s``) is treated
as a constant weight, as zennit does: all relevance goes to ``x``, none to the gate's branch.
"""

from __future__ import annotations

from typing import Any, TypeVar

from polyviz.protocol import LRPRule
from polyviz.rules.ops import LRPOps

__all__ = [
    "STABILISER",
    "stabilize",
    "linear_relevance",
    "average_relevance",
    "sum_relevance",
    "affine_relevance",
    "fold_batchnorm",
]

T = TypeVar("T")

#: The stabiliser of every non-epsilon denominator (zennit's default).
STABILISER = 1e-6


def stabilize(ops: LRPOps[T], z: T, epsilon: float) -> T:
    """``z + epsilon * sign(z)`` with sign(0) = +1."""
    return z + epsilon * ops.sign0(z)


def linear_relevance(ops: LRPOps[T], op: Any, rule: LRPRule, w: T, b: T | None, a: T, r: T, z: T) -> T:
    """Relevance at the input ``a`` of the linear layer ``op`` (weight ``w``, bias ``b`` or None,
    output ``z = linear(a, w, b)``) for the relevance ``r`` at its output, under ``rule``."""
    eps = rule.epsilon

    def lin(x: T, weight: T, bias: T | None) -> T:
        return ops.linear(op, x, weight, bias)

    def back(x: T, weight: T, seed: T) -> T:
        return ops.linear_t(op, x, weight, seed)

    def clip(t: T | None, positive: bool) -> T | None:
        if t is None:
            return None
        return ops.pos(t) if positive else ops.neg(t)

    if rule.name in ("zero", "epsilon"):
        return a * back(a, w, r / stabilize(ops, z, eps))
    if rule.name == "flat":
        ones, ones_w = ops.ones_like(a), ops.ones_like(w)
        return back(ones, ones_w, r / stabilize(ops, lin(ones, ones_w, None), eps))
    if rule.name == "zbox":
        low, high = ops.per_channel(rule.low, a), ops.per_channel(rule.high, a)
        wp, wn = ops.pos(w), ops.neg(w)
        zb = z - lin(low, wp, clip(b, True)) - lin(high, wn, clip(b, False))
        s = r / stabilize(ops, zb, eps)
        return a * back(a, w, s) - low * back(low, wp, s) - high * back(high, wn, s)
    ap, an = ops.pos(a), ops.neg(a)
    if rule.name == "gamma":
        g = rule.gamma
        wp, wn = w + g * ops.pos(w), w + g * ops.neg(w)
        bp = None if b is None else b + g * ops.pos(b)
        bn = None if b is None else b + g * ops.neg(b)
        s_pos = ops.gt0(z) * r / stabilize(ops, lin(ap, wp, bp) + lin(an, wn, None), eps)
        s_neg = ops.lt0(z) * r / stabilize(ops, lin(ap, wn, bn) + lin(an, wp, None), eps)
        return ap * (back(ap, wp, s_pos) + back(ap, wn, s_neg)) + an * (back(an, wn, s_pos) + back(an, wp, s_neg))
    # alpha_beta
    wp, wn = ops.pos(w), ops.neg(w)
    s_pos = r / stabilize(ops, lin(ap, wp, clip(b, True)) + lin(an, wn, None), eps)
    positive = ap * back(ap, wp, s_pos) + an * back(an, wn, s_pos)
    if rule.beta == 0:
        return rule.alpha * positive
    s_neg = r / stabilize(ops, lin(ap, wn, clip(b, False)) + lin(an, wp, None), eps)
    negative = ap * back(ap, wn, s_neg) + an * back(an, wp, s_neg)
    return rule.alpha * positive - rule.beta * negative


def average_relevance(ops: LRPOps[T], pool: Any, a: T, r: T, z: T) -> T:
    """LRP-0 through the average pool ``pool`` (``z = pool(a)``), stabiliser :data:`STABILISER`."""
    return a * ops.vjp(pool, a, r / stabilize(ops, z, STABILISER))


def sum_relevance(ops: LRPOps[T], terms: list[T], r: T, z: T) -> list[T]:
    """``z = sum(terms)`` (same shapes): ``R_i = x_i r / stab(z)``, stabiliser :data:`STABILISER`."""
    s = r / stabilize(ops, z, STABILISER)
    return [x * s for x in terms]


def affine_relevance(ops: LRPOps[T], scale: T, a: T, r: T, z: T) -> T:
    """A diagonal affine map ``z = scale * a + shift``: ``R = scale a r / stab(z)`` (LRP-epsilon,
    stabiliser :data:`STABILISER`); conservative when the shift is zero."""
    return scale * a * r / stabilize(ops, z, STABILISER)


def batchnorm_affine(mean: T, var: T, gamma: T | None, beta: T | None, eps: float) -> tuple[T, T]:
    """(scale, shift) of an inference BatchNorm ``y = (x - mean) / sqrt(var + eps) * gamma + beta``
    (gamma None: 1, beta None: 0), so that ``y = scale * x + shift``. Arithmetic only: numpy arrays
    or a backend's tensors (read from the layer, never written)."""
    scale = 1.0 / (var + eps) ** 0.5
    if gamma is not None:
        scale = gamma * scale
    shift = -mean * scale
    if beta is not None:
        shift = beta + shift
    return scale, shift


def fold_batchnorm(w: T, b: T | None, scale: T, shift: T, scale_w: T | None = None) -> tuple[T, T]:
    """The weight and bias of ``BN(linear(a, w, b))`` as one linear layer, where the BatchNorm is
    ``y = scale * x + shift`` (:func:`batchnorm_affine`): ``w' = w * scale``, ``b' = b * scale +
    shift`` (zennit's ``MergeBatchNorm``; a missing bias becomes one). ``scale_w``: ``scale`` shaped
    to broadcast along ``w``'s output-channel axis (default ``scale``, right for channels-last
    kernels). Arithmetic only, on copies: the arrays given are not modified."""
    w2 = w * (scale if scale_w is None else scale_w)
    b2 = shift if b is None else b * scale + shift
    return w2, b2
