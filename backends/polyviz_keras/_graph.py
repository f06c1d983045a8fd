"""Run a Keras functional graph ourselves, layer by layer, to record and steer what happens.

A Sequential model runs as its layers in order; a functional model through Keras'
``Function._run_through_graph(inputs, operation_fn)`` (reached only through the guarded shim
:mod:`polyviz_keras._internals`: Keras has no public API for it), which executes the nodes in order
and calls ``operation_fn(layer)(*args, **kwargs)`` at each. Our operation_fn wraps each layer to
record requested outputs, recurse into nested models (``outer/inner`` names), call layers with
``training=False``, realise ReLU backward rules and expose pre-softmax logits, all without cloning
or editing the model: no attribute of a user's layer is ever assigned, not even for a moment
(:func:`pre_activation`), so calls overlapping from several threads cannot see each other.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from polyviz.errors import CapabilityError, InputError, LayerError
from polyviz_keras._internals import producer_of, run_through_graph

SEP = "/"

#: Keras layer classes with a fused ``activation`` whose ``call`` computes
#: ``activation(affine map of the inputs)`` reading ``self.activation`` once, at the end, and
#: skipping it when it is None. :func:`pre_activation` runs exactly these ``call`` functions.
FUSED_ACTIVATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
        "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    )
    if hasattr(keras.layers, name)
)
_FUSED_CALLS = frozenset(cls.call for cls in FUSED_ACTIVATION_LAYERS)


def graph_of(model: Any) -> Any | None:
    """``model`` itself when it is a graph model polyviz can run layer by layer: a functional model
    (a ``keras.Model`` that is a ``keras.Function``) or a Sequential model with defined inputs; None
    otherwise (subclassed models, unbuilt Sequential models)."""
    if isinstance(model, keras.Sequential):
        try:
            model.inputs  # noqa: B018 - raises AttributeError until the inputs are defined
        except (AttributeError, ValueError):
            return None
        return model
    if isinstance(model, keras.Model) and isinstance(model, keras.Function):
        return model
    return None


def graph_operations(graph: Any) -> list[Any]:
    """The operations of a graph model in execution order, input layers left out."""
    ops = graph.layers if isinstance(graph, keras.Sequential) else graph.operations
    return [op for op in ops if not isinstance(op, keras.layers.InputLayer)]


def output_operation(graph: Any) -> Any | None:
    """The operation that produces a single-output graph model's output (None if unknown)."""
    if isinstance(graph, keras.Sequential):
        layers = graph.layers
        return layers[-1] if layers else None
    if len(graph.outputs) != 1:
        return None
    out = graph.outputs[0]
    for op in reversed(graph.operations):
        try:
            produced = keras.tree.flatten(op.output)
        except (AttributeError, ValueError, RuntimeError):
            continue
        if any(t is out for t in produced):
            return op
    return producer_of(out)


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


def is_weighted_with_activation(layer: Any) -> bool:
    """A weighted layer that may carry a fused ``activation`` (Dense, Conv, DepthwiseConv,
    SeparableConv, ... or any layer with a ``kernel``), as opposed to a standalone activation."""
    if isinstance(layer, keras.layers.Activation) or getattr(layer, "activation", None) is None:
        return False
    return isinstance(layer, FUSED_ACTIVATION_LAYERS) or hasattr(layer, "kernel")


def has_fused_activation(layer: Any, name: str) -> bool:
    """A weighted layer (Dense, Conv, DepthwiseConv, SeparableConv, ...) whose ``activation`` is ``name``."""
    return is_weighted_with_activation(layer) and activation_name(layer) == name


def iter_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, layer) for every layer in execution order, nested models' layers as ``outer/inner``."""
    graph = graph_of(model)
    out: list[tuple[str, Any]] = []
    if graph is None:
        return out
    for op in graph_operations(graph):
        name = prefix + op.name
        out.append((name, op))
        if is_nested(op):
            out.extend(iter_layers(op, name + SEP))
    return out


