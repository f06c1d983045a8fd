"""A framework-neutral description of VGG-style networks, and its weights in canonical layout.

Backends that declare the ``build`` capability turn a :class:`NetworkSpec` plus weights into a model
of their framework (``Backend.build``) and read one back (``Backend.export``). Conversion between
frameworks is export from one backend followed by build in the other.

Layer kinds and their config keys:

=================  ==========================================================================
``conv2d``         filters, kernel_size (kh, kw), strides (sh, sw), padding "same" | "valid" |
                   (ph, pw), activation None | "relu", use_bias
``relu``           (none)
``maxpool2d``      pool_size (ph, pw), strides (sh, sw)
``avgpool2d``      pool_size, strides
``adaptive_avgpool2d``  output_size (oh, ow)  (torchvision's VGG ``avgpool``)
``global_avgpool`` (none): (H, W, C) -> (C,)
``flatten``        (none): flattens channels-last, in (H, W, C) order
``dense``          units, activation None | "relu" | "softmax", use_bias
``dropout``        rate (identity at inference)
``softmax``        (none)
=================  ==========================================================================

Weights are a dict ``{layer name: {"kernel": ..., "bias": ...}}`` in the canonical (Keras) layout:
conv kernels (kh, kw, in, out), dense kernels (in, out), and a dense layer that follows ``flatten``
sees its inputs in channels-last (H, W, C) order. A backend whose framework flattens (C, H, W)
permutes the kernel rows on export and build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import InputError

__all__ = ["LayerSpec", "NetworkSpec", "KINDS", "output_shapes", "vgg_spec", "random_weights", "VGG_CONFIGS"]

KINDS = (
    "conv2d",
    "relu",
    "maxpool2d",
    "avgpool2d",
    "adaptive_avgpool2d",
    "global_avgpool",
    "flatten",
    "dense",
    "dropout",
    "softmax",
)


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its kind, its name (used by builders that name layers), its configuration."""

    kind: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind: unknown layer kind {self.kind!r}; expected one of {KINDS}")

    @property
    def has_weights(self) -> bool:
        return self.kind in ("conv2d", "dense")


@dataclass(frozen=True)
class NetworkSpec:
    """A sequential network: input shape (H, W, C) channels-last, then layers in order."""

    input_shape: tuple[int, int, int]
    layers: tuple[LayerSpec, ...]

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise InputError(f"layer: no layer {name!r} in this spec")


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def _conv_out(size: int, k: int, s: int, padding: Any, axis: int) -> int:
    if padding == "same":
        return -(-size // s)
    if padding == "valid":
        return (size - k) // s + 1
    p = _pair(padding)[axis]
    return (size + 2 * p - k) // s + 1


def output_shapes(spec: NetworkSpec) -> list[tuple[int, ...]]:
    """Output shape of every layer (channels-last, no batch axis), in order."""
    shape: tuple[int, ...] = tuple(spec.input_shape)
    shapes = []
    for layer in spec.layers:
        cfg = layer.config
        if layer.kind == "conv2d":
            kh, kw = _pair(cfg["kernel_size"])
            sh, sw = _pair(cfg.get("strides", 1))
            pad = cfg.get("padding", "valid")
            shape = (_conv_out(shape[0], kh, sh, pad, 0), _conv_out(shape[1], kw, sw, pad, 1), int(cfg["filters"]))
        elif layer.kind in ("maxpool2d", "avgpool2d"):
            ph, pw = _pair(cfg.get("pool_size", 2))
            sh, sw = _pair(cfg.get("strides", cfg.get("pool_size", 2)))
            shape = ((shape[0] - ph) // sh + 1, (shape[1] - pw) // sw + 1, shape[2])
        elif layer.kind == "adaptive_avgpool2d":
            oh, ow = _pair(cfg["output_size"])
            shape = (oh, ow, shape[2])
        elif layer.kind == "global_avgpool":
            shape = (shape[-1],)
        elif layer.kind == "flatten":
            shape = (int(np.prod(shape)),)
        elif layer.kind == "dense":
            shape = (int(cfg["units"]),)
        shapes.append(shape)
    return shapes


#: VGG configurations (Simonyan & Zisserman 2014): conv widths per block.
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def vgg_spec(
    blocks: list[list[int]],
    *,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    dense: tuple[int, ...] = (4096, 4096),
    classes: int = 1000,
    dropout: float | None = None,
    head: str = "flatten",
    adaptive_pool: tuple[int, int] | None = None,
    classifier_activation: str | None = None,
) -> NetworkSpec:
    """A VGG-style spec with Keras-application layer names (block1_conv1, ..., fc1, predictions).

    Convolutions are 3x3 'same' with a fused ReLU; each block ends in a 2x2 max pool. ``head``
    is "flatten" (VGG) or "gap" (global average pooling, as CAM needs). ``adaptive_pool`` adds
    torchvision's ``avgpool`` (identity at 224 px); ``classifier_activation`` "softmax" gives the
    head Keras ships.
    """
    layers: list[LayerSpec] = []
    for b, widths in enumerate(blocks, start=1):
        for i, width in enumerate(widths, start=1):
            layers.append(
                LayerSpec(
                    "conv2d",
                    f"block{b}_conv{i}",
                    {"filters": width, "kernel_size": (3, 3), "strides": (1, 1), "padding": "same",
                     "activation": "relu", "use_bias": True},
                )
            )
        layers.append(LayerSpec("maxpool2d", f"block{b}_pool", {"pool_size": (2, 2), "strides": (2, 2)}))
    if adaptive_pool is not None:
        layers.append(LayerSpec("adaptive_avgpool2d", "avgpool", {"output_size": tuple(adaptive_pool)}))
    if head == "flatten":
        layers.append(LayerSpec("flatten", "flatten"))
    else:
        layers.append(LayerSpec("global_avgpool", "gap"))
    for j, units in enumerate(dense, start=1):
        layers.append(LayerSpec("dense", f"fc{j}", {"units": units, "activation": "relu", "use_bias": True}))
        if dropout:
            layers.append(LayerSpec("dropout", f"fc{j}_dropout", {"rate": dropout}))
    layers.append(
        LayerSpec("dense", "predictions", {"units": classes, "activation": classifier_activation, "use_bias": True})
    )
    return NetworkSpec(tuple(input_shape), tuple(layers))


def random_weights(spec: NetworkSpec, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """He-normal kernels and small random biases for every weighted layer, drawn by numpy."""
    rng = np.random.default_rng(seed)
    shapes = output_shapes(spec)
    weights: dict[str, dict[str, np.ndarray]] = {}
    in_shape: tuple[int, ...] = tuple(spec.input_shape)
    for layer, out_shape in zip(spec.layers, shapes):
        cfg = layer.config
        if layer.kind == "conv2d":
            kh, kw = _pair(cfg["kernel_size"])
            fan_in = kh * kw * in_shape[-1]
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), (kh, kw, in_shape[-1], cfg["filters"]))
            weights[layer.name] = {"kernel": kernel.astype(np.float32)}
        elif layer.kind == "dense":
            fan_in = in_shape[-1]
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, cfg["units"]))
            weights[layer.name] = {"kernel": kernel.astype(np.float32)}
        if layer.has_weights and cfg.get("use_bias", True):
            weights[layer.name]["bias"] = rng.normal(0.0, 0.05, out_shape[-1]).astype(np.float32)
        in_shape = out_shape
    return weights
