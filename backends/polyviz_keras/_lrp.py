"""Layer-wise relevance propagation in Keras/TensorFlow: classify each layer call, hang the shared rule on it.

The rule maths lives once in :mod:`polyviz.rules.lrp`; this module supplies its tensor table
(:class:`KerasOps`) and, with ``Run.lrp`` set, calls each layer of the functional graph
(:mod:`polyviz_keras._graph`) through :func:`call_with_relevance`, which wraps it in a
``tf.custom_gradient`` whose backward is the layer's rule:

* ``Dense``, ``Conv2D`` (grouped too), ``DepthwiseConv2D`` and ``SeparableConv2D`` (its depthwise
  and pointwise maps, one after the other) follow their :class:`~polyviz.protocol.LRPRule`, from
  the kernels (read, never written);
* a ``BatchNormalization`` whose input is the (linear) output of such a layer is merged into it
  (zennit's ``SequentialMergeBatchNorm``): relevance passes through it, and the layer's rule sees
  the folded weights; any other BatchNormalization, ``Rescaling`` and ``Normalization`` are
  diagonal affine maps (LRP-epsilon, stabiliser 1e-6);
* ``Add``: relevance split in proportion to each term; ``Multiply`` of an activation by a
  broadcast gate (squeeze-excitation): all relevance to the activation;
* average pools by LRP-0; activations (standalone or fused) pass relevance through; max pooling,
  concatenation, padding, flatten, reshape and dropout are differentiated as usual.

Layers with weights and no rule (LayerNormalization, attention, layer scale: ConvNeXt and
transformers) are refused with a :class:`CapabilityError`.
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
from polyviz.rules import lrp as rules

__all__ = ["call_with_relevance", "lrp_gradient", "KerasOps"]

L = keras.layers
AVERAGE_POOLS = (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
                 L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D)
#: Layers without weights whose output is an element-wise activation of their input.
ACTIVATIONS = (L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Activation)


class _Part:
    """One linear map of a layer: "dense", "conv" (Conv2D), "depthwise" (DepthwiseConv2D or the
    first half of SeparableConv2D), "pointwise" (the second half of SeparableConv2D)."""

    def __init__(self, layer: Any, kind: str) -> None:
        self.layer, self.kind = layer, kind


class KerasOps:
    """:class:`polyviz.rules.ops.LRPOps` for TensorFlow tensors (channels last)."""

    def pos(self, t: tf.Tensor) -> tf.Tensor:
        return tf.maximum(t, 0)

    def neg(self, t: tf.Tensor) -> tf.Tensor:
        return tf.minimum(t, 0)

    def sign0(self, t: tf.Tensor) -> tf.Tensor:
        return tf.where(t >= 0, tf.ones_like(t), -tf.ones_like(t))

    def gt0(self, t: tf.Tensor) -> tf.Tensor:
        return tf.cast(t > 0, t.dtype)

    def lt0(self, t: tf.Tensor) -> tf.Tensor:
        return tf.cast(t < 0, t.dtype)

    def ones_like(self, t: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(t)

    def per_channel(self, value: float | tuple[float, ...], like: tf.Tensor) -> tf.Tensor:
        return tf.broadcast_to(tf.constant(np.asarray(value), like.dtype), tf.shape(like))

    def linear(self, op: _Part, a: tf.Tensor, w: tf.Tensor, b: tf.Tensor | None) -> tf.Tensor:
        layer = op.layer
        if op.kind == "dense":
            z = tf.tensordot(a, w, axes=[[a.shape.rank - 1], [0]])
        elif op.kind == "conv":
            z = layer.convolution_op(a, w)
        elif op.kind == "depthwise":
            z = keras.ops.depthwise_conv(a, w, strides=layer.strides, padding=layer.padding,
                                         data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        else:  # pointwise
            z = keras.ops.conv(a, w, strides=1, padding="valid", data_format=layer.data_format)
        return z if b is None else z + b

    def linear_t(self, op: _Part, a: tf.Tensor, w: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """A matrix product or a transposed convolution (no forward pass); the tape through the
        map for the convolutions it does not cover."""
        layer = op.layer
        if op.kind == "dense":
            return tf.tensordot(seed, w, axes=[[seed.shape.rank - 1], [1]])
        if op.kind == "conv":
            strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
            if getattr(layer, "groups", 1) == 1 and len(strides) == 2 and (strides == (1, 1) or dilation == (1, 1)):
                return tf.nn.conv2d_transpose(seed, w, tf.shape(a), strides=strides, padding=layer.padding.upper(),
                                              dilations=dilation)
        return self.vjp(lambda t: self.linear(op, t, w, None), a, seed)

    def vjp(self, fn: Callable[[tf.Tensor], tf.Tensor], a: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(a)
            out = fn(a)
        return tape.gradient(out, a, output_gradients=seed)


OPS = KerasOps()


def _with_backward(forward: Callable[..., tf.Tensor], backward: Callable[[tf.Tensor], tuple], *inputs: tf.Tensor) -> tf.Tensor:
    """``forward(*inputs)`` whose backward maps the relevance at the output to one per input."""

    @tf.custom_gradient
    def op(*inp: tf.Tensor) -> Any:
        out = forward(*inp)

        def grad(r: tf.Tensor) -> Any:
            res = backward(r)
            return res[0] if len(inp) == 1 else list(res)

        return out, grad

    return op(*inputs)


def _pass(fn: Callable[[tf.Tensor], tf.Tensor], a: tf.Tensor) -> tf.Tensor:
    """An element-wise map that passes relevance through unchanged."""
    return _with_backward(fn, lambda r: (r,), a)


def _value(var: Any, dtype: Any) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(var), dtype)


def _parts(layer: Any, dtype: Any) -> list[tuple[_Part, tf.Tensor, tf.Tensor | None]] | None:
    """(map, weight, bias) of each linear map of a weighted layer, in order; None for other layers."""
    bias = _value(layer.bias, dtype) if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None else None
    if isinstance(layer, L.Dense):
        return [(_Part(layer, "dense"), _value(layer.kernel, dtype), bias)]
    if isinstance(layer, L.SeparableConv2D):
        return [(_Part(layer, "depthwise"), _value(layer.depthwise_kernel, dtype), None),
                (_Part(layer, "pointwise"), _value(layer.pointwise_kernel, dtype), bias)]
    if isinstance(layer, L.DepthwiseConv2D):
        return [(_Part(layer, "depthwise"), _value(layer.kernel, dtype), bias)]
    if isinstance(layer, L.Conv2D) and type(layer).call is L.Conv2D.call and not isinstance(layer, L.Conv2DTranspose):
        return [(_Part(layer, "conv"), _value(layer.kernel, dtype), bias)]
    return None


class _State:
    """One trace's LRP state (kept on the Run): linear outputs seen, BatchNorms merged into them."""

    def __init__(self) -> None:
        self.produced: dict[int, tuple[tf.Tensor, _Part]] = {}
        self.merged: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}  # id(part) -> (scale, shift)
        self.gates: dict[int, tf.Tensor] = {}  # outputs of sigmoid / hard_sigmoid activations

        self.roots: dict[int, tuple[tf.Tensor, tf.Tensor]] = {}  # element-wise result -> (it, its source)

        self.squeezed: dict[int, tf.Tensor] = {}  # computed from a global average pool (an SE branch)

    def squeeze(self, out: tf.Tensor, source: tf.Tensor | None = None) -> tf.Tensor:
        """Mark ``out`` as computed from a global pool (``source`` None) or from a marked ``source``."""
        if source is None or self.squeezed.get(id(source)) is source:
            self.squeezed[id(out)] = out
        return out

    def derive(self, out: tf.Tensor, source: tf.Tensor) -> tf.Tensor:
        """``out`` is an element-wise, parameter-free function of ``source``."""
        known = self.roots.get(id(source))
        self.roots[id(out)] = (out, known[1] if known is not None and known[0] is source else source)
        return self.squeeze(out, source)

    def is_gate(self, t: tf.Tensor, other: tf.Tensor) -> bool:
        """``t`` gates ``other``: a sigmoid output, a broadcast factor, or an element-wise function of
        ``other`` itself (``x * hard_sigmoid(x)``: Keras' hard_swish)."""
        root = self.roots.get(id(t))
        squeezed = self.squeezed.get(id(t)) is t and self.squeezed.get(id(other)) is not other
        return (squeezed or (id(t) in self.gates and self.gates[id(t)] is t) or _gate(other, t)
                or (root is not None and root[0] is t and root[1] is other))


