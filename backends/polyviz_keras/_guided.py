"""Guided backprop and deconvnet through rectifiers in TensorFlow; the rules themselves are
:mod:`polyviz.rules.guided` (definitions and sources there).

:func:`call_with_rule` runs one layer of a ``Run`` with ``relu_rule`` set: rectifiers (``ReLU``
with any ``max_value``/``negative_slope``, ``LeakyReLU``, ``Activation`` or a fused ``activation=``
of relu, relu6, leaky_relu, silu/swish, gelu, hard_silu/hard_swish, and the raw ``keras.ops``
nodes of these) get a ``tf.custom_gradient`` with the rule's backward; rectifier-like activations
without a rule (elu, selu, celu, mish, softplus, ``ELU``, ``PReLU``, a ReLU threshold) raise a
:class:`CapabilityError`. Everything else is left to the caller (``NOT_HANDLED``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from polyviz.errors import CapabilityError
from polyviz.rules.guided import backward as rule_backward

__all__ = ["call_with_rule", "NOT_HANDLED", "TfGuidedOps", "refuse"]

NOT_HANDLED = object()
_RECTIFIERS = frozenset({"relu", "relu6", "leaky_relu", "silu", "swish", "gelu", "hard_silu", "hard_swish"})
_REFUSED = frozenset({"elu", "selu", "celu", "mish", "softplus"})
_RAW_RECTIFIERS = frozenset({"relu", "relu6", "silu", "gelu", "hardsilu", "leakyrelu"})


class TfGuidedOps:
    """:class:`polyviz.rules.guided.GuidedOps` in TensorFlow."""

    @staticmethod
    def positive(t: tf.Tensor) -> tf.Tensor:
        return tf.cast(t > 0, t.dtype)


OPS = TfGuidedOps()


def refuse(rule: str, what: str) -> CapabilityError:
    name = "guided backprop" if rule == "guided" else "deconvnet"
    return CapabilityError(
        f"{name}: {what}; polyviz defines {name} for ReLU, ReLU6, LeakyReLU, SiLU, GELU and hardswish "
        "(see polyviz.rules.guided) and will not return the plain gradient under another name"
    )


def with_rule(rule: str, fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    """``fn`` forward; the rule's backward."""

    @tf.custom_gradient
    def apply(z: tf.Tensor) -> Any:
        def grad(g: tf.Tensor) -> tf.Tensor:
            def derivative() -> tf.Tensor:
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    y = fn(z)
                return tape.gradient(y, z)

            return rule_backward(rule, OPS, g, z, derivative)

        return fn(z), grad

    return apply


def _activation(rule: str, layer: Any, name: str | None) -> Callable[[tf.Tensor], tf.Tensor] | None:
    if name in _RECTIFIERS:
        return with_rule(rule, layer.activation)
    if name in _REFUSED:
        raise refuse(rule, f"layer {layer.name!r} applies {name}, a rectifier with no published rule")
    return None


def call_with_rule(layer: Any, rule: str, args: tuple, kwargs: dict, pre_activation: Callable[[Any, Any], Any],
                   is_weighted: Callable[[Any], bool], activation_name: Callable[[Any], str | None]) -> Any:
    """The layer's output with the rule at its rectifier, or :data:`NOT_HANDLED` when the layer
    applies no rectifier (the caller then runs it as it is)."""
    if isinstance(layer, keras.layers.ReLU):
        slope, top, threshold = float(layer.negative_slope), layer.max_value, float(layer.threshold)
        if threshold != 0.0:
            raise refuse(rule, f"layer {layer.name!r} is a ReLU with threshold={threshold}, not a rectifier at 0")
        top = None if top is None else float(top)
        return with_rule(rule, lambda z: keras.activations.relu(z, negative_slope=slope, max_value=top))(args[0])
    if isinstance(layer, keras.layers.LeakyReLU):
        slope = float(layer.negative_slope)
        return with_rule(rule, lambda z: tf.nn.leaky_relu(z, slope))(args[0])
    if isinstance(layer, keras.layers.ELU | keras.layers.PReLU):
        raise refuse(rule, f"layer {layer.name!r} ({type(layer).__name__}) is a rectifier with no published rule")
    if isinstance(layer, keras.layers.Activation):
        fn = _activation(rule, layer, activation_name(layer))
        return NOT_HANDLED if fn is None else fn(args[0])
    if not isinstance(layer, keras.layers.Layer):
        kind = type(layer).__name__.lower()
        if kind in _RAW_RECTIFIERS and args and isinstance(args[0], tf.Tensor):
            rest = args[1:]
            return with_rule(rule, lambda z: layer(z, *rest, **kwargs))(args[0])
        if kind in _REFUSED:
            raise refuse(rule, f"the operation {type(layer).__name__} is a rectifier with no published rule")
        return NOT_HANDLED
    if is_weighted(layer):
        fn = _activation(rule, layer, activation_name(layer))
        if fn is not None:
            return fn(pre_activation(layer, args[0]))
    return NOT_HANDLED
