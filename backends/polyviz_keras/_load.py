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

Keras lets a process-wide ``keras.config.enable_unsafe_deserialization()`` override an explicit
``safe_mode=True`` for ``.keras`` files (``deserialize_keras_object`` prefers the global), so
polyviz also reads the architecture JSON itself, before Keras, and refuses any serialized Python
lambda (``__lambda__``, or a legacy ``function_type: lambda``) whatever the process settings.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

from polyviz.errors import InputError, ModelError, UntrustedFileError

__all__ = ["load_model"]


def _architecture(path: str) -> Any:
    """The architecture JSON of a ``.keras`` archive (``config.json``) or a legacy ``.h5`` file (the
    ``model_config`` attribute), parsed, without Keras; None when it cannot be read (Keras then says why)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
        if text is None:
            return None
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except Exception:
        return None


def _holds_code(config: Any) -> bool:
    """Whether an architecture JSON holds a serialized Python function (a Lambda layer's bytecode)."""
    if isinstance(config, dict):
        if config.get("class_name") == "__lambda__" or config.get("function_type") == "lambda":
            return True
        return any(_holds_code(v) for v in config.values())
    if isinstance(config, list):
        return any(_holds_code(v) for v in config)
    return False


def _refuse_code(path: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"model: {path!r} holds Python code (a Lambda layer's bytecode); loading it can run arbitrary code, "
        "so polyviz loads Keras files with safe_mode=True; build the model in Python, load its weights "
        "(model.load_weights) and pass the model object to the API"
    )


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> Any:
    """The Keras model saved at ``source`` (``model.save(path)``), loaded with ``safe_mode=True`` and
    without compiling; ``weights``: a ``.weights.h5`` file to load into it. A file whose config
    holds code (a ``Lambda`` layer) raises :class:`polyviz.errors.UntrustedFileError`."""
    import keras

    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"model: no Keras model file {path!r}")
    if _holds_code(_architecture(path)):
        raise _refuse_code(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise _refuse_code(path) from None
        raise ModelError(f"model: cannot load {path!r} with Keras ({type(exc).__name__}: {text[:200]})") from None
    if weights is not None:
        try:
            model.load_weights(os.fspath(weights))
        except Exception as exc:
            raise ModelError(f"weights: cannot load {os.fspath(weights)!r} into {path!r} ({type(exc).__name__}: {exc})") from exc
    return model
