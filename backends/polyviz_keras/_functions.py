"""Compiled TensorFlow functions, cached weakly per model and per static request.

Each function is traced once per (model, kind, static objective parts, rule, preprocessing) with an
``input_signature`` whose batch axis is None, so new targets, weights or batch sizes reuse it. The
traced Python function reaches the model only through a weak reference.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import tensorflow as tf

from polyviz.errors import InputError, PolyvizError
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    ChannelMean,
    ClassScore,
    LayerDistance,
    LayerNorm,
    NativeCallable,
    Neuron,
    OutputWeighting,
)
from polyviz_keras._graph import Run, run_model

#: model -> {static key -> tf.function}; entries die with the model.
_CACHE: weakref.WeakKeyDictionary[Any, dict[Hashable, Callable[..., Any]]] = weakref.WeakKeyDictionary()
#: Number of Python traces per function kind ("forward", "gradient", "scaled"), for tests:
#: repeated calls must not retrace.
TRACES: dict[str, int] = {}


def cached(model: Any, key: Hashable, make: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """The compiled function for ``key`` on ``model``, made by ``make()`` the first time."""
    per_model = _CACHE.setdefault(model, {})
    fn = per_model.get(key)
    if fn is None:
        fn = per_model[key] = make()
    return fn


def count_trace(key: Hashable) -> None:
    """Count one Python trace of a function whose static key is ``key``."""
    kind = str(key[0]) if isinstance(key, tuple) and key else str(key)
    TRACES[kind] = TRACES.get(kind, 0) + 1


def compute_dtype(model: Any) -> tf.DType:
    """The floating dtype the model computes in (``keras.config.set_floatx("float64")`` at build
    time gives float64); float32 when the model declares none or a non-floating one."""
    try:
        dtype = tf.as_dtype(getattr(model, "compute_dtype", None) or tf.float32)
    except TypeError:
        return tf.float32
    return dtype if dtype.is_floating else tf.float32


def float32(t: tf.Tensor) -> tf.Tensor:
    """``t`` as float32 for the protocol's numpy results (``tf.cast`` is the identity on float32)."""
    return tf.cast(t, tf.float32) if t.dtype.is_floating else t


def preprocess_tf(x: tf.Tensor, pre: Preprocess | None) -> tf.Tensor:
    """``Preprocess.apply`` in TensorFlow, differentiable, in ``x``'s dtype."""
    if pre is None:
        return x
    x = x * tf.constant(pre.scale, x.dtype)
    if pre.channel_order == "BGR":
        x = tf.reverse(x, axis=[-1])
    mean, std = pre.arrays(int(x.shape[-1]))
    return (x - tf.constant(mean, x.dtype)) / tf.constant(std, x.dtype)


def forward_through(model_ref: weakref.ref, x: tf.Tensor, run: Run, pre: Preprocess | None) -> tf.Tensor:
    """Preprocess and run the model; a model error becomes an InputError naming ``x``.

    The float32 input is cast to the model's compute dtype first (inside the graph, so that
    gradients flow back to the float32 input; no op at all for a float32 model), and preprocessed
    in that dtype: a float64 model sees the caller's image exactly."""
    model = model_ref()
    if model is None:
        raise InputError("model: the model has been garbage collected")
    try:
        return run_model(model, preprocess_tf(tf.cast(x, compute_dtype(model)), pre), run)
    except PolyvizError:
        raise
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        error = InputError(f"x: the model rejected an input of shape {tuple(x.shape)}: {message}")
        error.original = exc  # tf.function drops __cause__; KerasBackend re-chains it
        raise error from exc


# ---- objectives ---------------------------------------------------------------------------------


def objective_static(objective: Any) -> Hashable:
    """The parts of an objective that shape the traced graph (per-call data is excluded)."""
    if isinstance(objective, Neuron):
        return ("Neuron", objective.layer, tuple(int(i) for i in objective.index))
    if isinstance(objective, LayerNorm):
        channels = None if objective.channels is None else tuple(int(c) for c in objective.channels)
        return ("LayerNorm", objective.layer, channels)
    if isinstance(objective, NativeCallable):
        return ("NativeCallable", objective.fn)
    if isinstance(objective, ChannelMean | LayerDistance):
        return (type(objective).__name__, objective.layer)
    return (type(objective).__name__,)


def objective_data(objective: Any, n: int, out_shape: tuple, layer_shape: tuple | None) -> dict[str, np.ndarray]:
    """The per-call arrays of an objective, with the batch axis first."""
    if isinstance(objective, ClassScore):
        return {"targets": objective.targets(n)}
    if isinstance(objective, OutputWeighting):
        w = np.asarray(objective.weights, np.float32)
        return {"weights": np.ascontiguousarray(np.broadcast_to(w, (n, *out_shape)))}
    if isinstance(objective, ChannelMean):
        return {"channels": objective.channels(n)}
    if isinstance(objective, LayerDistance):
        ref = np.asarray(objective.reference, np.float32)
        if layer_shape is None or ref.ndim == len(layer_shape):
            ref = np.broadcast_to(ref, (n, *ref.shape))
        return {"reference": np.ascontiguousarray(ref)}
    return {}


def data_signature(data: dict[str, np.ndarray]) -> dict[str, tf.TensorSpec]:
    return {k: tf.TensorSpec((None, *v.shape[1:]), tf.as_dtype(v.dtype)) for k, v in data.items()}


