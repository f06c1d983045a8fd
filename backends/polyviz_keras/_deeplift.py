"""DeepLIFT multipliers in TensorFlow (Shrikumar et al. 2017, arXiv:1704.02685, rescale rule),
the same rules as ``polyviz_torch._deeplift`` (and Captum's ``DeepLift``).

The inputs and their references run through the model's graph as one batch ``concat([x, x'])``
(``Run.deeplift``); :func:`call_layer` replaces, for that run only, each nonlinearity by a
``tf.custom_gradient`` version:

* element-wise activations (``relu``, ``leaky_relu``, ``elu``, ``sigmoid``, ``tanh``,
  ``softplus``), standalone (``ReLU``, ``LeakyReLU``, ``ELU``, ``Activation``) or fused into a
  Dense/Conv layer (its pre-activation is computed from its weights and the activation applied
  by the rule): backward ``g * (f(z) - f(z')) / (z - z')``, for both halves, the true gradient
  where ``|z - z'| < 1e-10``;
* ``MaxPooling2D``: Captum's rule: with ``o``, ``o'`` the pooled outputs and ``m = max(o, o')``,
  ``(m - o')`` is routed to the input's arg-max and ``(o - m)`` to the reference's, both summed and
  divided by ``z - z'`` (true gradient where ``|z - z'| < 1e-10``).

Layers with no parameters-free nonlinearity (Conv, Dense without activation, pooling by
averaging, Flatten, Dropout, BatchNormalization in inference, Add, ...) run as they are. Other
nonlinearities (GELU, swish, softmax inside the network or on the output with ``logits=False``,
1-D/3-D or global max pooling, parametrised ReLUs) raise a :class:`CapabilityError` naming the layer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from polyviz.errors import CapabilityError
from polyviz.preprocess import Preprocess
from polyviz_keras._functions import (
    count_trace,
    data_signature,
    evaluate,
    float32,
    forward_through,
    x_signature,
)
from polyviz_keras._graph import (
    Run,
    activation_name,
    call_operation,
    is_weighted_with_activation,
    pre_activation,
)

__all__ = ["call_layer", "make_deeplift", "EPS", "SUPPORTED"]

EPS = 1e-10
SUPPORTED = "relu, leaky_relu, elu, sigmoid, tanh, softplus activations and MaxPooling2D"
#: activation names with a rule (the layer's own activation function is applied)
_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu", "sigmoid", "tanh", "softplus"})
_MAX_POOLS = tuple(
    getattr(keras.layers, name) for name in (
        "MaxPooling1D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D")
)


def _doubled_delta(t: tf.Tensor) -> tf.Tensor:
    n = tf.shape(t)[0] // 2
    d = t[:n] - t[n:]
    return tf.concat([d, d], 0)


def rescale(fn: Callable[[tf.Tensor], tf.Tensor], relu: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """``fn`` forward; DeepLIFT's rescale rule backward on a batch ``concat([z, z'])``."""

    @tf.custom_gradient
    def apply(z: tf.Tensor) -> Any:
        out = fn(z)

        def grad(g: tf.Tensor) -> tf.Tensor:
            if relu:
                true = g * tf.cast(z > 0, g.dtype)
            else:
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    y = fn(z)
                true = tape.gradient(y, z, output_gradients=g)
            delta_in, delta_out = _doubled_delta(z), _doubled_delta(out)
            safe = tf.where(tf.abs(delta_in) < EPS, tf.ones_like(delta_in), delta_in)
            return tf.where(tf.abs(delta_in) < EPS, true, g * delta_out / safe)

        return out, grad

    return apply


def max_pool_rule(layer: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """A ``MaxPooling2D`` (channels-last) with DeepLIFT's max-pool backward."""
    ksize = [1, *layer.pool_size, 1]
    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()

    def unpool(z: tf.Tensor, out: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        """``g`` routed to the arg-max of each window of ``z`` (the max-pool vjp)."""
        return tf.raw_ops.MaxPoolGrad(orig_input=z, orig_output=out, grad=g, ksize=ksize, strides=strides,
                                      padding=padding, data_format="NHWC")

    @tf.custom_gradient
    def apply(z: tf.Tensor) -> Any:
        out = tf.nn.max_pool2d(z, ksize, strides, padding)

        def grad(g: tf.Tensor) -> tf.Tensor:
            n = tf.shape(out)[0] // 2
            o, o_ref = out[:n], out[n:]
            top = tf.maximum(o, o_ref)
            routed = unpool(z, out, g * tf.concat([top - o_ref, o - top], 0))
            summed = routed[:n] + routed[n:]
            summed = tf.concat([summed, summed], 0)
            delta_in = _doubled_delta(z)
            small = tf.abs(delta_in) < EPS
            safe = tf.where(small, tf.ones_like(delta_in), delta_in)
            return tf.where(small, unpool(z, out, g), summed / safe)

        return out, grad

    return apply


def _refuse(layer: Any, what: str) -> CapabilityError:
    return CapabilityError(
        f"deeplift: layer {layer.name!r} ({type(layer).__name__}) applies {what}, a nonlinearity "
        f"polyviz's DeepLIFT has no rule for (rules: {SUPPORTED}); differentiating it as it is would "
        "give a wrong attribution"
    )


def _activation_rule(layer: Any, name: str | None) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """The rescale version of activation ``name`` (None for linear); refuses unknown ones."""
    if name in (None, "linear"):
        return None
    if name not in _ACTIVATIONS:
        raise _refuse(layer, f"the activation {name!r}")
    return rescale(layer.activation, relu=name == "relu")


def call_layer(layer: Any, args: tuple, kwargs: dict) -> Any:
    """Call one (non-nested) layer on the 2N batch with DeepLIFT's rules."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.max_value is not None or float(layer.threshold) != 0.0:
            raise _refuse(layer, "a ReLU with max_value/threshold")
        slope = float(layer.negative_slope)
        fn = tf.nn.relu if slope == 0.0 else (lambda z: tf.nn.leaky_relu(z, slope))
        return rescale(fn, relu=slope == 0.0)(args[0])
    if isinstance(layer, keras.layers.LeakyReLU):
        slope = float(layer.negative_slope)
        return rescale(lambda z: tf.nn.leaky_relu(z, slope))(args[0])
    if isinstance(layer, keras.layers.ELU):
        alpha = float(layer.alpha)
        return rescale(lambda z: keras.activations.elu(z, alpha))(args[0])
    if isinstance(layer, keras.layers.Activation):
        rule = _activation_rule(layer, activation_name(layer))
        return args[0] if rule is None else rule(args[0])
    if isinstance(layer, keras.layers.MaxPooling2D):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _refuse(layer, "channels-first max pooling")
        return max_pool_rule(layer)(args[0])
    if isinstance(layer, keras.layers.Softmax):
        raise _refuse(layer, "softmax")
    if isinstance(layer, keras.layers.PReLU):
        raise _refuse(layer, "a parametric ReLU")
    if isinstance(layer, _MAX_POOLS):
        raise _refuse(layer, "max pooling other than 2-D")
    if is_weighted_with_activation(layer):
        rule = _activation_rule(layer, activation_name(layer))
        if rule is not None:
            return rule(pre_activation(layer, args[0]))
    return call_operation(layer, args, kwargs)


def make_deeplift(model: Any, key: Hashable, x_shape: tuple, data: dict[str, np.ndarray], objective_key: Hashable,
                  pre: Preprocess | None, logits: bool) -> Callable[..., Any]:
    """(x, reference, data) -> (values at x, DeepLIFT multipliers w.r.t. x): one run of the
    batch ``concat([x, reference])`` with the rules, the objective summed over both halves (as
    Captum's), the gradient taken w.r.t. the input half."""
    ref = weakref.ref(model)
    objective_layers = tuple(objective_key[1:2]) if objective_key[0] in (
        "ChannelMean", "Neuron", "LayerNorm", "LayerDistance") else ()

    @tf.function(input_signature=[x_signature(x_shape), x_signature(x_shape), data_signature(data)], autograph=False)
    def deeplift(x: tf.Tensor, reference: tf.Tensor, data: dict[str, tf.Tensor]) -> Any:
        count_trace(key)
        run = Run(record=frozenset(objective_layers), logits=logits, deeplift=True)
        n = tf.shape(x)[0]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            out = forward_through(ref, tf.concat([x, reference], 0), run, pre)
            values = evaluate(objective_key, out[:n], {k: v[:n] for k, v in run.recorded.items()}, data)
            ref_values = evaluate(objective_key, out[n:], {k: v[n:] for k, v in run.recorded.items()}, data)
            total = tf.reduce_sum(values) + tf.reduce_sum(ref_values)
        grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return float32(values), float32(grad)

    return deeplift
