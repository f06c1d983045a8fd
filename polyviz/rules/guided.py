"""Guided backprop and deconvnet backward rules for rectifiers, written once over a tiny ops table.

Definitions (for ``y = f(z)`` a rectifier, ``g`` the gradient arriving at ``y``):

* guided backprop (Springenberg, Dosovitskiy, Brox & Riedmiller 2015, "Striving for Simplicity:
  The All Convolutional Net", arXiv:1412.6806, eq. in fig. 1): the backward signal is masked
  "where at least one of the top gradient or the bottom data is negative". For any rectifier
  polyviz passes ``g * f'(z) * [g > 0] * [z > 0]``: the true local gradient, gated by the sign of
  the incoming gradient and by the forward activation's positive part (for every rectifier below,
  ``f(z) > 0`` exactly when ``z > 0``). For ReLU this is Springenberg's rule exactly
  (``f'(z) [z > 0] = [z > 0]``); for ReLU6 it also zeroes ``z > 6`` (``f' = 0`` there); for
  LeakyReLU the negative side is gated off; for SiLU, GELU and hardswish the positive side keeps
  its true slope (0.5..1.1 for SiLU), so where all gates are open guided backprop equals the
  gradient.
* deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks",
  arXiv:1311.2901, sec. 2.1): the reconstruction passes through the rectifier whatever the forward
  input: ``[g > 0] * g``, the same for every rectifier (as Captum's ``Deconvolution`` for ReLU).

The rectifiers with these rules are ReLU, ReLU6, LeakyReLU, SiLU/swish, GELU and hardswish.
Saturating gates (sigmoid, hardsigmoid, tanh, softmax: squeeze-excitation gates, heads) are
differentiated as they are, as in Captum and the papers, which rectify only the rectifiers. Other
rectifier-like activations (ELU, SELU, CELU, mish, softplus, PReLU) have no published guided rule
and are refused by the backends, and so is a network with no rectifier at all: its "guided
backprop" would be the plain gradient (saliency) under another name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np

__all__ = ["GuidedOps", "NumpyGuidedOps", "guided_backward", "deconvnet_backward", "backward", "RECTIFIERS"]

#: the activations with a guided / deconvnet rule (canonical names)
RECTIFIERS = ("relu", "relu6", "leaky_relu", "silu", "gelu", "hardswish")

T = TypeVar("T")


class GuidedOps(Protocol[T]):
    """The tensor operation the gates need (besides arithmetic)."""

    def positive(self, t: T) -> T:
        """``[t > 0]`` as a float tensor of ``t``'s dtype."""
        ...


def guided_backward(ops: GuidedOps[T], g: T, z: T, derivative: Callable[[], T]) -> T:
    """Guided backprop through a rectifier: ``g * f'(z) * [g > 0] * [z > 0]`` (``derivative()``
    gives ``f'(z)``)."""
    return g * ops.positive(g) * ops.positive(z) * derivative()


def deconvnet_backward(ops: GuidedOps[T], g: T) -> T:
    """Deconvnet through a rectifier: ``g * [g > 0]``."""
    return g * ops.positive(g)


def backward(rule: str, ops: GuidedOps[T], g: T, z: T, derivative: Callable[[], T]) -> T:
    """The ``rule`` ("guided" or "deconvnet") backward through a rectifier."""
    if rule == "guided":
        return guided_backward(ops, g, z, derivative)
    if rule == "deconvnet":
        return deconvnet_backward(ops, g)
    raise ValueError(f"rule: expected 'guided' or 'deconvnet', got {rule!r}")


class NumpyGuidedOps:
    """:class:`GuidedOps` in numpy."""

    @staticmethod
    def positive(t: np.ndarray) -> np.ndarray:
        return (np.asarray(t) > 0).astype(np.asarray(t).dtype)