def _state(run: Any) -> _State:
    state = getattr(run, "_lrp_state", None)
    if state is None:
        state = _State()
        run._lrp_state = state
    return state


def _linear_part(state: _State, part: _Part, rule: LRPRule, w: tf.Tensor, b: tf.Tensor | None, a: tf.Tensor) -> tf.Tensor:
    def backward(r: tf.Tensor) -> tuple[tf.Tensor]:
        folded = state.merged.get(id(part))
        if folded is None:
            return (rules.linear_relevance(OPS, part, rule, w, b, a, r, z),)
        scale, shift = folded
        scale_w = tf.reshape(scale, w.shape[2:]) if part.kind == "depthwise" else None
        w2, b2 = rules.fold_batchnorm(w, b, scale, shift, scale_w)
        return (rules.linear_relevance(OPS, part, rule, w2, b2, a, r, OPS.linear(part, a, w2, b2)),)

    z = OPS.linear(part, a, w, b)
    return _with_backward(lambda inp: OPS.linear(part, inp, w, b), backward, a)


def _bn_affine(layer: Any, a: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    dtype = a.dtype
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    if axis not in (-1, a.shape.rank - 1):
        raise CapabilityError(f"rule: LRP supports channels-last BatchNormalization; {layer.name!r} normalises axis {axis}")
    gamma = _value(layer.gamma, dtype) if layer.scale else None
    beta = _value(layer.beta, dtype) if layer.center else None
    return rules.batchnorm_affine(_value(layer.moving_mean, dtype), _value(layer.moving_variance, dtype), gamma, beta,
                                  float(layer.epsilon))


def _affine(scale: tf.Tensor, shift: tf.Tensor, a: tf.Tensor) -> tf.Tensor:
    z = a * scale + shift
    return _with_backward(lambda inp: inp * scale + shift, lambda r: (rules.affine_relevance(OPS, scale, a, r, z),), a)


def _gate(big: tf.Tensor, gate: tf.Tensor) -> bool:
    bs, gs = big.shape.as_list(), gate.shape.as_list()
    return len(bs) == len(gs) and bs != gs and all(g in (1, b) for g, b in zip(gs[1:], bs[1:], strict=True))


GATE_ACTIVATIONS = ("sigmoid", "hard_sigmoid")


def _mark_gate(state: _State, act: str | None, out: tf.Tensor) -> tf.Tensor:
    if act in GATE_ACTIVATIONS:
        state.gates[id(out)] = out
    return out


def call_with_relevance(layer: Any, name: str, run: Any, args: tuple, kwargs: dict) -> tf.Tensor:
    """Call one (non-nested) layer so that its backward carries relevance."""
    from polyviz_keras._graph import activation_name, call_operation

    state = _state(run)
    rules_by_name: dict[str, LRPRule] = run.lrp
    parts = _parts(layer, args[0].dtype) if args and isinstance(layer, L.Layer) and hasattr(args[0], "dtype") else None
    if name in rules_by_name:
        if parts is None:
            raise CapabilityError(
                f"rule: LRP rules apply to Conv2D/DepthwiseConv2D/SeparableConv2D/Dense layers; {name!r} is a "
                f"{type(layer).__name__}")
        z = args[0]
        for part, w, b in parts:
            z = state.squeeze(_linear_part(state, part, rules_by_name[name], w, b, z), args[0])
        act = activation_name(layer)
        if layer is run.softmax_layer and run.logits:
            run.logits_tensor = z
            return layer.activation(z)
        if act in (None, "linear"):
            state.produced[id(z)] = (z, parts[-1][0])
            return z
        return state.squeeze(_mark_gate(state, act, _pass(layer.activation, z)), z)
    if layer is run.softmax_layer and run.logits and isinstance(layer, L.Softmax | L.Activation):
        run.logits_tensor = args[0]
        return layer(*args, **kwargs)
    if isinstance(layer, L.BatchNormalization):
        a = args[0]
        scale, shift = _bn_affine(layer, a)
        source = state.produced.pop(id(a), None)
        if source is not None and source[0] is a and id(source[1]) not in state.merged:
            state.merged[id(source[1])] = (scale, shift)
            return _pass(lambda inp: inp * scale + shift, a)
        return _affine(scale, shift, a)
    if isinstance(layer, L.Rescaling):
        a = args[0]
        scale, offset = (tf.cast(tf.convert_to_tensor(v), a.dtype) for v in (layer.scale, layer.offset))
        return _affine(scale, offset, a)
    if isinstance(layer, L.Normalization) and not layer.invert:
        a = args[0]
        mean, var = _value(layer.mean, a.dtype), _value(layer.variance, a.dtype)
        scale = 1.0 / tf.maximum(tf.sqrt(var), keras.backend.epsilon())
        return _affine(scale, -mean * scale, a)
    # a keras.ops node of a functional graph (``x + y``) on two tensors
    raw = not isinstance(layer, L.Layer) and len(args) == 2 and all(isinstance(t, tf.Tensor) for t in args)
    if isinstance(layer, L.Add) or (raw and type(layer).__name__ == "Add" and len(args) == 2):
        terms = list(args) if raw else list(args[0])
        if len({tuple(t.shape.as_list()) for t in terms}) == 1:
            z = tf.add_n(terms)
            return _with_backward(lambda *inp: tf.add_n(list(inp)), lambda r: tuple(rules.sum_relevance(OPS, terms, r, z)),
                                  *terms)
    if (isinstance(layer, L.Multiply) and len(args[0]) == 2) or (raw and type(layer).__name__ == "Multiply"
                                                                 and len(args) == 2):
        x, y = args if raw else args[0]
        if state.is_gate(y, x) or state.is_gate(x, y):
            big_first = state.is_gate(y, x)
            zero = tf.zeros_like(y if big_first else x)
            grads = (lambda r: (r, zero)) if big_first else (lambda r: (zero, r))
            return _with_backward(lambda p, q: p * q, grads, x, y)
    if isinstance(layer, AVERAGE_POOLS):
        a = args[0]
        z = layer(a)
        out = _with_backward(lambda inp: layer(inp), lambda r: (rules.average_relevance(OPS, layer, a, r, z),), a)
        return state.squeeze(out) if "Global" in type(layer).__name__ else out
    if isinstance(layer, ACTIVATIONS) and not layer.weights:
        out = _mark_gate(state, activation_name(layer), _pass(lambda inp: layer(inp), args[0]))
        return state.derive(out, args[0])
    if getattr(layer, "weights", None) and not isinstance(layer, L.InputLayer):
        raise CapabilityError(
            f"rule: layer {name!r} ({type(layer).__name__}) has weights but no LRP rule; polyviz's LRP covers "
            "convolutions, Dense and BatchNormalization (LayerNormalization, attention and layer scale, as in "
            "ConvNeXt and transformers, would need AttnLRP's rules, which polyviz does not implement)"
        )
    out = call_operation(layer, args, kwargs)
    tensors = [t for t in args if isinstance(t, tf.Tensor)]
    if not isinstance(layer, L.Layer) and len(tensors) == 1:  # a keras.ops node with scalars (x + 3.0)
        state.derive(out, tensors[0])
    elif isinstance(layer, L.Reshape | L.Flatten | L.Dropout) and tensors:
        state.squeeze(out, tensors[0])
    return out


def make_lrp_gradient(model: Any, key: Hashable, x_shape: tuple, data: dict[str, np.ndarray], objective_key: Hashable,
                      pre: Any, logits: bool, rules_: tuple) -> Callable[..., Any]:
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
        run = Run(logits=logits, lrp=dict(rules_))
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
