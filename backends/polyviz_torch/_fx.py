"""GraphSpec <-> torch: read any module ``torch.fx`` can trace as a :class:`GraphSpec`, and build
one as a :class:`GraphNet` (a module per node, run in order).

Reading traces an eval-mode deep copy (the user's module is never touched: no hook, no mode
switch), records every tensor's shape with ``ShapeProp`` on a probe input, and maps each fx node
to a spec node. Identity-like nodes (``Identity``, eval ``Dropout`` is kept as a node, eval
``stochastic_depth``) alias their input. The source layer names are module paths: a leaf module
called once names its node; a container module (a ResNet ``BasicBlock``, a ``Sequential`` stage)
names the last node computed inside it, its output, taken from fx's ``nn_module_stack``. The read
spec is rebuilt and run in float64 against the model: anything the reader missed is a refusal,
never a silently different network.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyviz.errors import ModelError
from polyviz.models.graph import GraphSpec, Node, pads, same_pads

__all__ = ["GraphNet", "build_graph", "export_graph"]


# ---- building -------------------------------------------------------------------------------------
class Add(nn.Module):
    """Elementwise sum of the inputs (a residual connection)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Multiply(nn.Module):
    """Elementwise product with broadcasting (squeeze-excitation's channel gate)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Concat(nn.Module):
    """Concatenation along channels."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, 1)


class GlobalAvgPool(nn.Module):
    """Mean over H and W: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims``."""

    def __init__(self, keepdims: bool) -> None:
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=self.keepdims)


class ToMap(nn.Module):
    """(N, C) -> (N, C, 1, 1), Keras' ``Reshape((1, 1, C))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None, None]


class MaxPoolPadded(nn.Module):
    """Max pooling over an input padded with -inf, asymmetrically (TensorFlow's ``"same"``)."""

    def __init__(self, pool: tuple[int, int], strides: tuple[int, int], padding: Any) -> None:
        super().__init__()
        (t, b), (left, r) = padding
        self.pool, self.strides, self.pad = pool, strides, (left, r, t, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, self.pad, value=float("-inf")), self.pool, self.strides)


