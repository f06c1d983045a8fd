"""Layer-wise relevance propagation in Keras/TensorFlow, as backward rules given as data.

The functional graph is run layer by layer (:mod:`polyviz_keras._graph`); with ``Run.lrp`` set,
each layer is called through :func:`call_with_relevance`, which wraps it in a
``tf.custom_gradient`` whose backward turns the relevance at the layer's output into relevance at
its input. Weighted layers (``Conv2D``, ``Dense``) follow their :class:`polyviz.protocol.LRPRule`
(computed from the kernel and modified copies of it; the variables are only read); average pools
use LRP-0 with a 1e-6 stabiliser; ReLU and other element-wise activations (standalone or fused into
a conv/dense) pass relevance through; max pooling, flatten, reshape and dropout are differentiated
as usual. The same formulas as :mod:`polyviz_torch._lrp` (zennit's generalised rules), so both
frameworks give the same relevance.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from polyviz.errors import CapabilityError
from polyviz.protocol import Gradients, LRPRule, Objective, Rule

__all__ = ["call_with_relevance", "lrp_gradient"]

STABILISER = 1e-6
AVERAGE_POOLS = (
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling3D,
)
#: Layers without weights whose output is an element-wise activation of their input.
ACTIVATIONS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU, keras.layers.Activation)


def stabilize(z: tf.Tensor, epsilon: float) -> tf.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1."""
    return z + tf.cast(epsilon, z.dtype) * tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))


def _is_weighted(layer: Any) -> bool:
    return isinstance(layer, keras.layers.Dense) or (
        isinstance(layer, keras.layers.Conv2D) and type(layer).call is keras.layers.Conv2D.call
        and not isinstance(layer, keras.layers.Conv2DTranspose)
    )


