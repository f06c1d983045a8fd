"""GraphSpec <-> Keras: read a functional model's layer graph as a :class:`GraphSpec`, and build one
as a functional model whose layers are named as the nodes.

Reading walks ``model.operations`` (execution order) and each layer's single inbound node; static
shapes turn ``padding="same"`` into explicit numbers. A layer with a fused activation (a
``Conv2D(activation="swish")``, the ``Dense`` softmax head) becomes two nodes, ``<name>`` and
``<name>_act``, and the Keras layer name maps to the second (its output). The preprocessing layers
inside keras.applications models (``Rescaling``, ``Normalization``) are nodes like any other, so
they travel as the converted model's leading operations.
"""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np

from polyviz.errors import ModelError
from polyviz.models.graph import NONNEGATIVE, GraphSpec, Node, pads, same_pads
from polyviz_keras._graph import graph_of
from polyviz_keras._internals import call_count, producer_of

__all__ = ["build_graph", "export_graph"]

_KERAS_ACTS = {"relu": "relu", "relu6": "relu6", "hard_silu": "hardswish", "hard_swish": "hardswish",
               "hard_sigmoid": "hardsigmoid", "silu": "silu", "swish": "silu", "sigmoid": "sigmoid",
               "softmax": "softmax", "linear": "linear"}
_SPEC_ACTS = {"relu": "relu", "relu6": "relu6", "hardswish": "hard_silu", "hardsigmoid": "hard_sigmoid",
              "silu": "silu", "sigmoid": "sigmoid", "softmax": "softmax", "linear": "linear", "gelu": "gelu"}


# ---- reading --------------------------------------------------------------------------------------
def _act_name(layer: Any) -> str:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    if name == "gelu":
        return "gelu"  # keras.activations.gelu defaults to the exact (erf) form
    if name not in _KERAS_ACTS:
        raise ModelError(f"model: layer {layer.name!r} uses activation {name!r}, which has no equivalent in the "
                         f"conversion graph (supported: {sorted(_KERAS_ACTS)}, gelu)")
    return _KERAS_ACTS[name]


def _np(v: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(v))


