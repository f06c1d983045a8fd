"""A layer's configuration in polyviz's framework-neutral vocabulary (the layer kinds and config
keys of :mod:`polyviz.models.spec`), for :func:`polyviz.layer_config`."""

from __future__ import annotations

from typing import Any


def _activation(layer: Any) -> str | None:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None) if fn is not None else None
    return None if name in (None, "linear") else str(name)


def layer_config(layer: Any) -> dict[str, Any]:
    """``{"kind": ..., **config}`` of a Keras layer (its ``activation``: None for linear)."""
    import keras

    L = keras.layers
    cfg = layer.get_config()
    if isinstance(layer, L.Conv2D) and not isinstance(layer, L.DepthwiseConv2D | L.Conv2DTranspose):
        return {"kind": "conv2d", "filters": int(cfg["filters"]), "kernel_size": tuple(cfg["kernel_size"]),
                "strides": tuple(cfg["strides"]), "padding": cfg["padding"],
                "dilation": tuple(cfg["dilation_rate"]), "activation": _activation(layer),
                "use_bias": bool(cfg["use_bias"])}
    if isinstance(layer, L.Dense):
        return {"kind": "dense", "units": int(cfg["units"]), "activation": _activation(layer),
                "use_bias": bool(cfg["use_bias"])}
    if isinstance(layer, L.MaxPooling2D | L.AveragePooling2D):
        kind = "maxpool2d" if isinstance(layer, L.MaxPooling2D) else "avgpool2d"
        size = tuple(cfg["pool_size"])
        return {"kind": kind, "pool_size": size, "strides": tuple(cfg["strides"] or size), "padding": cfg["padding"]}
    if isinstance(layer, L.Dropout):
        return {"kind": "dropout", "rate": float(cfg["rate"])}
    if isinstance(layer, L.Activation):
        name = _activation(layer)
        return {"kind": name} if name in ("relu", "softmax") else {"kind": "other", "type": "Activation", "activation": name}
    simple = {L.ReLU: "relu", L.Flatten: "flatten", L.Softmax: "softmax", L.GlobalAveragePooling2D: "global_avgpool",
              L.InputLayer: "input"}
    for cls, kind in simple.items():
        if isinstance(layer, cls):
            return {"kind": kind}
    return {"kind": "other", "type": type(layer).__name__}
