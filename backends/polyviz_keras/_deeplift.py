"""DeepLIFT in TensorFlow: the rules of :mod:`polyviz.rules.deeplift`, hung on the Keras graph
(the same rules as ``polyviz_torch._deeplift`` and, where it has them, Captum's ``DeepLift``).

The inputs and their references run through the model's graph as one batch ``concat([x, x'])``
(``Run.deeplift``); :func:`call_layer` replaces, for that run only, each nonlinearity by a
``tf.custom_gradient`` version:

* element-wise activations (relu, relu6, leaky_relu, elu, selu, celu, gelu, silu/swish,
  hard_silu/hard_swish, hard_sigmoid, sigmoid, tanh, softplus, mish, ...), standalone (``ReLU``
  with any ``max_value``/``negative_slope``/``threshold``, ``LeakyReLU``, ``ELU``, ``Activation``),
  fused into a Dense/Conv layer (its pre-activation is computed from its weights and the activation
  applied by the rule) or raw ``keras.ops`` nodes of a functional graph: the rescale rule;
* ``MaxPooling2D``: Captum's max-pool rule;
* ``Multiply`` of two tensors (squeeze-excitation), layer or raw op: the two-factor product rule.

Linear layers (Conv, Dense without activation, average pooling, ZeroPadding, Flatten, Dropout,
BatchNormalization in inference, Rescaling, Normalization, Add, Concatenate, ...) run as they are.
Other nonlinearities (softmax inside the network or on the output with ``logits=False``, layer or
group normalisation, attention, 1-D/3-D or global max pooling, parametrised ReLUs, division or
matrix products of two tensors) raise a :class:`CapabilityError` naming the layer. This file holds
only the TensorFlow plumbing; the maths is in ``polyviz.rules.deeplift``.
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
from polyviz.rules.deeplift import EPS, maxpool_backward, product_backward, rescale_multiplier
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

__all__ = ["call_layer", "make_deeplift", "EPS", "SUPPORTED", "TfOps"]

SUPPORTED = ("element-wise activations (relu, relu6, leaky_relu, elu, selu, gelu, silu/swish, hard_swish, "
             "hard_sigmoid, sigmoid, tanh, softplus, mish, ...), MaxPooling2D, Multiply of two tensors and "
             "linear layers")
#: activation names with a rule (the layer's own activation function is applied)
_ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "hard_silu", "hard_swish",
    "hard_sigmoid", "sigmoid", "tanh", "softplus", "softsign", "mish", "exponential", "log_sigmoid", "hard_tanh",
    "sparse_plus", "squareplus", "tanh_shrink", "soft_shrink", "hard_shrink", "sparse_sigmoid", "threshold",
})
#: raw keras.ops operation classes (lower-cased names) that are element-wise in their first argument
_RAW_ELEMENTWISE = frozenset({
    "relu", "relu6", "sigmoid", "silu", "swish", "hardsigmoid", "hardsilu", "hardswish", "gelu", "elu", "selu",
    "celu", "softplus", "softsign", "leakyrelu", "logsigmoid", "mish", "hardtanh", "sparseplus", "squareplus",
    "tanhshrink", "softshrink", "hardshrink", "sparsesigmoid", "tanh", "exp", "abs", "absolute", "square",
    "erf", "log", "sqrt", "negative",
})
#: raw operations that are nonlinear and not element-wise
_RAW_REFUSED = frozenset({"softmax", "logsoftmax", "layernorm", "rmsnorm", "normalize", "dotproductattention",
                          "sparsemax", "glu", "adaptivemaxpool", "maxpool", "max", "min", "argmax", "moments"})
_TWO_TENSORS_REFUSED = frozenset({"divide", "truedivide", "matmul", "einsum", "dot", "tensordot", "maximum",
                                  "minimum", "power"})
_REFUSED_LAYERS = tuple(getattr(keras.layers, name) for name in (
    "MaxPooling1D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "LayerNormalization", "GroupNormalization", "UnitNormalization", "RMSNormalization", "MultiHeadAttention",
    "Attention", "AdditiveAttention", "GroupQueryAttention", "Dot", "Maximum", "Minimum",
) if hasattr(keras.layers, name))


class TfOps:
    """:class:`polyviz.rules.deeplift.DeepLiftOps` in TensorFlow (graph mode: no Python branching
    on values)."""

    @staticmethod
    def halves(t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        n = tf.shape(t)[0] // 2
        return t[:n], t[n:]

    @staticmethod
    def cat(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.concat([a, b], 0)

    @staticmethod
    def where(cond: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.where(cond, a, b)

    @staticmethod
    def small(t: tf.Tensor, eps: float) -> tf.Tensor:
        return tf.abs(t) < eps

    @staticmethod
    def maximum(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.maximum(a, b)

    @staticmethod
    def sum_to(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        lead = t.shape.rank - like.shape.rank
        if lead:
            t = tf.reduce_sum(t, axis=list(range(lead)))
        axes = [i for i, (a, b) in enumerate(zip(like.shape, t.shape)) if a == 1 and b != 1]
        return tf.reduce_sum(t, axis=axes, keepdims=True) if axes else t


OPS = TfOps()


def rescale(fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    """``fn`` forward; DeepLIFT's rescale rule backward on a batch ``concat([z, z'])``."""

    @tf.custom_gradient
    def apply(z: tf.Tensor) -> Any:
        out = fn(z)

        def grad(g: tf.Tensor) -> tf.Tensor:
            def derivative() -> tf.Tensor:
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    y = fn(z)
                return tape.gradient(y, z)

            return g * rescale_multiplier(OPS, z, out, derivative)

        return out, grad

    return apply


@tf.custom_gradient
def product(a: tf.Tensor, b: tf.Tensor) -> Any:
    """``a * b`` forward; the two-factor product rule backward."""

    def grad(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return product_backward(OPS, g, a, b)

    return a * b, grad


def max_pool_rule(layer: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """A ``MaxPooling2D`` (channels-last) with DeepLIFT's max-pool backward."""
    ksize = [1, *layer.pool_size, 1]
    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()

    @tf.custom_gradient
    def apply(z: tf.Tensor) -> Any:
        out = tf.nn.max_pool2d(z, ksize, strides, padding)

        def grad(g: tf.Tensor) -> tf.Tensor:
            def unpool(values: tf.Tensor) -> tf.Tensor:
                """``values`` routed to the arg-max of each window of ``z`` (the max-pool vjp)."""
                return tf.raw_ops.MaxPoolGrad(orig_input=z, orig_output=out, grad=values, ksize=ksize,
                                              strides=strides, padding=padding, data_format="NHWC")

            return maxpool_backward(OPS, g, z, out, unpool)

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
    return rescale(layer.activation)


