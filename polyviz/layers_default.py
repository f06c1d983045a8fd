"""The default CAM layer: one rule, written once, over what every backend reports in ``layers()``.

The rule (issue 14, item 1). ``layers()`` lists layers in the order they start (a container before
its contents) and numbers each output tensor in the order the forward pass produced it
(:attr:`~polyviz.protocol.LayerInfo.tensor`: layers returning the same tensor share the number; a
tensor changed in place is a new one).

1. **The tensor.** ``T`` is the last spatial tensor the forward pass produced: the last (h, w, C)
   output with h * w > 1, i.e. the network's final map before global pooling or flattening
   collapses the spatial axes (any (h, w, C) output when every map is 1 x 1).
2. **The candidates** are the layers whose output *is* ``T`` (the same tensor, not equal values).
   In a residual block ``T`` is made by the add and the activation after it, so the convolutions
   and norms of the residual branch (whose tensors come before the add) are never candidates, and
   neither is one branch of an Inception concatenation.
3. **Not the whole trunk.** A candidate that starts before the network's first spatial output also
   holds the stem: it is the whole feature extractor (torchvision ``features`` of DenseNet,
   EfficientNet, MobileNet and ConvNeXt; a nested Keras backbone), not the last block. It is dropped
   unless nothing else is left.
4. **The outermost** remaining candidate is the default, the first one listed: the stage or block
   that ends with ``T`` rather than the leaf inside it (torchvision ResNet ``layer4``, not
   ``layer4.2`` or ``layer4.2.relu``). Every candidate holds the same tensor, so this choice only
   names the layer; the map is the same.

**Transformers** (token layers, ``LayerInfo.layout == "NTC"``: a ViT's (N, tokens, C) outputs,
which the backends show as the patch grid without the class and register tokens). When the last
spatial tensor is a token grid, the default is **the normalisation at the input of the last
attention block**: the last layer whose type names a norm (``LayerNorm``,
``LayerNormalization``, ...) that starts before the last layer whose type names attention
(torchvision ``encoder.layers.encoder_layer_11.ln_1``, timm ``blocks.11.norm1``, a Keras
ViT's last ``LayerNormalization`` before its last ``MultiHeadAttention``). This is
pytorch-grad-cam's advice: a ViT classifies from the class token of the last block's output, and
that token ignores the patch tokens of the same output (the final norm is per token), so their
gradient is exactly zero there; at the last block's input the class token still attends to them.
Without such a pair the rule refuses (pass ``layer=``). Swin (torch) holds NHWC maps, not tokens,
so the first rule applies to it (``permute``, the model's own NHWC -> NCHW of the normed last stage).

Before answering, the rule refuses two cases that would give a plausible-looking wrong map:

- **Token models a backend does not reshape.** When layers after ``T`` output token sequences
  (tokens, dim) that are not grids (no layout), ``T`` is not the model's last representation.
- **Channels-last tensors of unknown layout.** Backends report each map's layout (detected, see
  ``polyviz_torch._probe``); for a backend that does not (``layout`` None), a torch-style tensor
  laid out (N, H, W, C) would be reported as if it were (N, C, H, W). When ``T``'s aspect ratio
  differs from the first map's by more than :data:`ASPECT_TOLERANCE` and its channel count is no
  larger than a side, the layout is refused rather than guessed.

Both say to pass ``layer=`` explicitly. Backends that do not number tensors (``tensor`` is None) get
the earlier rule: the last spatial layer that is not a container, preferring maps larger than 1 x 1.

Outcomes (random weights): torchvision ResNet ``layer4``, Inception v3 ``Mixed_7c``, ConvNeXt
``features.7``, EfficientNet ``features.8``, MobileNet v2 ``features.18``, MobileNet v3 small
``features.12``, RegNet ``trunk_output`` (its stem is a separate module), Swin ``permute`` (the
model's own NHWC -> NCHW permute of the final normed stage), ViT ``encoder.layers.encoder_layer_11.ln_1``,
DenseNet ``features.norm5``: DenseNet
applies its last ReLU functionally (``F.relu`` in ``forward``), which no hook can name, so the map
is taken at the tensor that ReLU reads, the layer pytorch-grad-cam documents for DenseNet
(``model.features[-1]``). Keras applications: ResNet50 ``conv5_block3_out``, DenseNet121 ``relu``,
MobileNetV2 ``out_relu``, ConvNeXtTiny the raw ``add`` op that ends the last block.
"""

from __future__ import annotations

from collections.abc import Sequence

from polyviz.errors import LayerError
from polyviz.layout import TOKENS
from polyviz.protocol import LayerInfo