def _linear(layer: Any, a: tf.Tensor, w: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
    """The layer's affine map with kernel ``w`` and bias ``b`` (None: no bias)."""
    if isinstance(layer, keras.layers.Dense):
        z = tf.tensordot(a, w, axes=[[a.shape.rank - 1], [0]])
    else:
        z = layer.convolution_op(a, w)
    return z if b is None else z + b


def _backprop(layer: Any, a: tf.Tensor, w: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """W^T s: the gradient of the (bias-free, linear) map for the output gradient ``s``, shaped like
    the input ``a``. A matrix product or a transposed convolution, no forward pass; the tape
    through the map for convolutions it does not cover (groups, dilated strides)."""
    if isinstance(layer, keras.layers.Dense):
        return tf.tensordot(s, w, axes=[[s.shape.rank - 1], [1]])
    strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    if getattr(layer, "groups", 1) == 1 and (strides == (1, 1) or dilation == (1, 1)):
        return tf.nn.conv2d_transpose(s, w, tf.shape(a), strides=strides, padding=layer.padding.upper(),
                                      dilations=dilation)
    with tf.GradientTape() as tape:
        tape.watch(a)
        z = _linear(layer, a, w, None)
    return tape.gradient(z, a, output_gradients=s)


def _per_channel(value: Any, like: tf.Tensor) -> tf.Tensor:
    return tf.broadcast_to(tf.constant(np.asarray(value), like.dtype), tf.shape(like))


def relevance_rule(layer: Any, rule: LRPRule, w: tf.Tensor, b: tf.Tensor | None) -> Callable[..., tf.Tensor]:
    """``fn(a, R_out, z) -> R_in`` for a conv/dense layer under ``rule`` (``z`` its output; see
    polyviz_torch._lrp)."""
    eps = rule.epsilon

    def clip(t: tf.Tensor | None, positive: bool) -> tf.Tensor | None:
        if t is None:
            return None
        return tf.maximum(t, 0) if positive else tf.minimum(t, 0)

    def fn(a: tf.Tensor, r: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        if rule.name in ("zero", "epsilon"):
            return a * _backprop(layer, a, w, r / stabilize(z, eps))
        if rule.name == "zbox":
            low, high = _per_channel(rule.low, a), _per_channel(rule.high, a)
            wp, wn = clip(w, True), clip(w, False)
            zb = z - _linear(layer, low, wp, clip(b, True)) - _linear(layer, high, wn, clip(b, False))
            s = r / stabilize(zb, eps)
            return a * _backprop(layer, a, w, s) - low * _backprop(layer, low, wp, s) - high * _backprop(layer, high, wn, s)
        ap, an = clip(a, True), clip(a, False)
        if rule.name == "gamma":
            g = tf.cast(rule.gamma, w.dtype)
            wp, wn = w + g * clip(w, True), w + g * clip(w, False)
            bp = None if b is None else b + g * clip(b, True)
            bn = None if b is None else b + g * clip(b, False)
            s_pos = tf.cast(z > 0, r.dtype) * r / stabilize(_linear(layer, ap, wp, bp) + _linear(layer, an, wn, None), eps)
            s_neg = tf.cast(z < 0, r.dtype) * r / stabilize(_linear(layer, ap, wn, bn) + _linear(layer, an, wp, None), eps)
            return (ap * _backprop(layer, ap, wp, s_pos) + an * _backprop(layer, an, wn, s_pos)
                    + ap * _backprop(layer, ap, wn, s_neg) + an * _backprop(layer, an, wp, s_neg))
        wp, wn = clip(w, True), clip(w, False)  # alpha_beta
        s_pos = r / stabilize(_linear(layer, ap, wp, clip(b, True)) + _linear(layer, an, wn, None), eps)
        positive = ap * _backprop(layer, ap, wp, s_pos) + an * _backprop(layer, an, wn, s_pos)
        if rule.beta == 0:
            return tf.cast(rule.alpha, r.dtype) * positive
        s_neg = r / stabilize(_linear(layer, ap, wn, clip(b, False)) + _linear(layer, an, wp, None), eps)
        negative = ap * _backprop(layer, ap, wn, s_neg) + an * _backprop(layer, an, wp, s_neg)
        return tf.cast(rule.alpha, r.dtype) * positive - tf.cast(rule.beta, r.dtype) * negative

    return fn


def _with_backward(forward: Callable[[tf.Tensor], tf.Tensor], backward: Callable[..., tf.Tensor],
                   a: tf.Tensor) -> tf.Tensor:
    """``forward(a)`` whose backward is ``backward(a, relevance, forward(a))``."""

    @tf.custom_gradient
    def op(inp: tf.Tensor) -> Any:
        out = forward(inp)
        return out, lambda relevance: backward(inp, relevance, out)

    return op(a)


def _pass(fn: Callable[[tf.Tensor], tf.Tensor], a: tf.Tensor) -> tf.Tensor:
    """An element-wise activation that passes relevance through unchanged."""
    return _with_backward(fn, lambda inp, relevance, out: relevance, a)


def call_with_relevance(layer: Any, name: str, run: Any, args: tuple, kwargs: dict) -> tf.Tensor:
    """Call one (non-nested) layer so that its backward carries relevance."""
    from polyviz_keras._graph import activation_name, call_operation

    rules: dict[str, LRPRule] = run.lrp
    if name in rules:
        if not _is_weighted(layer):
            raise CapabilityError(f"rule: LRP rules apply to Conv2D/Dense layers; {name!r} is a {type(layer).__name__}")
        a = args[0]
        w = tf.cast(tf.convert_to_tensor(layer.kernel), a.dtype)
        b = tf.cast(tf.convert_to_tensor(layer.bias), a.dtype) if getattr(layer, "use_bias", False) else None
        z = _with_backward(lambda inp: _linear(layer, inp, w, b), relevance_rule(layer, rules[name], w, b), a)
        act = activation_name(layer)
        if layer is run.softmax_layer and run.logits:
            run.logits_tensor = z
            return layer.activation(z)
        return z if act in (None, "linear") else _pass(layer.activation, z)
    if layer is run.softmax_layer and run.logits and isinstance(layer, keras.layers.Softmax | keras.layers.Activation):
        run.logits_tensor = args[0]
        return layer(*args, **kwargs)
    if isinstance(layer, AVERAGE_POOLS):
        return _with_backward(lambda inp: layer(inp), _average_backward(layer), args[0])
    if isinstance(layer, ACTIVATIONS) and not layer.weights:
        return _pass(lambda inp: layer(inp), args[0])
    if layer.weights and not isinstance(layer, keras.layers.InputLayer):
        raise CapabilityError(
            f"rule: layer {name!r} ({type(layer).__name__}) has weights but no LRP rule; LRP covers Conv2D and "
            "Dense layers (fold BatchNormalization into the preceding conv first)"
        )
    return call_operation(layer, args, kwargs)


def _average_backward(layer: Any) -> Callable[..., tf.Tensor]:
    def backward(a: tf.Tensor, r: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(a)
            pooled = layer(a)
        return a * tape.gradient(pooled, a, output_gradients=r / stabilize(tf.stop_gradient(z), STABILISER))

    return backward


def make_lrp_gradient(model: Any, key: Hashable, x_shape: tuple, data: dict[str, np.ndarray], objective_key: Hashable,
                      pre: Any, logits: bool, rules: tuple) -> Callable[..., Any]:
    """(x, data) -> (values, relevance at the model input in the caller's channel order)."""
    from polyviz_keras._functions import (
        compute_dtype,
        count_trace,
        data_signature,
        evaluate,
        float32,
        preprocess_tf,
        x_signature,
    )
    from polyviz_keras._graph import Run, run_model

    ref = weakref.ref(model)

    @tf.function(input_signature=[x_signature(x_shape), data_signature(data)], autograph=False)
    def relevance(x: tf.Tensor, data: dict[str, tf.Tensor]) -> Any:
        count_trace(key)
        m = ref()
        run = Run(logits=logits, lrp=dict(rules))
        xm = preprocess_tf(tf.cast(x, compute_dtype(m)), pre)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(xm)
            out = run_model(m, xm, run)
            values = evaluate(objective_key, out, run.recorded, data)
            total = tf.reduce_sum(values)
        grad = tape.gradient(total, xm, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if pre is not None and pre.channel_order == "BGR":
            grad = tf.reverse(grad, axis=[-1])
        return float32(values), float32(grad)

    return relevance


def lrp_gradient(backend: Any, x: np.ndarray, objective: Objective, rule: Rule) -> Gradients:
    """Objective values and relevance at the input for ``backend``'s model under ``rule.lrp``."""
    from polyviz_keras._functions import cached

    data, static, signature = backend._objective_parts(x, objective)
    key = backend._key("lrp", tuple(x.shape[1:]), static, rule.lrp, signature)
    fn = cached(backend.model, key, lambda: make_lrp_gradient(backend.model, key, x.shape, data, static,
                                                              backend.preprocess, backend.logits, rule.lrp))
    values, grad = backend._call(fn, x, data)
    return Gradients(values.numpy().astype(np.float32), grad.numpy().astype(np.float32))