def attribute_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, layer) for the layers Keras tracks as attributes of a subclassed model
    (``model.layers``), a sub-model's own layers as ``outer/inner`` (a functional sub-model's in
    graph order), in the order Keras lists them (creation order, not necessarily call order)."""
    out: list[tuple[str, Any]] = []
    for layer in getattr(model, "layers", None) or []:
        name = prefix + layer.name
        out.append((name, layer))
        if graph_of(layer) is not None:
            out.extend(iter_layers(layer, name + SEP))
        elif isinstance(layer, keras.Model):
            out.extend(attribute_layers(layer, name + SEP))
    return out


def scoped_output(name: str) -> tf.Tensor:
    """Inside a ``tf.function`` that has just called a subclassed model: the output of its layer
    ``name`` (``outer/inner`` path), found by the name scopes Keras opens for each layer call on
    TensorFlow (``<model>_1/<outer>_1/<inner>_1/...``): the last floating-point tensor computed in
    that scope, sub-scopes included. A layer called more than once (two scopes) or never is refused."""
    import re

    parts = name.split(SEP)
    # anchored under the model's own scope (the first component), so that a same-named layer inside
    # a sub-model is not taken for this one
    pattern = re.compile(r"^[^/]+/(" + "/".join(re.escape(p) + r"(?:_\d+)?" for p in parts) + r")/")
    scopes: set[str] = set()
    found = None
    for op in tf.compat.v1.get_default_graph().get_operations():
        match = pattern.search(op.name)
        if match is None or not op.outputs or op.type in ("ReadVariableOp", "Const", "VarHandleOp", "Shape"):
            continue
        if not op.outputs[0].dtype.is_floating:
            continue
        scopes.add(op.name[: match.end(1)])
        found = op.outputs[0]
    if found is None:
        raise LayerError(f"layer: {name!r} did not run in the model's call for this input")
    if len(scopes) > 1:
        raise LayerError(
            f"layer: {name!r} is called {len(scopes)} times in one forward pass (a shared layer), so its "
            "activation is ambiguous; choose a layer that runs once"
        )
    return found


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
    layer = output_operation(graph)
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


class _WithoutActivation:
    """A read-only view of a layer whose ``activation`` is None; every other attribute (weights,
    strides, padding, helper methods) is the layer's own. The layer itself is never written to."""

    __slots__ = ("_layer",)
    activation = None

    def __init__(self, layer: Any) -> None:
        object.__setattr__(self, "_layer", layer)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_layer"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"polyviz: a layer's call tried to set {name!r} while computing its pre-activation")


def pre_activation(layer: Any, inputs: tf.Tensor) -> tf.Tensor:
    """The output of a Dense/EinsumDense/Conv/ConvTranspose/DepthwiseConv/SeparableConv layer
    before its fused activation.

    The layer's own ``call`` runs on a read-only view of the layer whose ``activation`` is None
    (:class:`_WithoutActivation`): Keras' own maths with the layer's own variables, and the layer
    is never mutated, not even for a moment, so a concurrent trace of the same model in another
    thread sees it as it is. Layers whose ``call`` is not one of those Keras classes' (a subclass
    that overrides ``call``), and quantized layers, are refused: polyviz cannot know where their
    activation is applied."""
    call = type(layer).call
    if call not in _FUSED_CALLS or getattr(layer, "quantization_mode", None) is not None:
        raise CapabilityError(
            f"layer {layer.name!r} ({type(layer).__name__}) applies a fused activation polyviz cannot separate "
            f"from its {'quantized ' if getattr(layer, 'quantization_mode', None) else 'own '}call (supported: "
            f"{', '.join(cls.__name__ for cls in FUSED_ACTIVATION_LAYERS)}); use activation=None and a separate "
            "Activation layer"
        )
    compute = tf.as_dtype(layer.compute_dtype)
    variables = tf.as_dtype(layer.variable_dtype)
    if compute != variables and inputs.dtype == compute:  # mixed precision: compute in the weights' dtype
        return tf.cast(call(_WithoutActivation(layer), tf.cast(inputs, variables)), compute)
    return call(_WithoutActivation(layer), inputs)