class Rescale(nn.Module):
    """``x * scale + offset`` (Keras ``Rescaling``), scalars or per channel."""

    def __init__(self, scale: Any, offset: Any) -> None:
        super().__init__()
        self.register_buffer("scale", _channel(scale))
        self.register_buffer("offset", _channel(offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class Normalize(nn.Module):
    """``(x - mean) / max(sqrt(variance), epsilon)`` per channel (Keras ``Normalization``)."""

    def __init__(self, mean: np.ndarray, variance: np.ndarray, epsilon: float) -> None:
        super().__init__()
        self.register_buffer("mean", _channel(mean))
        self.register_buffer("variance", _channel(variance))
        self.epsilon = float(epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / torch.clamp(torch.sqrt(self.variance), min=self.epsilon)


def _channel(value: Any) -> torch.Tensor:
    arr = np.asarray(value, np.float32)
    return torch.from_numpy(arr.reshape(1, -1, 1, 1) if arr.ndim else arr.copy())


_OWN = (Add, Multiply, Concat, GlobalAvgPool, ToMap, MaxPoolPadded, Rescale, Normalize)

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
         "silu": nn.SiLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class GraphNet(nn.Module):
    """A :class:`GraphSpec` as a module: one submodule per node (named as the node), run in order.
    A final softmax is left out (torch models return logits; polyviz scores logits anyway)."""

    def __init__(self, spec: GraphSpec, modules: dict[str, nn.Module], plan: list[tuple[str, tuple[str, ...]]],
                 output: str) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.input_name = spec.input_name
        self.plan = plan
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for name, inputs in self.plan:
            env[name] = getattr(self, name)(*[env[i] for i in inputs])
        return env[self.output]


def _set(tensor: torch.Tensor, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, np.float32)
    if tuple(value.shape) != tuple(tensor.shape):
        raise ModelError(f"weights: {what} has shape {value.shape}, expected {tuple(tensor.shape)}")
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _module(node: Node, w: dict[str, np.ndarray], spec: GraphSpec, final: bool) -> nn.Module | None:
    cfg, kind = node.config, node.kind
    if kind == "conv2d":
        kernel = w["kernel"]
        kh, kw, cin_g, out = kernel.shape
        (t, b), (left, r) = pads(cfg["padding"])
        conv = nn.Conv2d(cin_g * int(cfg.get("groups", 1)), out, (kh, kw), tuple(cfg["strides"]),
                         padding=(t, left) if (t, left) == (b, r) else 0, dilation=tuple(cfg.get("dilation", (1, 1))),
                         groups=int(cfg.get("groups", 1)), bias="bias" in w)
        _set(conv.weight, kernel.transpose(3, 2, 0, 1), f"{node.name}.kernel")
        if "bias" in w:
            _set(conv.bias, w["bias"], f"{node.name}.bias")
        return conv
    if kind == "batchnorm":
        c = len(w["mean"])
        bn = nn.BatchNorm2d(c, eps=float(cfg["epsilon"]))
        _set(bn.weight, w.get("gamma", np.ones(c)), f"{node.name}.gamma")
        _set(bn.bias, w.get("beta", np.zeros(c)), f"{node.name}.beta")
        _set(bn.running_mean, w["mean"], f"{node.name}.mean")
        _set(bn.running_var, w["variance"], f"{node.name}.variance")
        return bn
    if kind == "act":
        fn = cfg["fn"]
        if fn == "softmax":
            return None if final else nn.Softmax(dim=1)
        if fn == "gelu_tanh":
            return nn.GELU(approximate="tanh")
        return _ACTS[fn]()
    if kind == "zeropad":
        (t, b), (left, r) = pads(cfg["padding"])
        return nn.ZeroPad2d((left, r, t, b))
    if kind == "maxpool":
        p = pads(cfg["padding"])
        if p[0][0] == p[0][1] and p[1][0] == p[1][1] and p[0][0] * 2 <= cfg["pool_size"][0] and p[1][0] * 2 <= cfg["pool_size"][1]:
            return nn.MaxPool2d(tuple(cfg["pool_size"]), tuple(cfg["strides"]), padding=(p[0][0], p[1][0]))
        return MaxPoolPadded(tuple(cfg["pool_size"]), tuple(cfg["strides"]), p)
    if kind == "avgpool":
        return nn.AvgPool2d(tuple(cfg["pool_size"]), tuple(cfg["strides"]))  # its padding is a zeropad before
    if kind == "global_avgpool":
        return GlobalAvgPool(bool(cfg.get("keepdims", False)))
    if kind == "reshape":
        return ToMap() if len(cfg["target"]) == 3 else nn.Flatten(1)
    if kind == "flatten":
        return nn.Flatten(1)
    if kind == "dense":
        kernel = w["kernel"]
        lin = nn.Linear(kernel.shape[0], kernel.shape[1], bias="bias" in w)
        _set(lin.weight, _rows_to_torch(kernel, _flattened(spec, node)), f"{node.name}.kernel")
        if "bias" in w:
            _set(lin.bias, w["bias"], f"{node.name}.bias")
        return lin
    if kind == "add":
        return Add()
    if kind == "multiply":
        return Multiply()
    if kind == "concat":
        return Concat()
    if kind == "rescale":
        return Rescale(cfg["scale"], cfg["offset"])
    if kind == "normalize":
        return Normalize(w["mean"], w["variance"], cfg["epsilon"])
    if kind == "dropout":
        return nn.Dropout(float(cfg.get("rate", 0.5)))
    raise ModelError(f"spec: node kind {kind!r} has no torch builder")  # pragma: no cover


def _flattened(spec: GraphSpec, node: Node) -> tuple[int, int, int] | None:
    """(H, W, C) of a spatial map flattened right before ``node`` (through dropouts), if any."""
    name = node.inputs[0]
    while name != spec.input_name:
        src = spec.node(name)
        if src.kind == "dropout":
            name = src.inputs[0]
            continue
        if src.kind == "flatten":
            h, w, c = src.config["input_shape"]
            return (h, w, c) if h * w > 1 else None
        return None
    return None


def _rows_to_torch(kernel: np.ndarray, hwc: tuple[int, int, int] | None) -> np.ndarray:
    if hwc is None:
        return kernel.T
    h, w, c = hwc
    return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)


def _rows_from_torch(weight: np.ndarray, hwc: tuple[int, int, int] | None) -> np.ndarray:
    if hwc is None:
        return weight.T
    h, w, c = hwc
    return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def build_graph(spec: GraphSpec, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[nn.Module, dict[str, str]]:
    """``spec`` as a :class:`GraphNet` (eval mode, float32). Asymmetric conv / avg-pool padding is
    a ``ZeroPad2d`` submodule ``<node>_pad`` before it. Returns the model and {node: module name}."""
    weights = weights or {}
    modules: dict[str, nn.Module] = {}
    plan: list[tuple[str, tuple[str, ...]]] = []
    alias: dict[str, str] = {spec.input_name: spec.input_name}
    names: dict[str, str] = {}
    taken = {n.name for n in spec.nodes}
    for node in spec.nodes:
        inputs = tuple(alias[i] for i in node.inputs)
        final = node.name == spec.output
        module = _module(node, weights.get(node.name, {}), spec, final)
        if module is None:  # a final softmax: its name goes to the logits' module (polyviz scores logits)
            alias[node.name] = inputs[0]
            if inputs[0] in names.values():
                names[node.name] = inputs[0]
            continue
        p = pads(node.config.get("padding", 0)) if node.kind in ("conv2d", "avgpool") else ((0, 0), (0, 0))
        if p != ((0, 0), (0, 0)) and (node.kind == "avgpool" or p[0][0] != p[0][1] or p[1][0] != p[1][1]):
            pad_name = f"{node.name}_pad"
            while pad_name in taken:
                pad_name += "_"
            taken.add(pad_name)
            modules[pad_name] = nn.ZeroPad2d((p[1][0], p[1][1], p[0][0], p[0][1]))
            plan.append((pad_name, inputs))
            inputs = (pad_name,)
        modules[node.name] = module
        plan.append((node.name, inputs))
        alias[node.name] = node.name
        names[node.name] = node.name
    model = GraphNet(spec, modules, plan, alias[spec.output])
    return model.eval(), names


# ---- reading --------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _is(target: Any, *fns: Any) -> bool:
    return any(target is f for f in fns)


def _act_of(module: nn.Module) -> str | None:
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0.0, 6.0)):
        return "relu6"
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    simple = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}
    return simple.get(type(module))


