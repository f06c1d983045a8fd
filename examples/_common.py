"""What both framework examples share: an input image and a VGG16 with the best weights at hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import polyviz
from polyviz.errors import WeightsNotFoundError


def load_image(path: str | None, size: int = 224) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1]: the file given, or a synthetic scene when none is."""
    from PIL import Image

    if path:
        return np.asarray(Image.open(path).convert("RGB").resize((size, size)), np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * xx, 0.4 + 0.2 * yy, 0.5 - 0.3 * xx * yy], axis=-1)
    disc = (yy - 0.45) ** 2 + (xx - 0.6) ** 2 < 0.04
    img[disc] = [0.9, 0.2, 0.1]
    return img.astype(np.float32)


def vgg16(backend: str):
    """ImageNet VGG16 when its weights file is in the framework's cache, else seeded weights."""
    try:
        return polyviz.models.vgg16(backend, weights="imagenet"), polyviz.models.preprocess_for(backend)
    except WeightsNotFoundError as exc:
        print(f"note: {exc}\n      using seeded random weights instead", file=sys.stderr)
        return polyviz.models.vgg16(backend, seed=0), None


def out_dir(name: str) -> Path:
    path = Path(sys.argv[2] if len(sys.argv) > 2 else f"polyviz-out/{name}")
    path.mkdir(parents=True, exist_ok=True)
    return path
