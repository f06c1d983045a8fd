"""The small table of tensor operations the LRP rules (:mod:`polyviz.rules.lrp`) are written over.

A backend supplies one :class:`LRPOps` for its tensors (torch: ``polyviz_torch._lrp.TorchOps``;
TensorFlow/Keras: ``polyviz_keras._lrp.KerasOps``); :class:`NumpyOps` is the float64 reference used
by the conformance suite's oracle (:func:`polyviz.testing.check_lrp`). Besides these methods, the
rules only use ``+ - * /`` between tensors and Python floats, which every array type supports.

An ``op`` is whatever handle the backend uses for one linear layer (a torch module, a Keras layer,
a :class:`NumpyLinear`): only the table's own ``linear``/``linear_t`` look inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = ["LRPOps", "NumpyOps", "NumpyLinear"]

T = TypeVar("T")


class LRPOps(Protocol[T]):
    """Tensor operations for the LRP rules (element-wise ones in any layout; ``per_channel`` knows
    the backend's channel axis)."""

    def pos(self, t: T) -> T:
        """``max(t, 0)``."""
        ...

    def neg(self, t: T) -> T:
        """``min(t, 0)``."""
        ...

    def sign0(self, t: T) -> T:
        """+1 where ``t >= 0``, -1 elsewhere (sign with sign(0) = +1)."""
        ...

    def gt0(self, t: T) -> T:
        """1.0 where ``t > 0``, 0.0 elsewhere, in ``t``'s dtype."""
        ...

    def lt0(self, t: T) -> T:
        """1.0 where ``t < 0``, 0.0 elsewhere, in ``t``'s dtype."""
        ...

    def ones_like(self, t: T) -> T: ...

    def per_channel(self, value: float | tuple[float, ...], like: T) -> T:
        """A scalar, or one value per channel (the backend's channel axis), broadcast to ``like``."""
        ...

    def linear(self, op: Any, a: T, w: T, b: T | None) -> T:
        """The layer's affine map of ``a`` with weight ``w`` and bias ``b`` (None: no bias)."""
        ...

    def linear_t(self, op: Any, a: T, w: T, seed: T) -> T:
        """``W^T seed``: the vector-Jacobian product of the bias-free map ``a -> linear(op, a, w)``
        for the output gradient ``seed``, shaped like ``a``."""
        ...

    def vjp(self, fn: Any, a: T, seed: T) -> T:
        """The vector-Jacobian product of ``fn`` at ``a`` for the output gradient ``seed``."""
        ...


@dataclass(frozen=True)
class NumpyLinear:
    """A numpy linear layer: ``kind`` "dense" (kernel (in, out)) or "conv2d" (NHWC, kernel
    (kh, kw, in, out), ``groups`` as in Keras), with TensorFlow's padding conventions."""

    kind: str
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    groups: int = 1


def _pads(op: NumpyLinear, w: np.ndarray, a: np.ndarray) -> tuple[int, int, int, int]:
    from polyviz.reference import _pad_amounts

    kh, kw = w.shape[:2]
    return _pad_amounts(op.padding, kh, kw, a.shape[1], a.shape[2], *op.strides)


class NumpyOps:
    """:class:`LRPOps` for float64 numpy arrays, channels-last: the oracle of the conformance suite."""

    def pos(self, t: np.ndarray) -> np.ndarray:
        return np.maximum(t, 0.0)

    def neg(self, t: np.ndarray) -> np.ndarray:
        return np.minimum(t, 0.0)

    def sign0(self, t: np.ndarray) -> np.ndarray:
        return np.where(t >= 0, 1.0, -1.0)

    def gt0(self, t: np.ndarray) -> np.ndarray:
        return (t > 0).astype(t.dtype)

    def lt0(self, t: np.ndarray) -> np.ndarray:
        return (t < 0).astype(t.dtype)

    def ones_like(self, t: np.ndarray) -> np.ndarray:
        return np.ones_like(t)

    def per_channel(self, value: float | tuple[float, ...], like: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, like.dtype), like.shape)

    def linear(self, op: NumpyLinear, a: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        if op.kind == "dense":
            z = a @ w
        else:
            top, bottom, left, right = _pads(op, w, a)
            padded = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
            (kh, kw, cin, cout), (sh, sw) = w.shape, op.strides
            ho, wo = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
            z = np.zeros((len(a), ho, wo, cout))
            gi, go = cin, cout // op.groups
            for i in range(kh):
                for j in range(kw):
                    patch = padded[:, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw, :]
                    for g in range(op.groups):
                        z[..., g * go:(g + 1) * go] += patch[..., g * gi:(g + 1) * gi] @ w[i, j, :, g * go:(g + 1) * go]
        return z if b is None else z + b

    def linear_t(self, op: NumpyLinear, a: np.ndarray, w: np.ndarray, seed: np.ndarray) -> np.ndarray:
        if op.kind == "dense":
            return seed @ w.T
        top, bottom, left, right = _pads(op, w, a)
        n, h, wd, c = a.shape
        out = np.zeros((n, h + top + bottom, wd + left + right, c))
        (kh, kw, cin, cout), (sh, sw) = w.shape, op.strides
        ho, wo = seed.shape[1:3]
        go = cout // op.groups
        for i in range(kh):
            for j in range(kw):
                for g in range(op.groups):
                    out[:, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw, g * cin:(g + 1) * cin] += (
                        seed[..., g * go:(g + 1) * go] @ w[i, j, :, g * go:(g + 1) * go].T
                    )
        return out[:, top: top + h, left: left + wd, :]

    def vjp(self, fn: Any, a: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """``fn`` must be linear and expose its transpose as ``fn.transpose(seed, a)`` (numpy has
        no autograd); the oracle's pools do."""
        return fn.transpose(seed, a)