def export_graph(model: Any) -> tuple[GraphSpec, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Read a functional Keras model as (GraphSpec, canonical weights, {layer name: node name})."""
    graph = graph_of(model)
    if graph is None:
        raise ModelError("model: conversion reads functional or Sequential Keras models (not subclassed ones)")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelError("model: it has several inputs or outputs; graphs have exactly one of each")
    shape = tuple(graph.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise ModelError(f"model: its input shape {shape} is not a fixed (H, W, C); build it with a fixed input_shape")
    ops = graph.layers if isinstance(graph, keras.Sequential) else graph.operations
    input_name = "input"
    out_of: dict[int, str] = {}  # id(layer) -> node name of its output
    nodes: list[Node] = []
    weights: dict[str, dict[str, np.ndarray]] = {}
    names: dict[str, str] = {}
    previous = input_name
    for layer in ops:
        if isinstance(layer, keras.layers.InputLayer):
            out_of[id(layer)] = input_name
            continue
        if isinstance(layer, keras.Model):
            raise ModelError(f"model: layer {layer.name!r} is a nested model; flatten it into one functional graph first")
        if call_count(layer) != 1:
            raise ModelError(f"model: layer {layer.name!r} is shared (called {call_count(layer)} times); a graph node "
                             "computes once")
        if isinstance(graph, keras.Sequential):
            inputs = [previous]
        else:
            tensors = keras.tree.flatten(layer._inbound_nodes[0].input_tensors)
            inputs = []
            for t in tensors:
                producer = producer_of(t)
                if producer is None or id(producer) not in out_of:
                    raise ModelError(f"model: layer {layer.name!r} reads a tensor from outside the layer graph")
                inputs.append(out_of[id(producer)])
        in_shape = tuple(layer.input.shape[1:]) if len(inputs) == 1 else None
        new, w = _read_layer(layer, inputs, in_shape)
        nodes.extend(new)
        if w:
            weights[new[0].name] = w
        out_of[id(layer)] = new[-1].name
        names[layer.name] = new[-1].name
        previous = new[-1].name
    output = out_of.get(id(producer_of(graph.outputs[0])), previous)
    return GraphSpec(shape, tuple(nodes), output, input_name), weights, names


def _read_layer(layer: Any, inputs: list[str], in_shape: tuple[int, ...] | None) -> tuple[list[Node], dict[str, np.ndarray]]:
    name, cls = layer.name, type(layer).__name__
    L = keras.layers
    ins = tuple(inputs)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ModelError(f"model: layer {name!r} ({cls}) is channels_first; conversion reads channels_last models")
    if cls in ("Conv2D", "DepthwiseConv2D"):
        k, s, d = tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)
        p = same_pads(in_shape[:2], k, s, d) if layer.padding == "same" else pads(0)
        kernel = _np(layer.kernel)
        if cls == "DepthwiseConv2D":
            cin, mult = kernel.shape[2], kernel.shape[3]
            kernel, groups, filters = kernel.reshape(k[0], k[1], 1, cin * mult), cin, cin * mult
        else:
            groups, filters = int(layer.groups), int(layer.filters)
        w = {"kernel": kernel, **({"bias": _np(layer.bias)} if layer.use_bias else {})}
        conv = Node("conv2d", name, ins, {"filters": filters, "kernel_size": k, "strides": s, "padding": p,
                                          "dilation": d, "groups": groups, "use_bias": bool(layer.use_bias)})
        return _with_act(layer, conv), w
    if cls == "Dense":
        w = {"kernel": _np(layer.kernel), **({"bias": _np(layer.bias)} if layer.use_bias else {})}
        return _with_act(layer, Node("dense", name, ins, {"units": int(layer.units), "use_bias": bool(layer.use_bias)})), w
    if cls == "BatchNormalization":
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        if axis not in (-1, len(in_shape)):
            raise ModelError(f"model: layer {name!r} (BatchNormalization) normalises axis {axis}; conversion needs channels")
        c = in_shape[-1]
        w = {"gamma": _np(layer.gamma) if layer.scale else np.ones(c), "beta": _np(layer.beta) if layer.center else np.zeros(c),
             "mean": _np(layer.moving_mean), "variance": _np(layer.moving_variance)}
        return [Node("batchnorm", name, ins, {"epsilon": float(layer.epsilon), "center": True, "scale": True})], w
    if cls == "Activation":
        return [Node("act", name, ins, {"fn": _act_name(layer)})], {}
    if cls == "ReLU":
        slope, thr, mx = float(layer.negative_slope), float(layer.threshold), layer.max_value
        if slope != 0 or thr != 0 or (mx is not None and float(mx) != 6.0):
            raise ModelError(f"model: layer {name!r} is a parametrised ReLU (slope, threshold or max {mx}); conversion "
                             "supports ReLU and ReLU6")
        return [Node("act", name, ins, {"fn": "relu" if mx is None else "relu6"})], {}
    if cls == "Softmax":
        return [Node("act", name, ins, {"fn": "softmax"})], {}
    if cls == "ZeroPadding2D":
        return [Node("zeropad", name, ins, {"padding": pads(layer.padding)})], {}
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        k, s = tuple(layer.pool_size), tuple(layer.strides)
        p = same_pads(in_shape[:2], k, s) if layer.padding == "same" else pads(0)
        if cls == "AveragePooling2D" and p != pads(0):
            raise ModelError(f"model: layer {name!r} (AveragePooling2D, 'same') averages over the valid pixels only, "
                             "which torch's padded average pooling does not")
        return [Node("maxpool" if cls == "MaxPooling2D" else "avgpool", name, ins,
                     {"pool_size": k, "strides": s, "padding": p})], {}
    if cls == "GlobalAveragePooling2D":
        return [Node("global_avgpool", name, ins, {"keepdims": bool(layer.keepdims)})], {}
    if cls == "Reshape":
        target = tuple(layer.target_shape)
        if not ((len(in_shape) == 1 and target == (1, 1, in_shape[0])) or (in_shape[:2] == (1, 1) and target == (in_shape[2],))):
            raise ModelError(f"model: layer {name!r} reshapes {in_shape} to {target}; conversion reshapes only between "
                             "(C,) and (1, 1, C) (tensor layouts differ between frameworks)")
        return [Node("reshape", name, ins, {"target": target})], {}
    if cls == "Flatten":
        hwc = in_shape if len(in_shape) == 3 else (1, 1, int(np.prod(in_shape)))
        return [Node("flatten", name, ins, {"input_shape": tuple(int(v) for v in hwc)})], {}
    if cls in ("Add", "Multiply"):
        return [Node(cls.lower(), name, ins)], {}
    if cls == "Concatenate":
        if layer.axis not in (-1, 3):
            raise ModelError(f"model: layer {name!r} concatenates along axis {layer.axis}; graphs concatenate channels only")
        return [Node("concat", name, ins)], {}
    if cls == "Rescaling":
        scale, offset = layer.scale, layer.offset
        tolist = lambda v: [float(x) for x in np.ravel(v)] if np.ndim(v) else float(v)  # noqa: E731
        return [Node("rescale", name, ins, {"scale": tolist(scale), "offset": tolist(offset)})], {}
    if cls == "Normalization":
        if layer.invert or tuple(layer.axis) not in ((-1,), (3,)):
            raise ModelError(f"model: layer {name!r} (Normalization) inverts or normalises axis {layer.axis}; conversion "
                             "supports per-channel normalisation")
        c = in_shape[-1]
        w = {"mean": np.broadcast_to(_np(layer.mean).reshape(-1), (c,)).copy(),
             "variance": np.broadcast_to(_np(layer.variance).reshape(-1), (c,)).copy()}
        return [Node("normalize", name, ins, {"epsilon": float(keras.backend.epsilon())})], w
    if isinstance(layer, L.Dropout | L.SpatialDropout2D | L.GaussianDropout | L.GaussianNoise):
        return [Node("dropout", name, ins, {"rate": float(getattr(layer, "rate", 0.0))})], {}
    raise ModelError(f"model: layer {name!r} ({cls}) has no equivalent in the conversion graph")


def _with_act(layer: Any, node: Node) -> list[Node]:
    act = _act_name(layer)
    if act == "linear":
        return [node]
    return [node, Node("act", f"{node.name}_act", (node.name,), {"fn": act})]


# ---- building -------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def build_graph(spec: GraphSpec, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, str]]:
    """``spec`` as a functional Keras model; layers are named as the nodes, a padding the Keras
    layer cannot express is a ``ZeroPadding2D`` named ``<node>_pad`` before it. Returns the model
    and {node: layer name}."""
    weights = weights or {}
    inputs = keras.Input(shape=tuple(spec.input_shape), name=_safe(spec.input_name))
    env: dict[str, Any] = {spec.input_name: inputs}
    kinds: dict[str, Node] = {}
    names: dict[str, str] = {}
    setters: list[tuple[Any, list[np.ndarray]]] = []
    for node in spec.nodes:
        xs = [env[i] for i in node.inputs]
        layer_name = _safe(node.name)
        out, vals = _build_node(node, xs, layer_name, weights.get(node.name, {}), kinds, spec)
        env[node.name] = out[1]
        if vals is not None:
            setters.append((out[0], vals))
        kinds[node.name] = node
        names[node.name] = layer_name
    model = keras.Model(inputs, env[spec.output], name="polyviz_graph")
    for layer, vals in setters:
        layer.set_weights([np.asarray(v, np.float32) for v in vals])
    return model, names


def _padding_for(node: Node, x: Any, nonneg: bool, what: str) -> tuple[str, Any]:
    """The Keras padding for ``node``'s explicit pads: 'valid', 'same' when TF's rule gives the same
    numbers at this size, else 'valid' after a ZeroPadding2D."""
    cfg = node.config
    p = pads(cfg["padding"])
    if p == pads(0):
        return "valid", x
    size = tuple(x.shape[1:3])
    if node.kind != "avgpool" and p == same_pads(size, tuple(cfg.get("kernel_size", cfg.get("pool_size"))),
                                                 tuple(cfg["strides"]), tuple(cfg.get("dilation", (1, 1)))):
        return "same", x
    if node.kind == "maxpool" and not nonneg:
        raise ModelError(f"spec: max-pool {node.name!r} pads {p} over inputs that may be negative; Keras pads only "
                         "with zeros or as 'same', so it cannot express this -inf padding")
    return "valid", keras.layers.ZeroPadding2D(p, name=_safe(f"{node.name}_pad"))(x)


def _build_node(node: Node, xs: list[Any], lname: str, w: dict[str, np.ndarray], built: dict[str, Node],
                spec: GraphSpec) -> tuple[tuple[Any, Any], list[np.ndarray] | None]:
    L, cfg, kind = keras.layers, node.config, node.kind
    x = xs[0]
    if kind == "conv2d":
        padding, x = _padding_for(node, x, False, "conv")
        kernel = w["kernel"]
        groups, cin = int(cfg.get("groups", 1)), int(x.shape[-1])
        common = dict(strides=tuple(cfg["strides"]), padding=padding, dilation_rate=tuple(cfg.get("dilation", (1, 1))),
                      use_bias="bias" in w, name=lname)
        if groups > 1 and groups == cin:
            mult = int(cfg["filters"]) // cin
            layer = L.DepthwiseConv2D(tuple(cfg["kernel_size"]), depth_multiplier=mult, **common)
            kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], cin, mult)
        else:
            layer = L.Conv2D(int(cfg["filters"]), tuple(cfg["kernel_size"]), groups=groups, **common)
        return (layer, layer(x)), [kernel, *([w["bias"]] if "bias" in w else [])]
    if kind == "batchnorm":
        layer = L.BatchNormalization(axis=-1, epsilon=float(cfg["epsilon"]), name=lname)
        return (layer, layer(x)), [w["gamma"], w["beta"], w["mean"], w["variance"]]
    if kind == "act":
        fn = cfg["fn"]
        if fn not in _SPEC_ACTS:
            raise ModelError(f"spec: activation {fn!r} of {node.name!r} has no Keras layer")
        layer = L.ReLU(name=lname) if fn == "relu" else L.Activation(_SPEC_ACTS[fn], name=lname)
        return (layer, layer(x)), None
    if kind == "zeropad":
        layer = L.ZeroPadding2D(pads(cfg["padding"]), name=lname)
        return (layer, layer(x)), None
    if kind in ("maxpool", "avgpool"):
        src = built.get(node.inputs[0])
        nonneg = src is not None and src.kind == "act" and src.config["fn"] in NONNEGATIVE
        padding, x = _padding_for(node, x, nonneg, kind)
        pool = L.MaxPooling2D if kind == "maxpool" else L.AveragePooling2D
        layer = pool(tuple(cfg["pool_size"]), strides=tuple(cfg["strides"]), padding=padding, name=lname)
        return (layer, layer(x)), None
    if kind == "global_avgpool":
        layer = L.GlobalAveragePooling2D(keepdims=bool(cfg.get("keepdims", False)), name=lname)
        return (layer, layer(x)), None
    if kind == "reshape":
        layer = L.Reshape(tuple(cfg["target"]), name=lname)
        return (layer, layer(x)), None
    if kind == "flatten":
        layer = L.Flatten(name=lname)
        return (layer, layer(x)), None
    if kind == "dense":
        layer = L.Dense(int(cfg["units"]), use_bias="bias" in w, name=lname)
        return (layer, layer(x)), [w["kernel"], *([w["bias"]] if "bias" in w else [])]
    if kind in ("add", "multiply", "concat"):
        layer = {"add": L.Add, "multiply": L.Multiply}.get(kind, lambda name: L.Concatenate(axis=-1, name=name))(name=lname)
        return (layer, layer(xs)), None
    if kind == "rescale":
        layer = L.Rescaling(cfg["scale"], cfg["offset"], name=lname)
        return (layer, layer(x)), None
    if kind == "normalize":
        if not np.isclose(float(cfg["epsilon"]), keras.backend.epsilon(), rtol=0, atol=0):
            raise ModelError(f"spec: normalize {node.name!r} clamps at {cfg['epsilon']}; Keras' Normalization at "
                             f"{keras.backend.epsilon()}")
        layer = L.Normalization(axis=-1, mean=[float(v) for v in w["mean"]], variance=[float(v) for v in w["variance"]],
                                name=lname)
        return (layer, layer(x)), None
    if kind == "dropout":
        layer = L.Dropout(float(cfg.get("rate", 0.5)), name=lname)
        return (layer, layer(x)), None
    raise ModelError(f"spec: node kind {kind!r} has no Keras builder")  # pragma: no cover
