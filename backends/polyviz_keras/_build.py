"""Keras models from a :class:`polyviz.models.spec.NetworkSpec`, VGG-style models back to a spec,
and the state fingerprint used by the safety tests."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from polyviz.errors import ModelError
from polyviz.models.graph import GraphSpec
from polyviz.models.spec import LayerSpec, NetworkSpec, _pair, output_shapes
from polyviz_keras._graph import graph_of, iter_layers
from polyviz_keras._internals import call_count


def _conv(layer: LayerSpec, x: Any) -> Any:
    cfg = layer.config
    padding = cfg.get("padding", "valid")
    if not isinstance(padding, str):
        x = keras.layers.ZeroPadding2D(_pair(padding), name=f"{layer.name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        int(cfg["filters"]), _pair(cfg["kernel_size"]), strides=_pair(cfg.get("strides", 1)), padding=padding,
        activation=cfg.get("activation"), use_bias=cfg.get("use_bias", True), name=layer.name,
    )(x)


def build(spec: NetworkSpec | GraphSpec, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, str]]:
    """A functional Keras model for ``spec`` with canonical ``weights`` set directly (a
    :class:`~polyviz.models.graph.GraphSpec` through ``polyviz_keras._kgraph.build_graph``)."""
    if isinstance(spec, GraphSpec):
        from polyviz_keras._kgraph import build_graph

        return build_graph(spec, weights)
    inputs = keras.Input(shape=tuple(spec.input_shape), name="input")
    x = inputs
    names: dict[str, str] = {}
    shapes = [tuple(spec.input_shape), *output_shapes(spec)]
    for i, layer in enumerate(spec.layers):
        cfg = layer.config
        kind = layer.kind
        if kind == "conv2d":
            x = _conv(layer, x)
        elif kind == "relu":
            x = keras.layers.ReLU(name=layer.name)(x)
        elif kind in ("maxpool2d", "avgpool2d"):
            pool = keras.layers.MaxPooling2D if kind == "maxpool2d" else keras.layers.AveragePooling2D
            size = _pair(cfg.get("pool_size", 2))
            x = pool(size, strides=_pair(cfg.get("strides", size)), name=layer.name)(x)
        elif kind == "adaptive_avgpool2d":
            if tuple(shapes[i][:2]) != _pair(cfg["output_size"]):
                raise ModelError(
                    f"spec: adaptive_avgpool2d {layer.name!r} maps {shapes[i][:2]} to {cfg['output_size']}; the "
                    "Keras builder supports it only as an identity (input already of the output size)"
                )
            continue
        elif kind == "global_avgpool":
            x = keras.layers.GlobalAveragePooling2D(name=layer.name)(x)
        elif kind == "flatten":
            x = keras.layers.Flatten(name=layer.name)(x)
        elif kind == "dense":
            x = keras.layers.Dense(int(cfg["units"]), activation=cfg.get("activation"),
                                   use_bias=cfg.get("use_bias", True), name=layer.name)(x)
        elif kind == "dropout":
            x = keras.layers.Dropout(float(cfg.get("rate", 0.5)), name=layer.name)(x)
        elif kind == "softmax":
            x = keras.layers.Softmax(name=layer.name)(x)
        else:  # pragma: no cover - LayerSpec validates kinds
            raise ModelError(f"spec: unsupported layer kind {kind!r}")
        names[layer.name] = layer.name
    model = keras.Model(inputs, x, name="polyviz_net")
    for name, values in (weights or {}).items():
        keras_layer = model.get_layer(names.get(name, name))
        order = ["kernel", "bias"]
        keras_layer.set_weights([np.asarray(values[k], np.float32) for k in order if k in values])
    return model, names


def _activation(layer: Any) -> str | None:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None)
    if name in (None, "linear"):
        return None
    if name not in ("relu", "softmax"):
        raise ModelError(f"model: layer {layer.name!r} has activation {name!r}; export supports relu, softmax")
    return name


def export(model: Any) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """A VGG-style chain as a :class:`NetworkSpec` (:func:`export_chain`), any other functional
    model as a :class:`~polyviz.models.graph.GraphSpec` (``polyviz_keras._kgraph.export_graph``; its
    names are {layer name: node}). A model neither reader takes gets the graph reader's refusal."""
    try:
        return export_chain(model)
    except ModelError:
        pass
    from polyviz_keras._kgraph import export_graph

    return export_graph(model)


