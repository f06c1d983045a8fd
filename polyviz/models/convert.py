"""Conversion of networks between frameworks: export from one backend, build in another.

The source backend reads the model as a framework-neutral spec with canonical weights (kernel
layouts and the flatten order normalised); the target backend builds it. VGG-style chains travel
as a :class:`~polyviz.models.spec.NetworkSpec` (built in torchvision VGG's layout); everything else
(residual adds, concatenations, squeeze-excitation products, BatchNorm, depthwise convolutions,
preprocessing layers) as a :class:`~polyviz.models.graph.GraphSpec`, a DAG read through
``torch.fx`` and Keras' functional graph. The layer map pairs layers whose outputs are equal:
torchvision's VGG16 ``features.29`` (the ReLU after the last conv) goes to Keras' ``block5_conv3``
(a conv with a fused ReLU); torchvision ResNet-18's block ``layer4.1`` to the Keras layer computing
its output (``layer4_1_relu_1``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from polyviz.errors import InputError
from polyviz.models.graph import GraphSpec
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
    """Convert ``model`` to framework ``to`` ("keras" or "torch"). Returns the new model and the
    map of layer names. VGG-style chains keep torchvision VGG's layout in torch; graphs (ResNet,
    MobileNetV2, EfficientNet, DenseNet, ...) become a ``GraphNet`` (torch) or a functional model
    (Keras) with a module / layer per node. Anything the interchange cannot express is refused with
    the structural reason (a shared layer, a constant in an add, a -inf padded max-pool over signed
    inputs, ...).

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
    if isinstance(spec, GraphSpec):  # source names are {source layer: node}
        layer_map = {src: target_names[node] for src, node in source_names.items() if node in target_names}
    else:
        layer_map = {
            source_names[layer.name]: target_names[layer.name]
            for layer in spec.layers
            if layer.name in source_names and layer.name in target_names
        }
    return Converted(new_model, layer_map)
