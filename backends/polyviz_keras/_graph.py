"""Run a Keras functional graph ourselves, layer by layer, to record and steer what happens.

Keras 3's ``Function._run_through_graph(inputs, operation_fn)`` executes a functional model's
nodes in order, calling ``operation_fn(layer)(*args, **kwargs)`` at each. We pass an operation_fn
that wraps each layer to record requested outputs, recurse into nested models (``outer/inner``
names), call layers with ``training=False``, realise ReLU backward rules and expose pre-softmax
logits, all without cloning or editing the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf
from keras.src.models.functional import Functional
from keras.src.models.functional import operation_fn as keras_operation_fn

from polyviz.errors import LayerError

SEP = "/"


def graph_of(model: Any) -> Functional | None:
    """The functional graph behind a Functional or Sequential model, or None (subclassed)."""
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        return fn if isinstance(fn, Functional) else None
    if isinstance(model, Functional):
        return model
    return None


def is_nested(layer: Any) -> bool:
    """True for a Functional or Sequential model used as a layer of another model."""
    return graph_of(layer) is not None


def activation_name(layer: Any) -> str | None:
    """The name of a layer's ``activation`` function (None when it has none)."""
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def is_plain_relu_layer(layer: Any) -> bool:
    """A standalone ReLU: ``ReLU()`` with default parameters or ``Activation('relu')``."""
    if isinstance(layer, keras.layers.ReLU):
        return (
            layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        )
    return isinstance(layer, keras.layers.Activation) and activation_name(layer) == "relu"


def has_fused_activation(layer: Any, name: str) -> bool:
    """A weighted layer (Dense, Conv) whose ``activation`` is ``name``."""
    return not isinstance(layer, keras.layers.Activation) and hasattr(layer, "kernel") and activation_name(layer) == name


def iter_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, layer) for every layer in execution order, nested models' layers as ``outer/inner``."""
    graph = graph_of(model)
    out: list[tuple[str, Any]] = []
    if graph is None:
        return out
    for op in graph.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        name = prefix + op.name
        out.append((name, op))
        if is_nested(op):
            out.extend(iter_layers(op, name + SEP))
    return out


def tensor_numbers(model: Any) -> dict[str, int]:
    """``LayerInfo.tensor`` for each layer of :func:`iter_layers`: its output's number in graph
    order. A nested model shares its output layer's number; a layer with several outputs, or called
    more than once, has none."""
    numbers: dict[str, int] = {}
    pending: list[tuple[str, Any]] = []
    by_op: dict[tuple[str, int], str] = {}
    for name, op in iter_layers(model):
        prefix = name.rsplit(SEP, 1)[0] + SEP if SEP in name else ""
        by_op[(prefix, id(op))] = name
        if len(getattr(op, "_inbound_nodes", ())) > 1:
            continue
        if is_nested(op):
            pending.append((name, op))
        elif len(keras.tree.flatten(op.output)) == 1:
            numbers[name] = len(numbers)
    for name, op in reversed(pending):  # innermost first: a nested model inside a nested model
        outputs = graph_of(op).outputs
        history = getattr(outputs[0], "_keras_history", None) if len(outputs) == 1 else None
        inner = by_op.get((name + SEP, id(history[0]))) if history else None
        if inner in numbers:
            numbers[name] = numbers[inner]
    return numbers


def final_softmax(model: Any) -> Any | None:
    """The layer that applies the model's final softmax, if the model ends in one."""
    graph = graph_of(model)
    if graph is None or len(graph.outputs) != 1:
        return None
    history = getattr(graph.outputs[0], "_keras_history", None)
    layer = history[0] if history else None
    if layer is None:
        return None
    if is_nested(layer):  # a wrapper whose output is a nested model's output
        return final_softmax(layer)
    if isinstance(layer, keras.layers.Softmax):
        return layer
    if isinstance(layer, keras.layers.Activation) and activation_name(layer) == "softmax":
        return layer
    if has_fused_activation(layer, "softmax") and isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
        return layer
    return None


