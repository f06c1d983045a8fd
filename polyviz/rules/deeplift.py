"""DeepLIFT's backward rules, written once over a tiny tensor-ops table (Shrikumar, Greenside &
Kundaje 2017, "Learning Important Features Through Propagating Activation Differences",
arXiv:1704.02685), in the gradient formulation of Ancona et al. 2018 (arXiv:1711.06104).

Every backend runs the input and its reference through the model as one batch ``cat([x, x'])``
(as Captum's ``DeepLift`` does), so a rule sees each operation's input ``z`` and reference input
``z'`` side by side, as the two halves of one tensor. The incoming gradient ``g`` is the same on
both halves (the objective is summed over both, and every rule here returns the same multiplier
for both halves), and the backend keeps the input half's gradient. The rules:

* :func:`rescale_multiplier`: for ANY element-wise ``f`` (ReLU, ReLU6, LeakyReLU, ELU, SELU,
  SiLU/swish, GELU, hardswish, hardsigmoid, sigmoid, tanh, softplus, mish, ...), the rescale
  rule's multiplier ``(f(z) - f(z')) / (z - z')``, falling back to the true derivative ``f'(z)``
  where ``|z - z'| < EPS`` (Captum's ``eps``, 1e-10). Exactly complete: ``m * dz = df``.
* :func:`maxpool_backward`: Captum's max-pool rule. With ``o``, ``o'`` the pooled outputs and
  ``m = max(o, o')``, ``(m - o')`` is routed to the input's arg-max and ``(o - m)`` to the
  reference's arg-max; both are summed and divided by ``z - z'`` (the plain max-pool gradient where
  ``|z - z'| < EPS``).
* :func:`product_backward`: ``y = a * b`` with both factors depending on the input (the
  squeeze-excitation gate ``x * s(x)``). DeepLIFT's paper gives no rule for products; polyviz uses
  the exact two-factor split (the Shapley value of the two factors, also the "product rule" of
  DeepSHAP's multiplicative interactions): ``a b - a' b' = (da) (b + b') / 2 + (db) (a + a') / 2``,
  so the multipliers are ``m_a = (b + b') / 2`` and ``m_b = (a + a') / 2``. Complete by
  construction. Captum differentiates products as they are (``m_a = b``), which breaks completeness
  by ``da * db``.

Linear operations (convolutions, dense layers, average pooling, addition, concatenation, reshapes,
BatchNorm in inference as an affine map) need no rule: their gradient is their multiplier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = [
    "EPS",
    "DeepLiftOps",
    "NumpyOps",
    "rescale_multiplier",
    "maxpool_backward",
    "product_backward",
]

#: |z - z'| below which the true derivative replaces the rescale multiplier (Captum's default eps).
EPS = 1e-10

T = TypeVar("T")


class DeepLiftOps(Protocol[T]):
    """The tensor operations DeepLIFT's rules need; every backend supplies one table (batch axis 0;
    ``halves`` splits the ``cat([x, x'])`` batch, ``twice`` repeats one half for both)."""

    def halves(self, t: T) -> tuple[T, T]: ...
    def cat(self, a: T, b: T) -> T: ...
    def where(self, cond: T, a: T, b: T) -> T: ...
    def small(self, t: T, eps: float) -> T:
        """Boolean ``|t| < eps``."""
        ...
    def maximum(self, a: T, b: T) -> T: ...
    def sum_to(self, t: T, like: T) -> T:
        """``t`` summed over the axes along which ``like`` was broadcast (the reverse of broadcasting)."""
        ...


def _twice(ops: DeepLiftOps[T], t: T) -> T:
    return ops.cat(t, t)


def rescale_multiplier(ops: DeepLiftOps[T], z: T, out: T, derivative: Callable[[], T]) -> T:
    """The rescale rule's multiplier of an element-wise ``out = f(z)`` on the ``cat([x, x'])``
    batch: ``(f(z) - f(z')) / (z - z')`` for both halves, ``derivative()`` (``f'(z)``, evaluated
    only through this thunk) where ``|z - z'| < EPS``."""
    zx, zr = ops.halves(z)
    ox, orf = ops.halves(out)
    delta_in = zx - zr
    small = ops.small(delta_in, EPS)
    safe = ops.where(small, delta_in * 0 + 1, delta_in)
    ratio = _twice(ops, (ox - orf) / safe)
    return ops.where(_twice(ops, small), derivative(), ratio)


def maxpool_backward(ops: DeepLiftOps[T], g: T, z: T, out: T, unpool: Callable[[T], T]) -> T:
    """DeepLIFT's (Captum's) max-pool backward on the ``cat([x, x'])`` batch: ``g`` the incoming
    gradient, ``z`` the pool's input, ``out`` its output, ``unpool(v)`` routes ``v`` (shaped as
    ``out``) to each window's arg-max in ``z`` (the max pool's vector-Jacobian product)."""
    o, o_ref = ops.halves(out)
    top = ops.maximum(o, o_ref)
    routed = unpool(g * ops.cat(top - o_ref, o - top))
    a, b = ops.halves(routed)
    zx, zr = ops.halves(z)
    delta_in = zx - zr
    small = ops.small(delta_in, EPS)
    safe = ops.where(small, delta_in * 0 + 1, delta_in)
    return ops.where(_twice(ops, small), unpool(g), _twice(ops, (a + b) / safe))


def product_backward(ops: DeepLiftOps[T], g: T, a: T, b: T) -> tuple[T, T]:
    """Multipliers times ``g`` for ``y = a * b`` (broadcasting allowed) on the ``cat([x, x'])``
    batch: ``g (b + b') / 2`` to ``a`` and ``g (a + a') / 2`` to ``b``, each summed back to its
    factor's shape. Exactly complete: ``a b - a' b'`` is split with no remainder."""
    ax, ar = ops.halves(a)
    bx, br = ops.halves(b)
    mean_a = _twice(ops, (ax + ar) * 0.5)
    mean_b = _twice(ops, (bx + br) * 0.5)
    return ops.sum_to(g * mean_b, a), ops.sum_to(g * mean_a, b)


class NumpyOps:
    """:class:`DeepLiftOps` in numpy (the conformance suite's oracle and the rule tests)."""

    @staticmethod
    def halves(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(t) // 2
        return t[:n], t[n:]

    @staticmethod
    def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])

    @staticmethod
    def where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(cond, a, b)

    @staticmethod
    def small(t: np.ndarray, eps: float) -> np.ndarray:
        return np.abs(t) < eps

    @staticmethod
    def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    @staticmethod
    def sum_to(t: np.ndarray, like: np.ndarray) -> np.ndarray:
        return sum_to_shape(t, np.shape(like))


def sum_to_shape(t: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Numpy ``t`` summed down to ``shape`` (the adjoint of broadcasting ``shape`` to ``t.shape``)."""
    t = np.asarray(t)
    lead = t.ndim - len(shape)
    if lead:
        t = t.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    return t.sum(axis=axes, keepdims=True) if axes else t
