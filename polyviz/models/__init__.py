"""Models: VGG16/VGG19 in every backend, ImageNet weights, seeded random weights, conversion.

``polyviz.models.vgg16(backend="torch", weights="imagenet")`` gives torchvision's VGG16 with the
checkpoint from torch hub's cache; ``backend="keras"`` gives ``keras.applications.VGG16`` with the
file from ``~/.keras/models``. Offline and absent, the call fails at once naming the file and the
directory to put it in. ``seed=`` draws the weights with numpy instead, identical in both
frameworks, so the two models compute the same function.
"""

from __future__ import annotations

from typing import Any

from polyviz.errors import InputError
from polyviz.models.convert import Converted, convert
from polyviz.models.demo import DEMO_CLASSES, demo, demo_spec
from polyviz.models.spec import VGG_CONFIGS, NetworkSpec, random_weights, vgg_spec
from polyviz.preprocess import Preprocess
from polyviz.protocol import Capability
from polyviz.registry import backend_class

__all__ = [
    "vgg16", "vgg19", "convert", "Converted", "preprocess_for", "seeded_vgg_spec", "NetworkSpec",
    "demo", "demo_spec", "DEMO_CLASSES",
]

#: The preprocessing each framework's ImageNet VGG weights were trained with (images in [0, 1]).
_PREPROCESS = {"torch": Preprocess.torchvision(input_range=1.0), "keras": Preprocess.caffe(input_range=1.0)}


def preprocess_for(backend: str, input_range: float = 1.0) -> Preprocess:
    """The preprocessing of the ImageNet VGG weights of ``backend`` for images in [0, input_range]:
    torchvision mean/std for torch, Keras' 'caffe' (BGR, mean subtraction) for keras."""
    if backend == "torch":
        return Preprocess.torchvision(input_range)
    if backend == "keras":
        return Preprocess.caffe(input_range)
    raise InputError(f"backend: expected 'torch' or 'keras', got {backend!r}")


def seeded_vgg_spec(name: str, backend: str, input_shape: tuple[int, int, int] = (224, 224, 3), classes: int = 1000) -> NetworkSpec:
    """The spec of ``name`` laid out as each framework ships it (torchvision: adaptive pool and
    dropout; Keras: softmax head). The weights of the two are the same by layer name."""
    if name not in VGG_CONFIGS:
        raise InputError(f"name: expected one of {sorted(VGG_CONFIGS)}, got {name!r}")
    if backend == "torch":
        return vgg_spec(VGG_CONFIGS[name], input_shape=input_shape, classes=classes, dropout=0.5, adaptive_pool=(7, 7))
    return vgg_spec(VGG_CONFIGS[name], input_shape=input_shape, classes=classes, classifier_activation="softmax")


def _vgg(name: str, backend: str, weights: Any, seed: int | None) -> Any:
    cls = backend_class(backend)
    if seed is not None:
        if weights is not None:
            raise InputError("seed: give either weights= or seed=, not both")
        if Capability.BUILD not in cls.capabilities:
            raise InputError(f"seed: backend {backend!r} cannot build models from numpy weights")
        spec = seeded_vgg_spec(name, backend)
        model, _ = cls.build(spec, random_weights(spec, seed))
        return model
    if Capability.ZOO not in cls.capabilities:
        raise InputError(f"backend: {backend!r} provides no VGG builders (no 'zoo' capability)")
    return cls.vgg(name, weights)


def vgg16(backend: str = "torch", weights: Any = None, *, seed: int | None = None) -> Any:
    """VGG16 (Simonyan & Zisserman 2014, arXiv:1409.1556) in ``backend``.

    ``weights``: None (the framework's random init), "imagenet" (local cache, else download, else a
    clear error naming the file), or a path to a weights file. ``seed``: numpy-drawn He-normal
    weights, identical in every framework.
    """
    return _vgg("vgg16", backend, weights, seed)


def vgg19(backend: str = "torch", weights: Any = None, *, seed: int | None = None) -> Any:
    """VGG19 (Simonyan & Zisserman 2014) in ``backend``; arguments as for :func:`vgg16`."""
    return _vgg("vgg19", backend, weights, seed)
