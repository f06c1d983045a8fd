"""Keras VGG16/VGG19 with ImageNet weights from the Keras cache directory or a file."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import keras

from polyviz.errors import InputError, WeightsNotFoundError

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{name}/"
FILES = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
}
DOWNLOAD_TIMEOUT_S = 5.0


def keras_models_dir() -> Path:
    """``$KERAS_HOME/models`` (default ``~/.keras/models``), as Keras resolves it."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _download(url: str, target: Path) -> bool:
    """Try to download ``url`` to ``target`` with a short timeout; True on success."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
        tmp.replace(target)
        return True
    except (TimeoutError, OSError, ValueError):
        return False


def imagenet_file(name: str) -> Path:
    """The Keras ImageNet weights file of ``name``, downloaded if absent (or WeightsNotFoundError)."""
    filename = FILES[name]
    directory = keras_models_dir()
    path = directory / filename
    url = BASE_URL.format(name=name) + filename
    if path.is_file() or _download(url, path):
        return path
    raise WeightsNotFoundError(
        f"weights: {filename} is not in {directory} and could not be downloaded from {url}. "
        f"Download it there by hand (or set KERAS_HOME)."
    )


def vgg(name: str, weights: Any = None) -> Any:
    """``keras.applications.VGG16/VGG19(include_top=True)`` with weights None | "imagenet" | a path."""
    name = str(name).lower()
    if name not in FILES:
        raise InputError(f"name: expected 'vgg16' or 'vgg19', got {name!r}")
    builder = keras.applications.VGG16 if name == "vgg16" else keras.applications.VGG19
    path = None
    if weights is not None:  # the file first: a missing one fails before 138M parameters are built
        path = imagenet_file(name) if weights == "imagenet" else Path(os.fspath(weights)).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights: no weights file at {path}")
    model = builder(include_top=True, weights=None)
    if path is None:
        return model
    if path.name.endswith(".keras"):
        from polyviz_keras._load import load_model

        loaded = load_model(path)  # safe_mode=True, and no Lambda bytecode whatever Keras' globals say
        model.set_weights(loaded.get_weights())
    else:
        model.load_weights(path)
    return model
