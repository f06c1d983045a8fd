"""The :class:`KerasBackend` class. Light: Keras and TensorFlow are imported inside its methods."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import numpy as np

from polyviz.errors import CapabilityError, InputError, LayerError, ModelError
from polyviz.layout import TOKENS, mark_tokens, to_grid
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    OUTPUT,
    Backend,
    Capability,
    ClassScore,
    Gradients,
    LayerGradients,
    LayerInfo,
    MaskSpec,
    Objective,
    Rule,
    check_output_objective,
)

#: Masks per forward batch in :meth:`KerasBackend._masked_scores`.
MASK_BATCH = 32

SUPPORTED = "polyviz drives functional and Sequential Keras 3 models on the TensorFlow backend"

#: What needs a functional graph; refused on subclassed models (see ``KerasBackend.require``).
GRAPH_CAPABILITIES = frozenset({
    Capability.LAYER_MASKED_SCORES, Capability.LAYER_REPLACE, Capability.RELU_RULES, Capability.LRP,
    Capability.DEEPLIFT, Capability.LAYER_WEIGHTS, Capability.REWEIGHT,
})


class KerasBackend(Backend):
    """Keras 3 functional and Sequential models on the TensorFlow backend.

    Layer outputs are reached by running the model's own functional graph with a wrapper around
    each layer (no sub-models, no cloning); gradients come from ``tf.GradientTape`` inside cached
    ``tf.function`` s. ``logits=True`` scores a model that ends in softmax by its pre-softmax logits.

    Threads: calls on one model may overlap freely. Nothing is switched on the model or its layers
    for a call (``training=False`` is passed to each layer, rules act on the traced tensors, a
    fused activation is separated without touching the layer: see
    :func:`polyviz_keras._graph.pre_activation`), so a trace made in one thread never captures
    another call's state. Keras internals are reached only through :mod:`polyviz_keras._internals`.
    """

    name: ClassVar[str] = "keras"
    native_layout: ClassVar[str] = "NHWC"
    extra: ClassVar[str] = "polyviz[keras]"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {
            Capability.FORWARD,
            Capability.INPUT_GRADIENT,
            Capability.LAYER_ACTIVATIONS,
            Capability.LAYER_GRADIENTS,
            Capability.RELU_RULES,
            Capability.MASKED_SCORES,
            Capability.LAYER_MASKED_SCORES,
            Capability.CALLABLE_OBJECTIVE,
            Capability.LAYER_WEIGHTS,
            Capability.BUILD,
            Capability.ZOO,
            Capability.LRP,
            Capability.LAYER_REPLACE,
            Capability.REWEIGHT,
            Capability.DEEPLIFT,
            Capability.OUTPUT_TARGET,
        }
    )

    def __init__(
        self, model: Any, *, preprocess: Preprocess | None = None, logits: bool = True, output: Any = None
    ) -> None:
        options: dict[str, Any] = {"logits": logits}
        if output is not None:  # a structured output or a one-score target: see polyviz.targets
            options["output"] = output
        super().__init__(model, preprocess=preprocess, **options)
        self.logits = bool(logits)
        import keras

        from polyviz_keras._graph import graph_of

        if keras.backend.backend() != "tensorflow":
            raise ModelError(
                f"model: Keras is running on the {keras.backend.backend()!r} backend; {SUPPORTED} "
                "(set KERAS_BACKEND=tensorflow before importing keras)"
            )
        if not isinstance(model, keras.layers.Layer):
            raise ModelError(f"model: a {type(model).__qualname__} is not a Keras model; {SUPPORTED}")
        #: A subclassed (or unbuilt Sequential) model: no graph polyviz can walk (see :meth:`require`).
        self.subclassed = graph_of(model) is None
        if self.subclassed:
            if not model.built:  # building it here would create its weights: a change to the user's model
                raise ModelError(
                    f"model: this {type(model).__qualname__} is not built yet (no weights); call it once on "
                    "an input (model(x)) or model.build(input_shape) before explaining it"
                )
            return
        if len(graph_of(model).inputs) != 1:
            raise ModelError(f"model: polyviz drives models with one image input, this one has {len(graph_of(model).inputs)}")

    def require(self, capability: str) -> None:
        """As :meth:`Backend.require`; a subclassed model (no functional graph) is refused what
        needs its layers, saying exactly what works."""
        if getattr(self, "subclassed", False) and capability in GRAPH_CAPABILITIES:
            raise CapabilityError(
                f"model: a subclassed {type(self.model).__qualname__} has no functional graph, so polyviz can read "
                f"its layers' outputs and gradients but not change them, and {capability!r} needs that (Ablation-"
                "CAM, layer integrated gradients and conductance, ReLU rules, LRP, DeepLIFT). What works: every "
                "method that names no layer (saliency, integrated gradients, SmoothGrad, occlusion, RISE, LIME, "
                "KernelSHAP, ...) and, at a layer named by attribute path (polyviz.summary(model)), Grad-CAM and "
                "its variants, Score-CAM, Eigen-CAM and layer activations. For the others explain a functional "
                "model: keras.Model(inputs, outputs) built with the same layers"
            )
        super().require(capability)

    # ---- identity ---------------------------------------------------------------------------
    @classmethod
    def claims(cls, model: Any) -> bool:
        keras = sys.modules.get("keras")
        if keras is None:
            return False
        try:
            return isinstance(model, keras.Model)
        except Exception:  # a broken or partial keras module
            return False

    @classmethod
    def framework_version(cls) -> str | None:
        try:
            import keras
            import tensorflow as tf
        except ImportError:
            return None
        return f"keras {keras.__version__} / tensorflow {tf.__version__}"

    @property
    def input_shape(self) -> tuple[Any, ...] | None:
        if self.subclassed:
            return None  # a subclassed model declares no input; its call says what it accepts
        shape = self.model.input_shape
        if isinstance(shape, list):
            shape = shape[0]
        return tuple(shape[1:])

    @property
    def output_shape(self) -> tuple[Any, ...]:
        """The shape of the scores the methods see: the model's output, or the part or the one
        score its output target makes of it (:mod:`polyviz.targets`)."""
        from polyviz.targets import SelectOutput, select

        target = self.output_target
        if target is not None and not isinstance(target, SelectOutput):
            return (None, 1)
        if self.subclassed:  # no symbolic output: one forward pass of one sample, cached per size
            return self._subclassed_output_shape()
        if target is not None:
            return tuple(select(self.model.output, target.key).shape)
        shape = self.model.output_shape
        if isinstance(shape, list):
            shape = shape[0]
        return tuple(shape)

    def _subclassed_output_shape(self) -> tuple[Any, ...]:
        size = tuple(self.last_input_shape[1:]) if self.last_input_shape is not None else None
        if size is None:
            raise ModelError("model: a subclassed model's output shape is known only after an input is given")
        cache = self.__dict__.setdefault("_output_shapes", {})
        if size not in cache:
            out = self._forward(np.zeros((1, *size), np.float32))
            cache[size] = (None, *out.shape[1:])
        return cache[size]

    # ---- helpers ----------------------------------------------------------------------------
    def _key(self, *parts: Any) -> tuple:
        return (*parts, self.preprocess, self.logits, self.output_target)

    def _call(self, fn: Any, *args: Any) -> Any:
        """Call a compiled function; TensorFlow runtime errors become InputError naming x."""
        import tensorflow as tf

        from polyviz_keras._graph import OUTPUT_TARGET

        token = OUTPUT_TARGET.set(self.output_target)
        try:
            return fn(*args)
        except InputError as exc:
            original = getattr(exc, "original", None)
            if original is None:
                raise
            raise InputError(str(exc)) from original
        except tf.errors.InvalidArgumentError as exc:
            raise InputError(f"x: the model rejected the input: {exc.message}") from exc
        finally:
            OUTPUT_TARGET.reset(token)

    def _forward_fn(self, x_shape: tuple, record: tuple[str, ...] = ()) -> Any:
        from polyviz_keras._functions import cached, make_forward

        key = self._key("forward", tuple(x_shape[1:]), record)
        return cached(self.model, key, lambda: make_forward(self.model, key, x_shape, self.preprocess, self.logits, record))

    def _static_class_count(self) -> int | None:
        """The class count from the model's static output shape: no forward pass needed."""
        k = self.output_shape[-1]
        return int(k) if isinstance(k, int) and len(self.output_shape) >= 2 else None

    def _out_shape(self, n: int) -> tuple[int, ...]:
        return (n, *self.output_shape[1:])

    # ---- hooks ------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> np.ndarray:
        out, _ = self._call(self._forward_fn(x.shape), x)
        return out.numpy().astype(np.float32, copy=False)

    def _objective_parts(self, x: np.ndarray, objective: Objective) -> tuple[dict[str, np.ndarray], Any, tuple]:
        """The objective checked against the output, as (per-call data arrays, the static part
        that shapes a traced graph, the data's signature for a cache key)."""
        from polyviz_keras._functions import objective_data, objective_static

        n = len(x)
        check_output_objective(objective, self._out_shape(n))
        if objective.layers:
            self._native_layout_only(objective.layers[0], "a layer objective")
        layer_shape = self.layer_info(objective.layers[0]).output_shape if objective.layers else None
        data = objective_data(objective, n, tuple(self.output_shape[1:]), layer_shape)
        signature = tuple(sorted((k, v.shape[1:], str(v.dtype)) for k, v in data.items()))
        return data, objective_static(objective), signature

    def _gradient(self, x: np.ndarray, objective: Objective, rule: Rule, layers: tuple[str, ...]) -> Any:
        from polyviz_keras._functions import cached, make_gradient

        data, static, signature = self._objective_parts(x, objective)
        wrt_layers = bool(layers)
        key = self._key("gradient", tuple(x.shape[1:]), static, layers, rule.relu, signature)
        fn = cached(
            self.model, key,
            lambda: make_gradient(self.model, key, x.shape, data, static, layers, wrt_layers,
                                  self.preprocess, self.logits, rule.relu),
        )
        return self._call(fn, x, data)

    def _deeplift_gradient(self, x: np.ndarray, reference: np.ndarray, objective: Objective) -> Gradients:
        from polyviz_keras._deeplift import make_deeplift
        from polyviz_keras._functions import cached

        data, static, signature = self._objective_parts(x, objective)
        key = self._key("deeplift", tuple(x.shape[1:]), static, signature)
        fn = cached(self.model, key,
                    lambda: make_deeplift(self.model, key, x.shape, data, static, self.preprocess, self.logits))
        values, grad = self._call(fn, x, reference, data)
        return Gradients(values.numpy().astype(np.float32), grad.numpy().astype(np.float32))

    def _input_gradient(self, x: np.ndarray, objective: Objective, rule: Rule) -> Gradients:
        if rule.lrp:
            from polyviz_keras._lrp import lrp_gradient

            return lrp_gradient(self, x, objective, rule)
        values, grad = self._gradient(x, objective, rule, ())
        return Gradients(values.numpy().astype(np.float32), grad.numpy().astype(np.float32))

    def _layer_gradients(self, x: np.ndarray, layers: list[str], objective: Objective, rule: Rule) -> LayerGradients:
        names = tuple(dict.fromkeys(layers))
        values, acts, grads = self._gradient(x, objective, rule, names)
        return LayerGradients(
            values.numpy().astype(np.float32),
            {name: self._grid(name, a.numpy()) for name, a in zip(names, acts)},
            {name: self._grid(name, g.numpy()) for name, g in zip(names, grads)},
        )

    def _replaced_layer_gradients(
        self, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
    ) -> LayerGradients:
        from polyviz_keras._functions import cached, make_replaced

        self._native_layout_only(layer, "replacing its activation (layer integrated gradients, conductance)")

        data, static, signature = self._objective_parts(x, objective)
        key = self._key("replaced", tuple(x.shape[1:]), layer, tuple(activation.shape[1:]), static, signature)
        fn = cached(
            self.model, key,
            lambda: make_replaced(self.model, key, x.shape, activation.shape, data, static, layer,
                                  self.preprocess, self.logits),
        )
        values, grad = self._call(fn, x, activation, data)
        return LayerGradients(values.numpy().astype(np.float32), {layer: activation}, {layer: grad.numpy()})

    def _layer_activations(self, x: np.ndarray, layers: list[str], include_output: bool) -> dict[str, np.ndarray]:
        names = tuple(dict.fromkeys(layers))
        out, acts = self._call(self._forward_fn(x.shape, names), x)
        result = {name: self._grid(name, a.numpy().astype(np.float32, copy=False)) for name, a in zip(names, acts)}
        if include_output:
            result[OUTPUT] = out.numpy().astype(np.float32, copy=False)
        return result

    def _masked_scores(self, x: np.ndarray, masks: MaskSpec, baseline: np.ndarray, sample_index: np.ndarray,
                       objective: ClassScore | None) -> np.ndarray:
        from polyviz_keras._masks import masked_batch

        m = len(masks)
        if objective is not None:
            check_output_objective(objective, self._out_shape(m))
        fn = self._forward_fn(x.shape)
        outs = []
        for start in range(0, m, MASK_BATCH):
            batch = masked_batch(x, masks, baseline, sample_index, start, min(start + MASK_BATCH, m))
            out, _ = self._call(fn, batch)
            outs.append(out.numpy())
        out = np.concatenate(outs) if outs else np.zeros((0, *self.output_shape[1:]), np.float32)
        if objective is None:
            return out
        return out[np.arange(m), objective.targets(m)]

    def _layer_masked_scores(self, x: np.ndarray, layer: str, keep: np.ndarray, sample_index: np.ndarray,
                             objective: ClassScore | None) -> np.ndarray:
        from polyviz_keras._functions import cached, make_scaled_forward

        m = len(keep)
        if objective is not None:
            check_output_objective(objective, self._out_shape(m))
        key = self._key("scaled", tuple(x.shape[1:]), layer)
        fn = cached(self.model, key,
                    lambda: make_scaled_forward(self.model, key, x.shape, self.preprocess, self.logits, layer))
        outs = []
        for start in range(0, m, MASK_BATCH):
            index = sample_index[start : start + MASK_BATCH]
            out = self._call(fn, x[index], keep[start : start + MASK_BATCH])
            outs.append(out.numpy())
        out = np.concatenate(outs)
        if objective is None:
            return out
        return out[np.arange(m), objective.targets(m)]

    def _subclassed_layers(self) -> list[LayerInfo]:
        """The attribute-reachable layers of a subclassed model (:func:`polyviz_keras._graph.attribute_layers`),
        their output shapes read at the current input size from one trace of the model's call (the
        model is not run). No tensor numbers: the default layer uses the fallback rule."""
        import keras
        import tensorflow as tf

        from polyviz_keras._graph import attribute_layers, call_operation, scoped_output

        layers = attribute_layers(self.model)
        shapes: dict[str, tuple[Any, ...]] = {}
        size = tuple(self.last_input_shape[1:]) if self.last_input_shape is not None else None
        if size is not None:
            model = self.model

            def trace(x: Any) -> Any:
                call_operation(model, (tf.cast(x, model.compute_dtype),), {})
                for name, _ in layers:
                    try:
                        shapes[name] = tuple(None if d is None else int(d) for d in scoped_output(name).shape[1:])
                    except LayerError:
                        pass
                return tf.zeros(())

            tf.function(trace, autograph=False).get_concrete_function(tf.TensorSpec((1, *size), tf.float32))
        infos = []
        for name, layer in layers:
            shape = shapes.get(name)
            is_layer = isinstance(layer, keras.layers.Layer)
            params = int(layer.count_params()) if is_layer and layer.built else 0
            layout = "NHWC" if shape is not None and len(shape) == 3 else None
            infos.append(LayerInfo(name, type(layer).__name__, shape, params, is_layer and bool(layer.trainable),
                                   None, layout))
        return mark_tokens(infos)

    def _layers(self) -> list[LayerInfo]:
        import keras

        if self.subclassed:
            return self._subclassed_layers()

        from polyviz_keras._graph import iter_layers, tensor_numbers

        numbers = tensor_numbers(self.model)
        infos = []
        for name, layer in iter_layers(self.model):
            try:
                shape = layer.output.shape
                shape = tuple(None if d is None else int(d) for d in shape[1:])
            except (AttributeError, ValueError, TypeError):
                shape = None
            # a raw op in the graph (``x + y``, keras.ops.*) is an Operation, not a Layer: no weights
            is_layer = isinstance(layer, keras.layers.Layer)
            params = int(layer.count_params()) if is_layer and layer.built else 0
            layout = None
            if shape is not None and len(shape) == 3:  # Keras declares its maps' layout: data_format
                layout = "NCHW" if getattr(layer, "data_format", None) == "channels_first" else "NHWC"
                if layout == "NCHW":
                    shape = (shape[1], shape[2], shape[0])
            infos.append(LayerInfo(name, type(layer).__name__, shape, params, is_layer and bool(layer.trainable),
                                   numbers.get(name), layout))
        return mark_tokens(infos)

    def _native_layout_only(self, name: str, what: str) -> None:
        """Refuse ``what`` on a token-grid or channels-first layer (not implemented on Keras)."""
        info = self.layer_info(name)
        if info.layout not in (None, "NHWC"):
            kind = "a token sequence shown as a grid" if info.layout == TOKENS else "channels-first"
            raise LayerError(
                f"layer: {name!r} is {kind}; {what} is not supported there on Keras yet. CAMs, layer "
                "activations and layer gradients are; or choose a channels-last map layer"
            )

    def _grid(self, name: str, a: np.ndarray) -> np.ndarray:
        """A layer output as layer methods see it (see :func:`polyviz.layout.to_grid`): token
        sequences as their patch grid, channels-first maps channels-last."""
        info = self.layer_info(name)
        if info.layout is None or info.layout == "NHWC":
            return a
        return np.ascontiguousarray(to_grid(a, info.layout, info.prefix, tuple(info.output_shape), np.transpose))

    def _with_weights(self, weights: dict[str, dict[str, np.ndarray]]) -> Backend:
        from polyviz_keras._reweight import reweighted_copy

        clone = reweighted_copy(self.model, weights)
        backend = type(self)(clone, preprocess=self.preprocess, logits=self.logits, output=self.output_target)
        backend._owned_model = clone  # the backend holds its model weakly: keep the copy alive with it
        backend.last_input_shape = self.last_input_shape
        return backend

    def _layer_weights(self, name: str) -> dict[str, np.ndarray]:
        from polyviz_keras._graph import iter_layers

        layer = dict(iter_layers(self.model))[name]
        out: dict[str, np.ndarray] = {}
        for var in layer.weights:
            key = var.path.rsplit("/", 1)[-1] if "/" in var.path else var.name
            if key in out:
                raise LayerError(f"layer: {name!r} has two weights named {key!r}")
            out[key] = np.array(var.numpy())
        return out

    def _layer_config(self, name: str) -> dict[str, Any]:
        from polyviz_keras._config import layer_config
        from polyviz_keras._graph import iter_layers

        return layer_config(dict(iter_layers(self.model))[name])

    # ---- building, conversion, zoo, safety -----------------------------------------------------
    @classmethod
    def build(cls, spec: Any, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, str]]:
        from polyviz_keras._build import build

        return build(spec, weights)

    @classmethod
    def export(
        cls, model: Any, *, input_shape: tuple[int, int, int] | None = None
    ) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, str]]:
        """Read a VGG-style Keras model as (NetworkSpec, canonical weights, names); ``input_shape``
        is accepted for symmetry with torch and unused (a Keras model records its input shape)."""
        from polyviz_keras._build import export

        return export(model)

    @classmethod
    def float64_copy(cls, model: Any) -> Any:
        """``model`` rebuilt in float64 (a new model; the user's is untouched), for the float32
        noise floor of ``polyviz crosscheck`` (see ``polyviz_keras._build.float64_copy``)."""
        from polyviz_keras._build import float64_copy

        return float64_copy(model)

    @classmethod
    def seeded_model(cls, name: str, seed: int = 0, input_shape: tuple[int, int, int] = (224, 224, 3)) -> Any:
        """keras.applications' ``name`` (resnet50, mobilenet_v2, efficientnet_b0, densenet121) with
        numpy-drawn weights and BatchNorm statistics (``polyviz_keras._seeded``)."""
        from polyviz_keras._seeded import seeded_model

        return seeded_model(name, seed, input_shape)

    @classmethod
    def vgg(cls, name: str, weights: Any = None) -> Any:
        from polyviz_keras._zoo import vgg

        return vgg(name, weights)

    @classmethod
    def load_model(cls, source: Any, weights: Any = None) -> Any:
        """A model saved with ``model.save(path)`` (``.keras``, legacy ``.h5``)."""
        from polyviz_keras._load import load_model

        return load_model(source, weights)

    @classmethod
    def state_fingerprint(cls, model: Any) -> dict[str, Any]:
        from polyviz_keras._build import state_fingerprint

        return state_fingerprint(model)

    def peer_benchmarks(self, model: Any, x: np.ndarray, target: np.ndarray, layer: str, batch: int = 32) -> dict:
        """The same methods in the peer libraries, for ``polyviz bench --peers`` (see ``_peers``)."""
        from polyviz_keras._peers import peer_benchmarks

        return peer_benchmarks(model, x, target, layer, batch)
