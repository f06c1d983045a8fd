"""Writing pictures: PNG files and PNG bytes (for notebooks' ``_repr_png_``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.render._atomic import atomic_write
from polyviz.render._check import as_picture

__all__ = ["save_png", "png_bytes"]


def _image(array: Any, name: str):
    from PIL import Image

    pic = as_picture(array, name)
    return Image.fromarray(np.ascontiguousarray(pic))  # RGB or RGBA from the shape


def png_bytes(array: Any) -> bytes:
    """The PNG encoding of a uint8 (or [0, 1] float) picture (H, W), (H, W, 3) or (H, W, 4)."""
    buf = io.BytesIO()
    _image(array, "array").save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: Any, path: str | Path) -> Path:
    """Write a uint8 (or [0, 1] float) picture (H, W), (H, W, 3) or (H, W, 4) as a PNG file at
    ``path`` (lossless, whatever the suffix), creating missing parent folders. Returns the path.
    The write is atomic and replaces a symbolic link at ``path`` rather than following it
    (:mod:`polyviz.render._atomic`)."""
    try:
        path = Path(path)
    except TypeError:
        raise InputError(f"path: expected a file path, got {type(path).__name__}") from None
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"path: {str(path)!r} is a directory; give a file name such as 'map.png'")
    img = _image(array, "array")
    return atomic_write(path, lambda fh: img.save(fh, format="PNG"))
