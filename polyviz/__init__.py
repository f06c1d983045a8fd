"""polyviz: see what a convolutional network sees, in PyTorch and Keras alike.

Every technique is written once against a small backend protocol (:mod:`polyviz.protocol`) and
runs unchanged on PyTorch and Keras/TensorFlow models. ``import polyviz`` imports no framework;
backends load their framework only when a model of theirs is used.
"""

from __future__ import annotations

from polyviz import datasets, models, render
from polyviz.api import explain, methods
from polyviz.errors import (
    BackendNotFoundError,
    CapabilityError,
    InputError,
    InputRangeWarning,
    LayerError,
    ModelError,
    PolyvizError,
    PolyvizWarning,
    TargetError,
    WeightsNotFoundError,
)
from polyviz.explanation import Explanation
from polyviz.inspect import activations, filters, layer_config, summary
from polyviz.optimisation import (
    OptimisationResult,
    adversarial,
    class_model,
    deep_dream,
    invert,
    visualize_filter,
)
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    DECONVNET,
    GUIDED,
    Backend,
    Boxes,
    Capability,
    ChannelMean,
    ClassScore,
    FeatureGroups,
    LayerDistance,
    LayerInfo,
    LayerNorm,
    LowResMasks,
    NativeCallable,
    Neuron,
    OutputWeighting,
    Rule,
)
from polyviz.registry import available_backends, backend_for, refresh
from polyviz.runs import run
from polyviz.targets import DetectionTarget, SegmentationTarget, SelectOutput

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Backend",
    "BackendNotFoundError",
    "Boxes",
    "Capability",
    "CapabilityError",
    "ChannelMean",
    "ClassScore",
    "DECONVNET",
    "FeatureGroups",
    "GUIDED",
    "InputError",
    "InputRangeWarning",
    "LayerDistance",
    "LayerError",
    "LayerInfo",
    "LayerNorm",
    "LowResMasks",
    "ModelError",
    "NativeCallable",
    "Neuron",
    "OutputWeighting",
    "PolyvizError",
    "PolyvizWarning",
    "Preprocess",
    "Rule",
    "SegmentationTarget",
    "DetectionTarget",
    "SelectOutput",
    "TargetError",
    "WeightsNotFoundError",
    "available_backends",
    "datasets",
    "explain",
    "activations",
    "filters",
    "layer_config",
    "summary",
    "methods",
    "models",
    "render",
    "Explanation",
    "backend_for",
    "refresh",
    "run",
    "OptimisationResult",
    "visualize_filter",
    "class_model",
    "deep_dream",
    "invert",
    "adversarial",
]


def __getattr__(name: str):
    """``polyviz.<method>(model, x, ...)`` for every registered method (``polyviz.gradcam``...)."""
    from polyviz.api import method_function
    from polyviz.techniques import load_all

    if not name.startswith("_") and name in load_all():
        return method_function(name)
    raise AttributeError(f"module 'polyviz' has no attribute {name!r}")
