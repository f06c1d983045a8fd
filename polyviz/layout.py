"""Image layouts: the caller's (NCHW or NHWC, batched or not) to polyviz's channels-last batch and back."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from polyviz.errors import InputError

__all__ = ["Layout", "to_channels_last", "from_channels_last", "LAYOUTS"]

LAYOUTS = ("NCHW", "NHWC")


class Layout(NamedTuple):
    """How the caller's array was laid out: 'NCHW' or 'NHWC', and whether it had a batch axis."""

    name: str
    batched: bool


def to_channels_last(x: np.ndarray, layout: str) -> tuple[np.ndarray, Layout]:
    """(N, H, W, C) float32 from an image or batch in ``layout`` ('NCHW' or 'NHWC')."""
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 3:
        batched = False
        arr = arr[None]
    elif arr.ndim == 4:
        batched = True
    else:
        raise InputError(
            f"x: expected one image ({layout[1:]}) or a batch ({layout}), got rank {arr.ndim} with shape {arr.shape}"
        )
    if layout == "NCHW":
        arr = np.transpose(arr, (0, 2, 3, 1))
    return np.ascontiguousarray(arr), Layout(layout, batched)


def from_channels_last(a: np.ndarray, layout: Layout) -> np.ndarray:
    """An input-shaped (N, H, W, C) array back in the caller's layout (batch axis kept: results are
    always batched, so that ``attribution[i]`` is sample i)."""
    if layout.name == "NCHW":
        a = np.transpose(a, (0, 3, 1, 2))
    return np.ascontiguousarray(a, dtype=np.float32)
