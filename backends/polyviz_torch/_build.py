"""NetworkSpec <-> torch: build torchvision-VGG-structured modules, and read VGG-style ones back.

Built models have torchvision's VGG layout (Simonyan & Zisserman 2014; torchvision's ``VGG``):
``features`` (``nn.Sequential`` of Conv2d / ReLU(inplace=True) / pools), ``avgpool``
(``AdaptiveAvgPool2d`` or ``Identity``), ``flatten`` and ``classifier`` (``nn.Sequential`` of
Linear / ReLU / Dropout), so torchvision VGG state dicts load into them. Conventions:

* a conv or dense with ``activation="relu"`` is the layer followed by ``nn.ReLU(inplace=True)``,
  and the spec layer maps to the ReLU's module path (torchvision VGG16's ``block5_conv3`` is
  ``features.29``);
* a dense with ``activation="softmax"`` (and a ``softmax`` layer) is not materialised: torch
  models return logits, and polyviz scores logits anyway;
* torch flattens (C, H, W) while canonical weights see (H, W, C): the kernel rows of the first
  dense after a spatial flatten are permuted both ways. The spec ``flatten`` layer is mapped only
  when the flattened map is 1x1 (otherwise no module's output equals it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polyviz.errors import ModelError
from polyviz.models.graph import GraphSpec
from polyviz.models.spec import LayerSpec, NetworkSpec, output_shapes

__all__ = ["SpecVGG", "build", "export", "export_chain"]


class SpecVGG(nn.Module):
    """torchvision's VGG structure: ``features -> avgpool -> flatten -> classifier``."""

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.flatten = nn.Flatten(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def _conv_padding(layer: LayerSpec) -> tuple[int, int]:
    cfg = layer.config
    kh, kw = _pair(cfg["kernel_size"])
    strides = _pair(cfg.get("strides", 1))
    padding = cfg.get("padding", "valid")
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if strides != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
            raise ModelError(
                f"spec: layer {layer.name!r}: 'same' padding is built for odd kernels at stride 1 only, "
                f"got kernel {(kh, kw)} stride {strides}"
            )
        return (kh // 2, kw // 2)
    return _pair(padding)


def _to_chw_rows(kernel: np.ndarray, hwc: tuple[int, ...]) -> np.ndarray:
    """Canonical dense kernel (H*W*C, out) with (H, W, C) rows -> torch weight (out, C*H*W)."""
    h, w, c = hwc
    return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)


def _to_hwc_rows(weight: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """torch weight (out, C*H*W) -> canonical kernel (H*W*C, out)."""
    h, w, c = hwc
    return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def _set(param: nn.Parameter, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, dtype=np.float32)
    if tuple(value.shape) != tuple(param.shape):
        raise ModelError(f"weights: {what} has shape {value.shape}, expected {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def build(spec: NetworkSpec | GraphSpec, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[nn.Module, dict[str, str]]:
    """Build ``spec`` as a :class:`SpecVGG` (eval mode) with canonical ``weights`` (None: torch's
    default init). Returns the model and {spec layer name: module path whose output equals it}.
    A :class:`~polyviz.models.graph.GraphSpec` is built as a ``polyviz_torch._fx.GraphNet``."""
    if isinstance(spec, GraphSpec):
        from polyviz_torch._fx import build_graph

        return build_graph(spec, weights)
    if not isinstance(spec, NetworkSpec):
        raise ModelError(f"spec: expected a polyviz.models.spec.NetworkSpec, got {type(spec).__name__}")
    shapes = output_shapes(spec)
    features: list[nn.Module] = []
    classifier: list[nn.Module] = []
    avgpool: nn.Module = nn.Identity()
    names: dict[str, str] = {}
    stage = "features"  # -> "pooled" after adaptive/global pooling -> "classifier" after flatten
    in_shape: tuple[int, ...] = tuple(spec.input_shape)
    flatten_from: tuple[int, ...] | None = None
    loads: list[tuple[nn.Module, str, tuple[int, ...] | None]] = []
    for layer, out_shape in zip(spec.layers, shapes):
        cfg = layer.config
        kind = layer.kind
        target = features if stage == "features" else classifier
        prefix = "features" if stage == "features" else "classifier"
        if kind in ("conv2d", "maxpool2d", "avgpool2d") and stage != "features":
            raise ModelError(f"spec: layer {layer.name!r} ({kind}) comes after the pooling/flatten head")
        if kind == "conv2d":
            conv = nn.Conv2d(
                in_shape[-1], int(cfg["filters"]), _pair(cfg["kernel_size"]), _pair(cfg.get("strides", 1)),
                _conv_padding(layer), bias=bool(cfg.get("use_bias", True)),
            )
            target.append(conv)
            loads.append((conv, layer.name, None))
            if cfg.get("activation") == "relu":
                target.append(nn.ReLU(inplace=True))
            elif cfg.get("activation") not in (None, "linear"):
                raise ModelError(f"spec: layer {layer.name!r}: unsupported conv activation {cfg.get('activation')!r}")
            names[layer.name] = f"{prefix}.{len(target) - 1}"
        elif kind == "relu":
            target.append(nn.ReLU(inplace=True))
            names[layer.name] = f"{prefix}.{len(target) - 1}"
        elif kind in ("maxpool2d", "avgpool2d"):
            pool_size = _pair(cfg.get("pool_size", 2))
            strides = _pair(cfg.get("strides", cfg.get("pool_size", 2)))
            cls = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
            target.append(cls(pool_size, strides))
            names[layer.name] = f"{prefix}.{len(target) - 1}"
        elif kind in ("adaptive_avgpool2d", "global_avgpool"):
            if stage != "features":
                raise ModelError(f"spec: layer {layer.name!r}: one pooling head, before flatten and dense layers")
            if kind == "adaptive_avgpool2d":
                avgpool = nn.AdaptiveAvgPool2d(_pair(cfg["output_size"]))
                names[layer.name] = "avgpool"
                stage = "pooled"
            else:
                avgpool = nn.AdaptiveAvgPool2d(1)
                names[layer.name] = "flatten"
                stage = "classifier"
        elif kind == "flatten":
            if stage == "classifier":
                raise ModelError(f"spec: layer {layer.name!r}: a second flatten")
            stage = "classifier"
            if in_shape[0] * in_shape[1] == 1:
                names[layer.name] = "flatten"
            else:
                flatten_from = in_shape
        elif kind == "dense":
            if stage != "classifier" or len(in_shape) != 1:
                raise ModelError(f"spec: layer {layer.name!r}: a dense layer needs a flat input, got {in_shape}")
            linear = nn.Linear(int(in_shape[0]), int(cfg["units"]), bias=bool(cfg.get("use_bias", True)))
            classifier.append(linear)
            loads.append((linear, layer.name, flatten_from))
            flatten_from = None
            if cfg.get("activation") == "relu":
                classifier.append(nn.ReLU(inplace=True))
            elif cfg.get("activation") not in (None, "linear", "softmax"):
                raise ModelError(f"spec: layer {layer.name!r}: unsupported dense activation {cfg.get('activation')!r}")
            names[layer.name] = f"classifier.{len(classifier) - 1}"
        elif kind == "dropout":
            target.append(nn.Dropout(float(cfg.get("rate", 0.5))))
            names[layer.name] = f"{prefix}.{len(target) - 1}"
        elif kind == "softmax":
            pass  # logits: see the module docstring
        else:  # pragma: no cover - LayerSpec validates kinds
            raise ModelError(f"spec: unsupported layer kind {kind!r}")
        in_shape = out_shape
    model = SpecVGG(nn.Sequential(*features), avgpool, nn.Sequential(*classifier))
    if weights is not None:
        for module, name, hwc in loads:
            if name not in weights:
                raise ModelError(f"weights: no weights for layer {name!r} (have {sorted(weights)[:8]})")
            entry = weights[name]
            if "kernel" not in entry:
                raise ModelError(f"weights: layer {name!r} has no 'kernel'")
            kernel = np.asarray(entry["kernel"], dtype=np.float32)
            if isinstance(module, nn.Conv2d):
                if kernel.ndim != 4:
                    raise ModelError(f"weights: {name}.kernel must be (kh, kw, in, out), got {kernel.shape}")
                value = kernel.transpose(3, 2, 0, 1)
            elif hwc is not None:
                value = _to_chw_rows(kernel, hwc)
            else:
                value = kernel.T
            _set(module.weight, value, f"{name}.kernel")
            if module.bias is not None:
                if "bias" not in entry:
                    raise ModelError(f"weights: layer {name!r} has no 'bias'")
                _set(module.bias, entry["bias"], f"{name}.bias")
    model.eval()
    return model, names


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

_SUPPORTED = "Conv2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Linear, Dropout, Identity"


def _probe_size(model: nn.Module, input_shape: tuple[int, int, int] | None) -> list[tuple[int, int, int]]:
    """Sizes to try for the probe: the one given, 224 px, and what the first Linear implies."""
    from polyviz_torch._impl import first_conv_channels

    if input_shape is not None:
        return [tuple(int(d) for d in input_shape)]  # type: ignore[list-item]
    c = first_conv_channels(model) or 3
    sizes = [(224, 224, c)]
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    factor, channels = 1, None
    for m in leaves:
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
            factor *= _pair(m.stride)[0]
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            factor *= _pair(m.stride if m.stride is not None else m.kernel_size)[0]
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            break
        elif isinstance(m, nn.Linear):
            if channels:
                side = int(round(np.sqrt(m.in_features / channels)))
                if side * side * channels == m.in_features:
                    sizes.append((side * factor, side * factor, c))
            break
    return sizes


#: Leaf modules of the VGG-style chains :func:`export_chain` reads; a module with others is a graph.
_CHAIN_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear,
                  nn.Dropout, nn.Identity, nn.Softmax)


def export(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """A VGG-style chain as a :class:`NetworkSpec` (:func:`export_chain`, torchvision VGG's layout
    and Keras' layer names), any other module ``torch.fx`` traces as a
    :class:`~polyviz.models.graph.GraphSpec` (``polyviz_torch._fx.export_graph``; its names are
    {module path: node}). A module neither reader takes gets the graph reader's refusal, which
    names the structural reason."""
    from polyviz_torch._fx import GraphNet, export_graph

    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    if not isinstance(model, GraphNet) and all(isinstance(m, _CHAIN_MODULES) for m in leaves):
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes - {torch.float32}:  # a float64 (or half) model: read a float32 copy, module paths unchanged
            import copy

            model = copy.deepcopy(model).float()
        try:
            return export_chain(model, input_shape)
        except (ModelError, RuntimeError):  # not a chain after all (its probe or check failed): a graph
            pass

    return export_graph(model, input_shape)


def export_chain(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> tuple[NetworkSpec, dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Read a VGG-style module as (NetworkSpec, canonical weights, {spec name: module path}).

    The execution order of the leaf modules comes from a probe forward. Conv2d+ReLU and
    Linear+ReLU are fused into one spec layer with ``activation="relu"``; names follow Keras'
    applications (``blockB_convI``, ``blockB_pool``, ``flatten``, ``fc1``..., ``predictions``).
    The exported spec is rebuilt and compared with the model on the probe input, so a forward that
    does more than its modules (functional ops) is refused instead of exported wrongly.
    """
    from polyviz_torch._probe import leaf_trace

    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    trace, size = None, None
    error: Exception | None = None
    for size in _probe_size(model, input_shape):
        trace, error = leaf_trace(model, size)
        if error is None:
            break
    if error is not None or trace is None or size is None:
        raise ModelError(f"model: the probe forward failed ({type(error).__name__}: {error}); pass input_shape=(H, W, C)")
    leaves = [(n, m, i, o) for n, m, i, o in trace if next(m.children(), None) is None]
    layers: list[LayerSpec] = []
    weights: dict[str, dict[str, np.ndarray]] = {}
    names: dict[str, str] = {}
    block, conv_i, fc_i, relu_i, drop_i = 1, 1, 1, 1, 1
    linears = [n for n, m, _, _ in leaves if isinstance(m, nn.Linear)]
    shape: tuple[int, ...] = (size[0], size[1], size[2])
    k = 0
    while k < len(leaves):
        path, module, ins, outs = leaves[k]
        fused = k + 1 < len(leaves) and isinstance(leaves[k + 1][1], nn.ReLU)
        if isinstance(module, nn.Conv2d):
            _check_conv(path, module)
            name = f"block{block}_conv{conv_i}"
            conv_i += 1
            kh, kw = _pair(module.kernel_size)
            strides = _pair(module.stride)
            pad = _pair(module.padding) if not isinstance(module.padding, str) else module.padding
            if pad == (kh // 2, kw // 2) and strides == (1, 1) and kh % 2 and kw % 2:
                pad = "same"
            elif pad == (0, 0):
                pad = "valid"
            layers.append(LayerSpec("conv2d", name, {
                "filters": module.out_channels, "kernel_size": (kh, kw), "strides": strides, "padding": pad,
                "activation": "relu" if fused else None, "use_bias": module.bias is not None,
            }))
            weights[name] = {"kernel": _np(module.weight).transpose(2, 3, 1, 0)}
            if module.bias is not None:
                weights[name]["bias"] = _np(module.bias)
        elif isinstance(module, nn.ReLU):
            name = f"relu{relu_i}"
            relu_i += 1
            layers.append(LayerSpec("relu", name))
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            _check_pool(path, module)
            name = f"block{block}_pool"
            block, conv_i = block + 1, 1
            pool_size = _pair(module.kernel_size)
            strides = _pair(module.stride if module.stride is not None else module.kernel_size)
            kind = "maxpool2d" if isinstance(module, nn.MaxPool2d) else "avgpool2d"
            layers.append(LayerSpec(kind, name, {"pool_size": pool_size, "strides": strides}))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            out_size = module.output_size
            out_size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
            if any(s is None for s in out_size):
                raise ModelError(f"model: module {path!r} (AdaptiveAvgPool2d) has a None output size")
            following = leaves[k + 1][1] if k + 1 < len(leaves) else None
            if out_size == (1, 1) and isinstance(following, nn.Flatten | nn.Linear):
                # pooling to 1x1 then flattening is global average pooling (a GAP head, as CAM needs)
                name = "gap"
                layers.append(LayerSpec("global_avgpool", name))
                if isinstance(following, nn.Flatten):
                    k += 1
                    path = leaves[k][0]
            else:
                name = "avgpool"
                layers.append(LayerSpec("adaptive_avgpool2d", name, {"output_size": out_size}))
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise ModelError(f"model: module {path!r} (Flatten) must flatten from dim 1")
            name = "flatten"
            layers.append(LayerSpec("flatten", name))
        elif isinstance(module, nn.Linear):
            if len(shape) == 3:  # a functional flatten (torch.flatten in VGG.forward) before it
                layers.append(LayerSpec("flatten", "flatten"))  # no module: not in the name map
                shape = (int(np.prod(shape)),)
            name = "predictions" if path == linears[-1] else f"fc{fc_i}"
            fc_i += 1
            weight = _np(module.weight)
            hwc = _flattened_from(layers, size)
            kernel = _to_hwc_rows(weight, hwc) if hwc is not None else weight.T
            layers.append(LayerSpec("dense", name, {
                "units": module.out_features, "activation": "relu" if fused else None,
                "use_bias": module.bias is not None,
            }))
            weights[name] = {"kernel": np.ascontiguousarray(kernel)}
            if module.bias is not None:
                weights[name]["bias"] = _np(module.bias)
        elif isinstance(module, nn.Dropout):
            name = f"dropout{drop_i}"
            drop_i += 1
            layers.append(LayerSpec("dropout", name, {"rate": float(module.p)}))
        elif isinstance(module, nn.Identity):
            k += 1
            continue
        else:
            raise ModelError(
                f"model: module {path!r} ({type(module).__name__}) is not supported by export; "
                f"VGG-style models use {_SUPPORTED}"
            )
        shapes = output_shapes(NetworkSpec(tuple(size), tuple(layers)))
        before = shapes[-2] if len(shapes) > 1 else tuple(size)
        shape = shapes[-1]
        if fused and isinstance(module, nn.Conv2d | nn.Linear):
            k += 1
            path = leaves[k][0]
        # torch flattens (C, H, W): a spatial flatten's output is not the canonical (H, W, C) one
        if not (layers[-1].kind == "flatten" and len(before) == 3 and before[0] * before[1] > 1):
            names[layers[-1].name] = path
        k += 1
    spec = NetworkSpec(tuple(size), tuple(layers))
    _verify(model, spec, weights, size)
    return spec, weights, names


def _flattened_from(layers: list[LayerSpec], size: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """(H, W, C) of the map flattened just before the dense layer about to be appended, if any."""
    shapes = output_shapes(NetworkSpec(tuple(size), tuple(layers)))
    for layer, previous in zip(reversed(layers), reversed([tuple(size), *shapes[:-1]])):
        if layer.kind == "dropout":
            continue
        if layer.kind == "flatten" and len(previous) == 3 and previous[0] * previous[1] > 1:
            return (int(previous[0]), int(previous[1]), int(previous[2]))
        return None
    return None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _check_conv(path: str, module: nn.Conv2d) -> None:
    if module.groups != 1 or _pair(module.dilation) != (1, 1) or module.padding_mode != "zeros":
        raise ModelError(
            f"model: module {path!r} (Conv2d) uses groups/dilation/padding_mode; export supports plain convolutions"
        )
    if isinstance(module.padding, str) and module.padding == "same":
        raise ModelError(f"model: module {path!r} (Conv2d) has padding='same'; give explicit padding")


def _check_pool(path: str, module: nn.Module) -> None:
    if _pair(module.padding) != (0, 0) or module.ceil_mode or _pair(getattr(module, "dilation", 1)) != (1, 1):
        raise ModelError(f"model: module {path!r} ({type(module).__name__}) uses padding/ceil_mode/dilation")


def _verify(model: nn.Module, spec: NetworkSpec, weights: dict[str, dict[str, np.ndarray]], size: tuple[int, int, int]) -> None:
    """The exported spec, rebuilt, must compute what the model computes on a random probe input."""
    from polyviz_torch._impl import device_dtype, guarded

    rebuilt, _ = build(spec, weights)
    device, _ = device_dtype(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, size[2], size[0], size[1])).astype(np.float32))
    with guarded(model), torch.no_grad():
        expected = model(x.to(device)).float().cpu()
        got = rebuilt(x)
    err = float((got - expected).norm() / max(float(expected.norm()), 1e-12))
    if got.shape != expected.shape or err > 1e-4:
        raise ModelError(
            "model: its forward does more than the modules export can see (functional ops besides "
            f"flatten?): the exported network differs from it (relative error {err:.2e})"
        )