def _per_sample_sum(t: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def evaluate(objective_key: Hashable, out: tf.Tensor, acts: dict[str, tf.Tensor], data: dict[str, tf.Tensor]) -> tf.Tensor:
    """One value per sample for the objective described by ``objective_key`` and ``data``."""
    kind = objective_key[0]
    if kind == "ClassScore":
        flat = tf.reshape(out, [tf.shape(out)[0], -1])
        return tf.gather(flat, data["targets"][:, None], batch_dims=1)[:, 0]
    if kind == "OutputWeighting":
        return _per_sample_sum(out * tf.cast(data["weights"], out.dtype))
    if kind == "NativeCallable":
        return objective_key[1](out)
    a = acts[objective_key[1]]
    if kind == "ChannelMean":
        if a.shape.rank > 2:
            a = tf.reduce_mean(a, axis=list(range(1, a.shape.rank - 1)))
        return tf.gather(a, data["channels"][:, None], batch_dims=1)[:, 0]
    if kind == "Neuron":
        return a[(slice(None), *objective_key[2])]
    if kind == "LayerNorm":
        if objective_key[2] is not None:
            a = tf.gather(a, list(objective_key[2]), axis=-1)
        return tf.reduce_mean(tf.reshape(tf.square(a), [tf.shape(a)[0], -1]), axis=1)
    if kind == "LayerDistance":
        return _per_sample_sum(tf.square(a - tf.cast(data["reference"], a.dtype)))
    raise InputError(f"objective: unsupported objective kind {kind}")


# ---- the compiled functions ------------------------------------------------------------------------


def x_signature(x_shape: tuple) -> tf.TensorSpec:
    return tf.TensorSpec((None, *x_shape[1:]), tf.float32)


def make_forward(model: Any, key: Hashable, x_shape: tuple, pre: Preprocess | None, logits: bool,
                 record: tuple[str, ...] = ()) -> Callable[..., Any]:
    """x -> (output, [activations of ``record``])."""
    ref = weakref.ref(model)

    @tf.function(input_signature=[x_signature(x_shape)], autograph=False)
    def forward(x: tf.Tensor) -> Any:
        count_trace(key)
        run = Run(record=frozenset(record), logits=logits)
        out = forward_through(ref, x, run, pre)
        return float32(out), [float32(run.recorded[name]) for name in record]

    return forward


def make_scaled_forward(model: Any, key: Hashable, x_shape: tuple, pre: Preprocess | None, logits: bool,
                        layer: str) -> Callable[..., Any]:
    """(x, keep (N, C)) -> output with ``layer``'s channels scaled by ``keep``."""
    ref = weakref.ref(model)

    @tf.function(input_signature=[x_signature(x_shape), tf.TensorSpec((None, None), tf.float32)], autograph=False)
    def forward(x: tf.Tensor, keep: tf.Tensor) -> Any:
        count_trace(key)
        run = Run(logits=logits, scale={layer: keep})
        return float32(forward_through(ref, x, run, pre))

    return forward


def make_gradient(model: Any, key: Hashable, x_shape: tuple, data: dict[str, np.ndarray], objective_key: Hashable,
                  layers: tuple[str, ...], wrt_layers: bool, pre: Preprocess | None, logits: bool,
                  relu_rule: str | None) -> Callable[..., Any]:
    """(x, data) -> (values, gradient w.r.t. x) or (values, activations, gradients w.r.t. layers)."""
    ref = weakref.ref(model)
    objective_layers = tuple(objective_key[1:2]) if objective_key[0] in (
        "ChannelMean", "Neuron", "LayerNorm", "LayerDistance") else ()
    record = tuple(dict.fromkeys(layers + objective_layers))

    @tf.function(input_signature=[x_signature(x_shape), data_signature(data)], autograph=False)
    def gradient(x: tf.Tensor, data: dict[str, tf.Tensor]) -> Any:
        count_trace(key)
        run = Run(record=frozenset(record), logits=logits, relu_rule=relu_rule)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            out = forward_through(ref, x, run, pre)
            values = evaluate(objective_key, out, run.recorded, data)
            total = tf.reduce_sum(values)
        if relu_rule is not None and run.rectifiers == 0:
            from polyviz_keras._guided import refuse

            raise refuse(relu_rule, "the forward pass met no rectifier, so the result would be the plain gradient")
        if wrt_layers:
            acts = [run.recorded[name] for name in layers]
            grads = tape.gradient(total, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return float32(values), [float32(a) for a in acts], [float32(g) for g in grads]
        return float32(values), tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return gradient


def make_replaced(model: Any, key: Hashable, x_shape: tuple, act_shape: tuple, data: dict[str, np.ndarray],
                  objective_key: Hashable, layer: str, pre: Preprocess | None, logits: bool) -> Callable[..., Any]:
    """(x, activation, data) -> (values, d values / d activation): the forward runs on x with
    ``layer``'s output replaced by ``activation`` (the layer itself is skipped); only the
    activation is watched, so nothing below the layer is differentiated."""
    ref = weakref.ref(model)
    act_spec = tf.TensorSpec((None, *act_shape[1:]), tf.float32)

    @tf.function(input_signature=[x_signature(x_shape), act_spec, data_signature(data)], autograph=False)
    def replaced(x: tf.Tensor, activation: tf.Tensor, data: dict[str, tf.Tensor]) -> Any:
        count_trace(key)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(activation)
            stand_in = tf.cast(activation, compute_dtype(ref()))
            run = Run(record=frozenset({layer}), logits=logits, replace={layer: stand_in})
            out = forward_through(ref, x, run, pre)
            values = evaluate(objective_key, out, run.recorded, data)
            total = tf.reduce_sum(values)
        grad = tape.gradient(total, activation, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return float32(values), float32(grad)

    return replaced
