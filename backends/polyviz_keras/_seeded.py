"""keras.applications CNNs (ResNet50, MobileNetV2, EfficientNetB0, DenseNet121) with numpy-drawn
weights: He-normal kernels, N(0, 0.05) biases, random BatchNorm statistics and affine terms (as
``polyviz_torch._seeded``), and for EfficientNet's ``Normalization`` a random mean and variance."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from polyviz.errors import InputError

__all__ = ["GRAPH_MODELS", "seeded_model"]

#: polyviz name -> keras.applications constructor name.
GRAPH_MODELS = {"resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0",
                "densenet121": "DenseNet121"}


def seeded_model(name: str, seed: int = 0, input_shape: tuple[int, int, int] = (224, 224, 3)) -> Any:
    """keras.applications' ``name`` (a key or value of :data:`GRAPH_MODELS`) with seeded random weights."""
    key = {v.lower(): k for k, v in GRAPH_MODELS.items()}.get(name.lower(), name.lower())
    if key not in GRAPH_MODELS:
        raise InputError(f"name: expected one of {sorted(GRAPH_MODELS)}, got {name!r}")
    model = getattr(keras.applications, GRAPH_MODELS[key])(weights=None, input_shape=tuple(input_shape))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        cls = type(layer).__name__
        if cls in ("Conv2D", "DepthwiseConv2D", "Dense"):
            values = []
            for w in layer.get_weights():
                if w.ndim > 1:
                    fan_in = int(np.prod(w.shape[:-1])) if cls != "DepthwiseConv2D" else int(np.prod(w.shape[:2]))
                    values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape))
                else:
                    values.append(rng.normal(0.0, 0.05, w.shape))
            layer.set_weights(values)
        elif cls == "BatchNormalization":
            c = layer.moving_mean.shape[0]
            draw = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0.0, 0.1, c),
                    "moving_mean": rng.normal(0.0, 0.1, c), "moving_variance": rng.uniform(0.5, 1.5, c)}
            layer.set_weights([draw[v.name] for v in layer.weights])
        elif cls == "Normalization":
            shape = layer.adapt_mean.shape
            layer.adapt_mean.assign(rng.normal(0.0, 0.1, shape))
            layer.adapt_variance.assign(rng.uniform(0.5, 1.5, shape))
            layer.finalize_state()
    return model