_FUNCTIONAL_ACTS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                    F.hardsigmoid: "hardsigmoid", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}


def export_graph(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> tuple[GraphSpec, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Read ``model`` as (GraphSpec, canonical weights, {module path: node name}). ``input_shape``
    (H, W, C), default (224, 224, 3), sizes the probe that records shapes and explicit paddings."""
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    size = tuple(input_shape or (224, 224, 3))
    work = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():  # the reader's own copy, in float64 with the float32 weights a build holds
        for t in [*work.parameters(), *work.buffers()]:
            if t.is_floating_point():
                t.data = t.data.float().double()

    class Tracer(fx.Tracer):  # polyviz's own graph modules are nodes, not traced into
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, _OWN) or super().is_leaf_module(m, qualname)

    try:
        gm = fx.GraphModule(work, Tracer().trace(work))
    except Exception as exc:  # noqa: BLE001 - any tracing failure is one refusal
        raise ModelError(
            f"model: torch.fx cannot trace it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); conversion "
            "reads graphs through torch.fx, so data-dependent control flow in forward is not supported"
        ) from exc
    probe = torch.from_numpy(np.random.default_rng(0).normal(size=(1, size[2], size[0], size[1])))
    with torch.no_grad():
        expected = ShapeProp(gm).propagate(probe)
    reader = _Reader(gm, size)
    spec, weights = reader.read()
    names = _source_names(gm, reader.env)
    _verify(spec, weights, probe, expected)
    return spec, weights, names


class _Reader:
    def __init__(self, gm: Any, size: tuple[int, int, int]) -> None:
        self.gm, self.size = gm, size
        self.env: dict[str, str] = {}  # fx node name -> spec node name
        self.nodes: list[Node] = []
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        self.input_name = "input"
        self.output = ""

    def shape(self, fx_node: Any) -> tuple[int, ...]:
        meta = fx_node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise ModelError(f"model: node {fx_node.name!r} does not produce one tensor; graphs need tensor-valued nodes")
        return tuple(int(d) for d in meta.shape)

    def hwc(self, fx_node: Any) -> tuple[int, ...]:
        s = self.shape(fx_node)
        return (s[2], s[3], s[1]) if len(s) == 4 else s[1:]

    def src(self, arg: Any, where: Any) -> str:
        if not hasattr(arg, "name") or arg.name not in self.env:
            raise ModelError(f"model: node {where.name!r} ({where.target}) takes {arg!r} where a tensor was expected")
        return self.env[arg.name]

    def add(self, fx_node: Any, kind: str, inputs: list[Any], config: dict[str, Any] | None = None,
            weights: dict[str, np.ndarray] | None = None) -> None:
        name = fx_node.name
        self.nodes.append(Node(kind, name, tuple(self.src(a, fx_node) for a in inputs), config or {}))
        if weights:
            self.weights[name] = weights
        self.env[fx_node.name] = name

    def alias(self, fx_node: Any, arg: Any) -> None:
        self.env[fx_node.name] = self.src(arg, fx_node)

    def read(self) -> tuple[GraphSpec, dict[str, dict[str, np.ndarray]]]:
        placeholders = 0
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise ModelError("model: forward takes several inputs; graphs have exactly one input")
                self.env[n.name] = self.input_name
            elif n.op == "call_module":
                self.module(n, self.gm.get_submodule(n.target))
            elif n.op in ("call_function", "call_method"):
                self.function(n)
            elif n.op == "output":
                out = n.args[0]
                if not hasattr(out, "name"):
                    raise ModelError("model: forward returns several values; graphs have exactly one output")
                self.output = self.src(out, n)
            else:
                raise ModelError(f"model: node {n.name!r} reads an attribute ({n.target}) as a tensor; graphs support "
                                 "parameters only inside layers")
        spec = GraphSpec(self.size, tuple(self.nodes), self.output, self.input_name)
        return spec, self.weights

    def module(self, n: Any, m: nn.Module) -> None:
        x = n.args[0]
        path = n.target
        act = _act_of(m)
        if act is not None:
            self.add(n, "act", [x], {"fn": act})
        elif type(m) is nn.Conv2d:
            if m.padding_mode != "zeros":
                raise ModelError(f"model: module {path!r} (Conv2d) pads with {m.padding_mode!r}; only zero padding converts")
            h, w = self.hwc(x)[:2]
            k, s, d = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
            p = same_pads((h, w), k, s, d) if m.padding == "same" else pads((0, 0) if m.padding == "valid" else m.padding)
            wts = {"kernel": _np(m.weight).transpose(2, 3, 1, 0)}
            if m.bias is not None:
                wts["bias"] = _np(m.bias)
            self.add(n, "conv2d", [x], {"filters": m.out_channels, "kernel_size": k, "strides": s, "padding": p,
                                        "dilation": d, "groups": m.groups, "use_bias": m.bias is not None}, wts)
        elif type(m) is nn.BatchNorm2d:
            if m.running_mean is None:
                raise ModelError(f"model: module {path!r} (BatchNorm2d) keeps no running statistics; at inference it "
                                 "normalises with batch statistics, which no converted layer reproduces")
            c = m.num_features
            self.add(n, "batchnorm", [x], {"epsilon": float(m.eps), "center": True, "scale": True}, {
                "gamma": _np(m.weight) if m.affine else np.ones(c), "beta": _np(m.bias) if m.affine else np.zeros(c),
                "mean": _np(m.running_mean), "variance": _np(m.running_var)})
        elif type(m) in (nn.MaxPool2d, nn.AvgPool2d):
            if m.ceil_mode or (type(m) is nn.MaxPool2d and _two(m.dilation) != (1, 1)):
                raise ModelError(f"model: module {path!r} ({type(m).__name__}) uses ceil_mode or dilation")
            k, s, p = _two(m.kernel_size), _two(m.stride or m.kernel_size), pads(_two(m.padding))
            if type(m) is nn.AvgPool2d:
                if p != ((0, 0), (0, 0)) and (not m.count_include_pad or m.divisor_override):
                    raise ModelError(f"model: module {path!r} (AvgPool2d) excludes its padding from the average; "
                                     "only count_include_pad=True converts")
                self.add(n, "avgpool", [x], {"pool_size": k, "strides": s, "padding": p})
            else:
                self.add(n, "maxpool", [x], {"pool_size": k, "strides": s, "padding": p})
        elif type(m) is nn.AdaptiveAvgPool2d:
            self.adaptive(n, x, m.output_size)
        elif type(m) is nn.Linear:
            hwc = self.flattened_before(x)
            wts = {"kernel": _rows_from_torch(_np(m.weight), hwc)}
            if m.bias is not None:
                wts["bias"] = _np(m.bias)
            self.add(n, "dense", [x], {"units": m.out_features, "use_bias": m.bias is not None}, wts)
        elif type(m) is nn.Dropout:
            self.add(n, "dropout", [x], {"rate": float(m.p)})
        elif type(m) is nn.Identity:
            self.alias(n, x)
        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                raise ModelError(f"model: module {path!r} (Flatten) flattens dims {m.start_dim}..{m.end_dim}; only 1..-1 converts")
            self.flatten(n, x)
        elif type(m) is nn.ZeroPad2d or (type(m) is nn.ConstantPad2d and m.value == 0):
            left, r, t, b = (m.padding,) * 4 if isinstance(m.padding, int) else m.padding
            self.add(n, "zeropad", [x], {"padding": ((t, b), (left, r))})
        elif type(m) in (Add, Multiply, Concat):
            self.add(n, {Add: "add", Multiply: "multiply", Concat: "concat"}[type(m)], list(n.args))
        elif type(m) is GlobalAvgPool:
            self.add(n, "global_avgpool", [x], {"keepdims": m.keepdims})
        elif type(m) is ToMap:
            self.add(n, "reshape", [x], {"target": (1, 1, self.shape(x)[1])})
        elif type(m) is MaxPoolPadded:
            left, r, t, b = m.pad
            self.add(n, "maxpool", [x], {"pool_size": m.pool, "strides": m.strides, "padding": ((t, b), (left, r))})
        elif type(m) is Rescale:
            value = lambda v: [float(a) for a in _np(v).ravel()] if v.ndim else float(v)  # noqa: E731
            self.add(n, "rescale", [x], {"scale": value(m.scale), "offset": value(m.offset)})
        elif type(m) is Normalize:
            self.add(n, "normalize", [x], {"epsilon": m.epsilon},
                     {"mean": _np(m.mean).ravel(), "variance": _np(m.variance).ravel()})
        elif type(m) is nn.Softmax and m.dim in (1, -1) and len(self.shape(x)) == 2:
            self.add(n, "act", [x], {"fn": "softmax"})
        else:
            raise ModelError(f"model: module {path!r} ({type(m).__name__}) has no equivalent in the conversion graph")

    def flatten(self, n: Any, x: Any) -> None:
        shape = self.hwc(x)
        self.add(n, "flatten", [x], {"input_shape": tuple(shape) if len(shape) == 3 else (1, 1, int(np.prod(shape)))})

    def adaptive(self, n: Any, x: Any, output_size: Any) -> None:
        out = _two(output_size) if output_size is not None else None
        h, w = self.hwc(x)[:2]
        if out == (1, 1):
            self.add(n, "global_avgpool", [x], {"keepdims": True})
        elif out == (h, w):
            self.alias(n, x)
        else:
            raise ModelError(f"model: node {n.name!r} average-pools {(h, w)} to {out}; adaptive pooling converts only to "
                             "1x1 or as an identity")

    def flattened_before(self, x: Any) -> tuple[int, int, int] | None:
        name = self.env.get(x.name)
        for node in reversed(self.nodes):
            if node.name == name:
                if node.kind == "dropout":
                    name = node.inputs[0]
                    continue
                if node.kind == "flatten":
                    h, w, c = node.config["input_shape"]
                    return (h, w, c) if h * w > 1 else None
                return None
        return None

    def function(self, n: Any) -> None:
        t, args, kw = n.target, n.args, n.kwargs
        tensors = [a for a in args if hasattr(a, "op")]
        if _is(t, operator.add, torch.add, operator.iadd) or t in ("add", "add_"):
            if len(tensors) != 2 or kw.get("alpha", 1) != 1:
                raise ModelError(f"model: node {n.name!r} adds a constant to a tensor; graphs add tensors only")
            self.add(n, "add", tensors)
        elif _is(t, operator.mul, torch.mul, operator.imul) or t in ("mul", "mul_"):
            if len(tensors) != 2:
                raise ModelError(f"model: node {n.name!r} multiplies a tensor by a constant; graphs multiply tensors only")
            self.add(n, "multiply", tensors)
        elif _is(t, torch.cat, torch.concat) or t == "cat":
            parts, dim = args[0], args[1] if len(args) > 1 else kw.get("dim", 0)
            rank = len(self.shape(parts[0]))
            if dim % rank != 1:
                raise ModelError(f"model: node {n.name!r} concatenates along dim {dim}; graphs concatenate channels only")
            self.add(n, "concat", list(parts))
        elif _is(t, torch.flatten) or t == "flatten":
            start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
            if start != 1 or (len(args) > 2 and args[2] != -1):
                raise ModelError(f"model: node {n.name!r} flattens from dim {start}; only torch.flatten(x, 1) converts")
            self.flatten(n, args[0])
        elif t in _FUNCTIONAL_ACTS or t in ("relu", "relu_", "sigmoid"):
            fn = _FUNCTIONAL_ACTS.get(t) or str(t).rstrip("_")
            self.add(n, "act", [args[0]], {"fn": fn})
        elif _is(t, F.gelu):
            self.add(n, "act", [args[0]], {"fn": "gelu" if kw.get("approximate", "none") == "none" else "gelu_tanh"})
        elif _is(t, F.adaptive_avg_pool2d):
            self.adaptive(n, args[0], args[1] if len(args) > 1 else kw["output_size"])
        elif (_is(t, torch.mean) or t == "mean") and _two(tuple(d % 4 for d in (args[1] if len(args) > 1 else kw["dim"]))) == (2, 3):
            keep = bool(args[2] if len(args) > 2 else kw.get("keepdim", False))
            self.add(n, "global_avgpool", [args[0]], {"keepdims": keep})
        elif _is(t, F.dropout) or getattr(t, "__name__", "") == "stochastic_depth":
            training = kw.get("training", args[3] if len(args) > 3 else False)
            if training:
                raise ModelError(f"model: node {n.name!r} ({getattr(t, '__name__', t)}) is random at inference")
            self.alias(n, args[0])
        else:
            what = getattr(t, "__name__", str(t))
            raise ModelError(f"model: node {n.name!r} calls {what!r}, which has no equivalent in the conversion graph "
                             "(graphs hold layers, add, multiply, concat, flatten, pooling and activations)")


def _two(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def _source_names(gm: Any, env: dict[str, str]) -> dict[str, str]:
    """{module path: spec node whose output equals the module's output}."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    names: dict[str, str] = {}
    last: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.name not in env or n.op == "placeholder":
            continue
        if n.op == "call_module" and calls[n.target] == 1:
            names[n.target] = env[n.name]
        for path in n.meta.get("nn_module_stack", {}):
            if "@" not in path and calls.get(path, 1) == 1:
                last[path] = env[n.name]
    for path, node in last.items():
        names.setdefault(path, node)
    return names


def _verify(spec: GraphSpec, weights: dict[str, dict[str, np.ndarray]], probe: torch.Tensor, expected: Any) -> None:
    """The read graph, rebuilt and run in float64, must compute what the model computed in float64
    on the same probe (``expected``), else the reader missed something and refuses."""
    rebuilt, _ = build_graph(spec, weights)
    with torch.no_grad():
        got = rebuilt.double()(probe)
    if not isinstance(expected, torch.Tensor):
        raise ModelError("model: forward does not return one tensor; graphs have exactly one output")
    if spec.node(spec.output).kind == "act" and spec.node(spec.output).config["fn"] == "softmax":
        expected, got = torch.log(expected), torch.log_softmax(got, 1)
    err = float((got - expected).norm() / max(float(expected.norm()), 1e-300)) if got.shape == expected.shape else np.inf
    if err > 1e-9:
        raise ModelError(f"model: its forward does more than the graph reader sees (the read graph differs from it by "
                         f"{err:.1e} in float64); conversion would not compute the same function")