def export_chain(model: Any) -> tuple[NetworkSpec, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """A sequential VGG-style Keras model as (spec, canonical weights, {spec name: keras name})."""
    graph = graph_of(model)
    if graph is None:
        raise ModelError("model: export needs a functional or Sequential Keras model")
    input_shape = tuple(int(d) for d in graph.inputs[0].shape[1:])
    layers: list[LayerSpec] = []
    weights: dict[str, dict[str, np.ndarray]] = {}
    names: dict[str, str] = {}
    pending_pad: tuple[int, int] | None = None
    for name, layer in iter_layers(model):
        cls = type(layer).__name__
        spec: LayerSpec | None = None
        if isinstance(layer, keras.layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            if top != bottom or left != right:
                raise ModelError(f"model: layer {name!r} pads asymmetrically; export supports symmetric padding")
            pending_pad = (int(top), int(left))
            continue
        if isinstance(layer, keras.layers.Conv2D) and cls == "Conv2D":
            if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
                raise ModelError(f"model: layer {name!r} (Conv2D) uses dilation, groups or channels_first")
            padding: Any = layer.padding
            if pending_pad is not None:
                if padding != "valid":
                    raise ModelError(f"model: layer {name!r} follows ZeroPadding2D with padding {padding!r}")
                padding, pending_pad = pending_pad, None
            spec = LayerSpec("conv2d", name, {
                "filters": int(layer.filters), "kernel_size": tuple(layer.kernel_size), "strides": tuple(layer.strides),
                "padding": padding, "activation": _activation(layer), "use_bias": bool(layer.use_bias)})
        elif pending_pad is not None:
            raise ModelError(f"model: ZeroPadding2D before {name!r} ({cls}) is not followed by a Conv2D")
        elif isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D):
            if layer.padding != "valid":
                raise ModelError(f"model: layer {name!r} ({cls}) uses padding {layer.padding!r}; export supports 'valid'")
            kind = "maxpool2d" if isinstance(layer, keras.layers.MaxPooling2D) else "avgpool2d"
            spec = LayerSpec(kind, name, {"pool_size": tuple(layer.pool_size), "strides": tuple(layer.strides)})
        elif isinstance(layer, keras.layers.GlobalAveragePooling2D) and not layer.keepdims:
            spec = LayerSpec("global_avgpool", name)
        elif isinstance(layer, keras.layers.Flatten):
            spec = LayerSpec("flatten", name)
        elif isinstance(layer, keras.layers.Dense) and cls == "Dense":
            spec = LayerSpec("dense", name, {"units": int(layer.units), "activation": _activation(layer),
                                             "use_bias": bool(layer.use_bias)})
        elif isinstance(layer, keras.layers.Dropout):
            spec = LayerSpec("dropout", name, {"rate": float(layer.rate)})
        elif isinstance(layer, keras.layers.ReLU) or (
            isinstance(layer, keras.layers.Activation) and _activation(layer) == "relu"
        ):
            if isinstance(layer, keras.layers.ReLU) and not (
                layer.max_value is None and float(layer.negative_slope) == 0 and float(layer.threshold) == 0
            ):
                raise ModelError(f"model: layer {name!r} is a parametrised ReLU; export supports plain ReLU")
            spec = LayerSpec("relu", name)
        elif isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation) and _activation(layer) == "softmax"
        ):
            spec = LayerSpec("softmax", name)
        else:
            raise ModelError(f"model: layer {name!r} ({cls}) is not supported by export (VGG-style models only)")
        if call_count(layer) != 1:
            raise ModelError(f"model: layer {name!r} is used {call_count(layer)} times; export needs a chain")
        layers.append(spec)
        names[spec.name] = name
        if spec.has_weights:
            weights[spec.name] = {
                "kernel": np.array(layer.kernel.numpy(), np.float32),
                **({"bias": np.array(layer.bias.numpy(), np.float32)} if layer.use_bias else {}),
            }
    return NetworkSpec(input_shape, tuple(layers)), weights, names


def state_fingerprint(model: Any) -> dict[str, Any]:
    """Every weight, activation function, trainable flag and dtype policy of ``model``."""
    fp: dict[str, Any] = {"dtype_policy": str(keras.config.dtype_policy().name),
                          "model.trainable": bool(model.trainable)}
    for var in model.variables:
        fp[f"var:{var.path}"] = np.array(var.numpy())
        fp[f"var:{var.path}:trainable"] = bool(var.trainable)
    for name, layer in iter_layers(model):
        if not isinstance(layer, keras.layers.Layer):  # a raw op (x + y, keras.ops.*): no state
            continue
        fp[f"layer:{name}:trainable"] = bool(layer.trainable)
        fp[f"layer:{name}:dtype_policy"] = str(layer.dtype_policy.name)
        if hasattr(layer, "activation"):
            fp[f"layer:{name}:activation"] = layer.activation
        for attr in ("_called", "built"):
            if hasattr(layer, attr):
                fp[f"layer:{name}:{attr}"] = bool(getattr(layer, attr))
    return fp


def _float64_config(config: Any) -> Any:
    """``config`` with every dtype policy (a Keras 3 ``DTypePolicy`` entry or a plain dtype name
    under a ``dtype`` key) set to float64."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(config.get("config"), dict):
            return {**config, "config": {**config["config"], "name": "float64"}}
        out = {k: _float64_config(v) for k, v in config.items()}
        if isinstance(out.get("dtype"), str) and out["dtype"].startswith(("float", "mixed")):
            out["dtype"] = "float64"
        return out
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    return config


def float64_copy(model: Any) -> Any:
    """A new functional or Sequential model with ``model``'s architecture and weights in float64
    (the model itself untouched): rebuilt from its config with every dtype policy set to float64,
    under a float64 ``floatx`` and global policy (restored on exit), weights cast up exactly."""
    if not isinstance(model, keras.Model) or graph_of(model) is None:
        raise ModelError(f"model: a float64 copy needs a functional or Sequential Keras model, got {type(model).__name__}")
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        copy = model.__class__.from_config(_float64_config(model.get_config()))
    except Exception as exc:  # noqa: BLE001 - any rebuild failure is one clear refusal
        raise ModelError(f"model: cannot rebuild {model.name!r} in float64 from its config ({type(exc).__name__})") from exc
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    copy.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    for layer in copy.layers:  # an adapted Normalization computes from its state only once finalised
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            layer.finalize_state()
    return copy
