"""Conversion of VGG-style networks between frameworks: export from one backend, build in another.

The source backend reads the model as a framework-neutral :class:`~polyviz.models.spec.NetworkSpec`
with canonical weights (kernel layouts and the flatten order normalised); the target backend
builds it. The layer map pairs layers whose outputs are equal: torchvision's VGG16 ``features.29``
(the ReLU after the last conv) goes to Keras' ``block5_conv3`` (a conv with a fused ReLU).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from polyviz.errors import InputError
from polyviz.protocol import Capability
from polyviz.registry import backend_class, detect

__all__ = ["Converted", "convert"]


class Converted(NamedTuple):
    """The converted model and ``layer_map`` {source layer name: target layer name} for every
    layer whose output is the same in both (conv, pool, dense...)."""

    model: Any
    layer_map: dict[str, str]


def convert(
    model: Any, to: str, *, backend: str | None = None, input_shape: tuple[int, int, int] | None = None
) -> Converted:
    """Convert a VGG-style ``model`` (conv, ReLU, max-pool, flatten, dense, dropout) to framework
    ``to`` ("keras" or "torch"). Returns the new model and the map of layer names.

    A softmax head is dropped when converting to torch (torch models output logits); polyviz's
    Keras backend scores pre-softmax logits by default, so attributions agree either way.
    ``input_shape`` (H, W, C): the input size, for a source that does not record one (a torch
    module is probed at 224 px, or the size its first dense layer implies, by default).
    """
    source = backend_class(backend) if backend is not None else detect(model)
    target = backend_class(to)
    for cls in (source, target):
        if Capability.BUILD not in cls.capabilities:
            raise InputError(f"to: backend {cls.name!r} cannot build or export models (no 'build' capability)")
    spec, weights, source_names = (source.export(model) if input_shape is None
                                   else source.export(model, input_shape=tuple(input_shape)))
    new_model, target_names = target.build(spec, weights)
    layer_map = {
        source_names[layer.name]: target_names[layer.name]
        for layer in spec.layers
        if layer.name in source_names and layer.name in target_names
    }
    return Converted(new_model, layer_map)
