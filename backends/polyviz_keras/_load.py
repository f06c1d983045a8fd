"""Keras models from files: ``.keras`` archives (and legacy ``.h5``) through ``keras.saving``."""

from __future__ import annotations

import os
from typing import Any

from polyviz.errors import InputError, ModelError

__all__ = ["load_model"]


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> Any:
    """The Keras model saved at ``source`` (``model.save(path)``), loaded without compiling;
    ``weights``: a ``.weights.h5`` file to load into it."""
    import keras

    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"model: no Keras model file {path!r}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise ModelError(f"model: cannot load {path!r} with Keras ({type(exc).__name__}: {exc})") from exc
    if weights is not None:
        try:
            model.load_weights(os.fspath(weights))
        except Exception as exc:
            raise ModelError(f"weights: cannot load {os.fspath(weights)!r} into {path!r} ({type(exc).__name__}: {exc})") from exc
    return model
