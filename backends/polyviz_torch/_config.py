"""A module's configuration in polyviz's framework-neutral vocabulary (the layer kinds and config
keys of :mod:`polyviz.models.spec`), for :func:`polyviz.layer_config`."""

from __future__ import annotations

from typing import Any

from torch import nn


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _padding(padding: Any, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int]) -> Any:
    """'valid' for no padding, 'same' where torch's symmetric padding keeps the size (stride 1,
    ``2 p = d (k - 1)``, what Keras' 'same' computes), else the (ph, pw) pixels."""
    if isinstance(padding, str):
        return padding
    p = _pair(padding)
    if p == (0, 0):
        return "valid"
    if strides == (1, 1) and all(2 * p[i] == dilation[i] * (kernel[i] - 1) for i in range(2)):
        return "same"
    return p


def module_config(model: nn.Module, name: str, fused_with: dict[str, str], probe_ok: bool = True) -> dict[str, Any]:
    """``{"kind": ..., **config}`` of module ``name``. A ReLU run right after a Conv2d/Linear (the
    layer a fused Keras ``Conv2D(activation="relu")`` maps to) answers that layer, with
    ``activation="relu"``; a Conv2d or Linear itself has ``activation=None``. The probe forward
    says what ran before a ReLU; where it failed (an input size the model rejects), the previous
    module of the same ``nn.Sequential`` does."""
    modules = dict(model.named_modules())
    activation = None
    fused = fused_with.get(name)
    if fused is None and not probe_ok and isinstance(modules[name], nn.ReLU):
        parent, _, index = name.rpartition(".")
        before = f"{parent}.{int(index) - 1}" if parent and index.isdigit() and int(index) > 0 else None
        if before is not None and isinstance(modules.get(before), nn.Conv2d | nn.Linear):
            fused = before
    if fused is not None:
        name, activation = fused, "relu"
    m = modules[name]
    if isinstance(m, nn.Conv2d):
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        return {"kind": "conv2d", "filters": m.out_channels, "kernel_size": k, "strides": s,
                "padding": _padding(m.padding, k, s, d), "dilation": d, "activation": activation,
                "use_bias": m.bias is not None}
    if isinstance(m, nn.Linear):
        return {"kind": "dense", "units": m.out_features, "activation": activation, "use_bias": m.bias is not None}
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k = _pair(m.kernel_size)
        s = k if m.stride is None else _pair(m.stride)
        kind = "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d"
        return {"kind": kind, "pool_size": k, "strides": s, "padding": _padding(m.padding, k, s, (1, 1))}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return {"kind": "adaptive_avgpool2d", "output_size": _pair(m.output_size)}
    if isinstance(m, nn.Dropout):
        return {"kind": "dropout", "rate": float(m.p)}
    simple = {nn.ReLU: "relu", nn.Flatten: "flatten", nn.Softmax: "softmax"}
    for cls, kind in simple.items():
        if isinstance(m, cls):
            return {"kind": kind}
    return {"kind": "other", "type": type(m).__name__}
