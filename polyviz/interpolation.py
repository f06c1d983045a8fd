"""The one definition of image resizing used by polyviz, identical in every backend.

Resizing is separable and linear, so it is written as two small matrices: ``out = Ry @ m @ Rx.T``.
Techniques use :func:`resize` in numpy; backends receive the same matrices from
:func:`resize_matrix` and apply them with their own matmul, so that masks built on a device equal
masks built here.

``bilinear`` uses half-pixel centres with edge clamping: the source coordinate of output pixel
``i`` is ``(i + 0.5) * n_in / n_out - 0.5``, clamped to ``[0, n_in - 1]``. For upsampling this
equals ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` and
``tf.image.resize(method="bilinear")``. ``nearest`` takes source pixel
``floor((i + 0.5) * n_in / n_out)`` (torch's ``nearest-exact``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from polyviz.errors import InputError

__all__ = ["resize_matrix", "resize", "MODES"]

MODES = ("bilinear", "nearest")


@lru_cache(maxsize=256)
def _matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        src = np.minimum(np.floor((rows + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
        mat[rows, src] = 1.0
    else:
        src = np.clip((rows + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        np.add.at(mat, (rows, i0), 1.0 - frac)
        np.add.at(mat, (rows, i1), frac)
    mat = mat.astype(np.float32)
    mat.setflags(write=False)
    return mat


def resize_matrix(n_in: int, n_out: int, mode: str = "bilinear") -> np.ndarray:
    """(n_out, n_in) float32 matrix that resizes one axis from ``n_in`` to ``n_out`` samples."""
    if mode not in MODES:
        raise InputError(f"upsample: expected one of {MODES}, got {mode!r}")
    if n_in < 1 or n_out < 1:
        raise InputError(f"size: cannot resize {n_in} -> {n_out}")
    return _matrix(int(n_in), int(n_out), mode)


def resize(maps: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize (..., h, w) maps to (..., H, W) with the polyviz definition; float32."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise InputError(f"maps: expected at least 2 dimensions (h, w), got shape {maps.shape}")
    ry = resize_matrix(maps.shape[-2], size[0], mode)
    rx = resize_matrix(maps.shape[-1], size[1], mode)
    return np.einsum("Hh,...hw,Ww->...HW", ry, maps, rx, optimize=True).astype(np.float32)