__all__ = ["pick_default_layer", "CONTAINER_TYPES", "ASPECT_TOLERANCE"]

#: Framework types of pure containers, skipped by the fallback rule (no tensor numbers).
CONTAINER_TYPES = {"Sequential", "ModuleList", "ModuleDict", "Functional", "Model"}

#: How far (as a factor) a map's aspect ratio may differ from the first map's before its layout
#: is suspected to be channels-last.
ASPECT_TOLERANCE = 4.0


def _area(info: LayerInfo) -> int:
    h, w = info.output_shape[:2]  # type: ignore[index]
    return int(h or 0) * int(w or 0)


def _spatial(info: LayerInfo) -> bool:
    return info.spatial and all(d is not None for d in info.output_shape)  # type: ignore[union-attr]


def pick_default_layer(infos: Sequence[LayerInfo]) -> str:
    """The default CAM layer among ``infos`` (``Backend.layers()``), by the rule of this module."""
    numbered = [info for info in infos if info.tensor is not None and _spatial(info)]
    if not numbered:
        return _fallback(infos)
    maps = [info for info in numbered if _area(info) > 1] or numbered
    last = max(info.tensor for info in maps)  # type: ignore[type-var]
    candidates = [(i, info) for i, info in enumerate(infos) if info.tensor == last]
    first_map = min(i for i, info in enumerate(infos) if _spatial(info))
    blocks = [info for i, info in candidates if i > first_map] or [info for _, info in candidates]
    chosen = blocks[0]
    if chosen.layout == TOKENS:
        return _transformer_layer(infos)
    _check_tokens(infos, chosen, last)
    _check_layout(numbered, chosen)
    return chosen.name


def _transformer_layer(infos: Sequence[LayerInfo]) -> str:
    """The norm at the input of the last attention block (see the module docstring)."""
    attention = [i for i, info in enumerate(infos) if "attention" in info.type.lower()]
    if attention:
        norms = [info for info in infos[: attention[-1]] if "norm" in info.type.lower() and info.layout == TOKENS]
        if norms:
            return norms[-1].name
    raise LayerError(
        "layer: this model's last map is a token grid, but no normalisation layer before an attention "
        "layer was found to take the CAM at (the last block's output gives the class token no patch "
        "gradient); pass layer= explicitly"
    )


def _fallback(infos: Sequence[LayerInfo]) -> str:
    spatial = [info for info in infos if info.spatial and info.type not in CONTAINER_TYPES]
    # a 1x1 map (torch's AdaptiveAvgPool2d(1) as global pooling) is no CAM layer: skip it if possible
    spatial = [info for info in spatial if tuple(info.output_shape[:2]) != (1, 1)] or spatial  # type: ignore[index]
    if not spatial:
        raise LayerError("layer: this model has no layer with a spatial map; pass layer= explicitly")
    return spatial[-1].name


def _check_tokens(infos: Sequence[LayerInfo], chosen: LayerInfo, last: int) -> None:
    for info in infos:
        shape = info.output_shape
        if (info.tensor is not None and info.tensor > last and shape is not None and len(shape) == 2
                and (shape[0] or 0) > 1 and info.layout is None):
            raise LayerError(
                f"layer: the model's last spatial map is {chosen.name!r} {tuple(chosen.output_shape)}, "  # type: ignore[arg-type]
                f"but later layers work on token sequences ({info.name!r} outputs {tuple(shape)}): it is a "
                "patch embedding, not what the model decides on. CAMs on token layers need a reshape to a "
                "grid, not supported yet; pass layer= explicitly"
            )


def _check_layout(maps: Sequence[LayerInfo], chosen: LayerInfo) -> None:
    if chosen.layout is not None:
        return  # declared or detected by the backend
    first = min(maps, key=lambda info: info.tensor)  # type: ignore[arg-type,return-value]
    h0, w0 = first.output_shape[:2]  # type: ignore[index]
    h, w, c = chosen.output_shape  # type: ignore[misc]
    ratio = (h / w) / (h0 / w0)
    if c <= max(h, w) and not 1 / ASPECT_TOLERANCE <= ratio <= ASPECT_TOLERANCE:
        raise LayerError(
            f"layer: the model's last spatial map {chosen.name!r} reads as (h, w, C) = {(h, w, c)} against "
            f"{(h0, w0)} for the first map: it looks channels-last (N, H, W, C) read as channels-first. "
            "Channels-last layers are not supported yet; pass layer= explicitly (a layer whose output "
            "is (N, C, H, W))"
        )
