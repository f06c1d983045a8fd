"""A copy of a Keras model with some layers' weights replaced (``Backend.with_weights``)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from polyviz.errors import InputError, ModelError
from polyviz_keras._graph import iter_layers

__all__ = ["reweighted_copy"]


def reweighted_copy(model: Any, weights: dict[str, dict[str, np.ndarray]]) -> Any:
    """``keras.models.clone_model(model)`` (nested functional / Sequential models are cloned too)
    with every weight copied from ``model`` and then the named layers' weights (``outer/inner``
    names for nested layers; keys as ``layer_weights`` gives them) replaced. The user's model is
    only read."""
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as exc:
        raise ModelError(f"model: cannot clone a {type(model).__qualname__} with keras.models.clone_model: {exc}") from exc
    layers = dict(iter_layers(clone))
    for name, given in weights.items():
        layer = layers.get(name)
        if layer is None:
            raise ModelError(f"model: the clone has no layer {name!r}")
        variables = {(var.path.rsplit("/", 1)[-1] if "/" in var.path else var.name): var for var in layer.weights}
        for key, value in given.items():
            var = variables.get(key)
            if var is None:
                raise InputError(f"weights: layer {name!r} has no weight {key!r}")
            var.assign(np.asarray(value).astype(var.dtype))
    return clone
