"""Keras models from files: ``.keras`` archives (and legacy ``.h5``) through ``keras.saving``,
always with ``safe_mode=True``.

What the files can carry. A ``.keras`` archive holds ``config.json`` (the architecture: layer
classes by name and their settings), ``model.weights.h5`` and ``metadata.json``. A legacy ``.h5``
file holds the same architecture as JSON (the ``model_config`` attribute), the weights as HDF5
datasets, and optionally the training config. Neither is a pickle. Code can reach a model only
through (a) a ``Lambda`` layer, whose function is stored as marshalled Python bytecode, and (b)
custom classes and functions named in the config. With ``safe_mode=True`` (which polyviz always
passes, even when ``keras.config.enable_unsafe_deserialization()`` was called) Keras 3 refuses
(a), for ``.h5`` as for ``.keras``, and resolves (b) only from registered objects and Keras'
own packages. A model that needs a Lambda layer: build it in Python, load its weights, and
pass the model object to the API. ``--weights`` files (``.weights.h5``) carry arrays only.
"""

from __future__ import annotations

import os
from typing import Any

from polyviz.errors import InputError, ModelError, UntrustedFileError

__all__ = ["load_model"]


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> Any:
    """The Keras model saved at ``source`` (``model.save(path)``), loaded with ``safe_mode=True`` and
    without compiling; ``weights``: a ``.weights.h5`` file to load into it. A file whose config
    holds code (a ``Lambda`` layer) raises :class:`polyviz.errors.UntrustedFileError`."""
    import keras

    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"model: no Keras model file {path!r}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise UntrustedFileError(
                f"model: {path!r} holds Python code (a Lambda layer's bytecode); loading it can run arbitrary code, "
                "so polyviz loads Keras files with safe_mode=True; build the model in Python, load its weights "
                "(model.load_weights) and pass the model object to the API"
            ) from None
        raise ModelError(f"model: cannot load {path!r} with Keras ({type(exc).__name__}: {text[:200]})") from None
    if weights is not None:
        try:
            model.load_weights(os.fspath(weights))
        except Exception as exc:
            raise ModelError(f"weights: cannot load {os.fspath(weights)!r} into {path!r} ({type(exc).__name__}: {exc})") from exc
    return model