def relu_with_rule(rule: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A ReLU whose forward is ``max(x, 0)`` and whose backward follows ``rule``."""

    @tf.custom_gradient
    def guided(x: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return dy * tf.cast(x > 0, dy.dtype) * tf.cast(dy > 0, dy.dtype)

        return tf.nn.relu(x), grad

    @tf.custom_gradient
    def deconvnet(x: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.nn.relu(dy)

        return tf.nn.relu(x), grad

    return guided if rule == "guided" else deconvnet


def pre_activation(layer: Any, inputs: tf.Tensor) -> tf.Tensor:
    """The output of a Dense or Conv layer before its activation, computed from its weights."""
    plain = getattr(layer, "quantization_mode", None) is None and not getattr(layer, "lora_enabled", False)
    if plain and isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call:
        out = tf.tensordot(inputs, layer.kernel, axes=[[inputs.shape.rank - 1], [0]])
        out.set_shape(inputs.shape[:-1].concatenate([layer.kernel.shape[-1]]))
    elif (
        plain
        and hasattr(layer, "convolution_op")
        and getattr(layer, "rank", None) == 2
        and getattr(layer, "data_format", "channels_last") == "channels_last"
        and type(layer).call is keras.layers.Conv2D.call
    ):
        out = layer.convolution_op(inputs, layer.kernel)
    else:  # any other layer: run it with its activation set to identity, restored at once
        saved = layer.activation
        try:
            layer.activation = keras.activations.linear
            return layer(inputs, training=False)
        finally:
            layer.activation = saved
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        out = out + layer.bias
    return out


@dataclass
class Run:
    """What one run through the graph records and how it steers the layers."""

    record: frozenset[str] = frozenset()
    relu_rule: str | None = None
    logits: bool = True
    scale: dict[str, tf.Tensor] = field(default_factory=dict)
    #: layer name -> the tensor that stands for its output (the layer itself is not called)
    replace: dict[str, tf.Tensor] = field(default_factory=dict)
    recorded: dict[str, tf.Tensor] = field(default_factory=dict)
    logits_tensor: tf.Tensor | None = None
    softmax_layer: Any = None
    #: DeepLIFT: the batch is concat([x, reference]); nonlinearities follow polyviz_keras._deeplift
    deeplift: bool = False
    #: LRP: full layer name -> LRPRule; layers follow polyviz_keras._lrp
    lrp: dict[str, Any] | None = None


def _call_layer(layer: Any, run: Run, args: tuple, kwargs: dict) -> Any:
    """Call one (non-nested) layer, realising the rule and the logits behaviour."""
    if layer is run.softmax_layer and run.logits:
        x = args[0]
        if isinstance(layer, keras.layers.Softmax | keras.layers.Activation):
            run.logits_tensor = x
            return layer(*args, **kwargs)
        z = pre_activation(layer, x)
        run.logits_tensor = z
        return layer.activation(z)
    if run.deeplift:
        from polyviz_keras._deeplift import call_layer

        return call_layer(layer, args, kwargs)
    if run.relu_rule is not None:
        if is_plain_relu_layer(layer):
            return relu_with_rule(run.relu_rule)(args[0])
        if has_fused_activation(layer, "relu"):
            return relu_with_rule(run.relu_rule)(pre_activation(layer, args[0]))
    return keras_operation_fn(layer, training=False)(*args, **kwargs)


def _operation_fn(run: Run, prefix: str) -> Callable[[Any], Callable[..., Any]]:
    def wrap(layer: Any) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            name = prefix + layer.name
            if name in run.replace:
                out = run.replace[name]
            elif is_nested(layer):
                inner = args[0] if args else kwargs.get("inputs")
                out = _run_graph(graph_of(layer), inner, run, name + SEP)
            elif run.lrp is not None:
                from polyviz_keras._lrp import call_with_relevance

                out = call_with_relevance(layer, name, run, args, kwargs)
            else:
                out = _call_layer(layer, run, args, kwargs)
            if name in run.scale:
                keep = tf.cast(run.scale[name], out.dtype)  # the identity for a float32 model
                out = out * tf.reshape(keep, [-1] + [1] * (out.shape.rank - 2) + [out.shape[-1]])
            if name in run.record:
                if name in run.recorded:
                    raise LayerError(
                        f"layer: {name!r} is called more than once in one forward pass (a shared layer), so "
                        "its activation is ambiguous; choose a layer that runs once"
                    )
                run.recorded[name] = out
            return out

        return call

    return wrap


def _run_graph(graph: Functional, inputs: Any, run: Run, prefix: str) -> Any:
    outputs = graph._run_through_graph(inputs, operation_fn=_operation_fn(run, prefix))
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        outputs = outputs[0]
    return outputs


def run_model(model: Any, x: tf.Tensor, run: Run) -> tf.Tensor:
    """The model output for ``x`` (logits when ``run.logits`` and the model ends in softmax);
    requested layer outputs land in ``run.recorded``."""
    run.softmax_layer = final_softmax(model)
    out = _run_graph(graph_of(model), x, run, "")
    if run.logits and run.logits_tensor is not None:
        return run.logits_tensor
    return out