@dataclass
class Run:
    """What one run through the graph records and how it steers the layers."""

    record: frozenset[str] = frozenset()
    relu_rule: str | None = None
    #: rectifiers the relu_rule was applied at (polyviz_keras._guided); none means the rule is refused
    rectifiers: int = 0
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
        from polyviz_keras._guided import NOT_HANDLED, call_with_rule

        out = call_with_rule(layer, run.relu_rule, args, kwargs, pre_activation, is_weighted_with_activation,
                             activation_name)
        if out is not NOT_HANDLED:
            run.rectifiers += 1
            return out
    return call_operation(layer, args, kwargs)


def _takes_training(call: Any) -> bool:
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def call_operation(op: Any, args: tuple, kwargs: dict) -> Any:
    """Call one operation as the model's own inference call does: ``training=False`` for a layer
    whose ``call`` takes a ``training`` argument (Dropout, BatchNormalization, ...)."""
    if "training" not in kwargs and isinstance(op, keras.layers.Layer) and _takes_training(op.call):
        kwargs = {**kwargs, "training": False}
    return op(*args, **kwargs)


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


def _run_graph(graph: Any, inputs: Any, run: Run, prefix: str) -> Any:
    operation_fn = _operation_fn(run, prefix)
    if isinstance(graph, keras.Sequential):
        outputs = inputs
        for layer in graph.layers:
            outputs = operation_fn(layer)(outputs)
        return outputs
    outputs = run_through_graph(graph, inputs, operation_fn)
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        outputs = outputs[0]
    return outputs


def run_model(model: Any, x: tf.Tensor, run: Run) -> tf.Tensor:
    """The model output for ``x`` (logits when ``run.logits`` and the model ends in softmax);
    requested layer outputs land in ``run.recorded``."""
    run.softmax_layer = final_softmax(model)
    graph = graph_of(model)
    if graph is None:  # a subclassed model: its own call, as it is; layers read by name scope
        out = call_operation(model, (x,), {})
        for name in run.record:
            run.recorded[name] = scoped_output(name)
    else:
        out = _run_graph(graph, x, run, "")
    if run.logits and run.logits_tensor is not None:
        out = run.logits_tensor
    target = OUTPUT_TARGET.get()
    if target is not None:  # a structured output or a one-score target (polyviz.targets)
        from polyviz.targets import apply_target

        out = apply_target(target, out, TF_OPS)
    elif isinstance(out, dict | list | tuple):
        raise InputError(
            f"x: the model returned a {type(out).__name__}, not a tensor; say which part to explain: "
            "explain(..., output='key' or index), or a target from polyviz.targets (SegmentationTarget, "
            "DetectionTarget) or a NativeCallable"
        )
    return out


#: The output target of the backend call being traced (:mod:`polyviz.targets`), set by
#: ``KerasBackend._call`` around each compiled call; part of every compiled function's cache key.
OUTPUT_TARGET: contextvars.ContextVar[Any] = contextvars.ContextVar("polyviz_keras_output_target", default=None)


def _tf_ops() -> Any:
    from polyviz.targets import ArrayOps

    return ArrayOps(
        const=lambda a, like: tf.constant(a, dtype=like.dtype),
        sum=lambda t, axis: tf.reduce_sum(t, axis=axis),
        max=lambda t, axis: tf.reduce_max(t, axis=axis),
        minimum=tf.minimum,
        maximum=tf.maximum,
        map_channels_last=lambda t: t,  # Keras maps are channels-last
    )


#: :class:`polyviz.targets.ArrayOps` for TensorFlow tensors.
TF_OPS = _tf_ops()