def _is_tensor(t: Any) -> bool:
    return isinstance(t, tf.Tensor | tf.Variable) or (hasattr(t, "shape") and hasattr(t, "dtype") and not np.isscalar(t))


def _raw_operation(op: Any, args: tuple, kwargs: dict) -> Any:
    """A raw ``keras.ops`` node of a functional graph (``x + 3``, ``x * gate``, ``ops.sigmoid(x)``)."""
    kind = type(op).__name__.lower()
    tensors = [a for a in args if _is_tensor(a)]
    if (kind in _RAW_ELEMENTWISE or kind in ("maximum", "minimum", "clip")) and len(tensors) == 1 and _is_tensor(args[0]):
        rest = args[1:]
        return rescale(lambda z: op(z, *rest, **kwargs))(args[0])
    if kind == "multiply" and len(tensors) == 2:
        return product(*args)
    if kind in _RAW_REFUSED or (kind in _TWO_TENSORS_REFUSED and len(tensors) >= 2):
        raise _refuse(op, f"the operation {type(op).__name__}")
    return call_operation(op, args, kwargs)


def call_layer(layer: Any, args: tuple, kwargs: dict) -> Any:
    """Call one (non-nested) layer on the 2N batch with DeepLIFT's rules."""
    if isinstance(layer, keras.layers.ReLU):
        slope, top, threshold = float(layer.negative_slope), layer.max_value, float(layer.threshold)
        top = None if top is None else float(top)
        return rescale(lambda z: keras.activations.relu(z, negative_slope=slope, max_value=top,
                                                        threshold=threshold))(args[0])
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
    if isinstance(layer, keras.layers.Multiply):
        inputs = args[0]
        if len(inputs) != 2:
            raise _refuse(layer, f"a product of {len(inputs)} tensors (the product rule takes two)")
        return product(inputs[0], inputs[1])
    if isinstance(layer, keras.layers.Softmax):
        raise _refuse(layer, "softmax")
    if isinstance(layer, keras.layers.PReLU):
        raise _refuse(layer, "a parametric ReLU")
    if isinstance(layer, _REFUSED_LAYERS):
        raise _refuse(layer, type(layer).__name__)
    if not isinstance(layer, keras.layers.Layer):
        return _raw_operation(layer, args, kwargs)
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
