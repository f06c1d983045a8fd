"""Argument checks shared by the renderers: every bad input becomes an :class:`InputError` naming it."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError

__all__ = ["as_array", "as_map", "as_attribution", "as_image01", "as_picture", "check_fraction", "check_int"]


def as_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a real numeric, finite numpy array (framework tensors via ``__array__``/``.numpy()``)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is the caller's input error
        raise InputError(f"{name}: expected an array, got {type(value).__name__} ({exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return arr


def as_map(value: Any, name: str = "map2d") -> np.ndarray:
    """A (H, W) float64 map; (H, W, 1) is accepted and squeezed."""
    arr = as_array(value, name)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D (H, W) map, got shape {arr.shape}"
            + (" (for an (H, W, C) attribution, sum over C or use gradient_image/grayscale)" if arr.ndim == 3 else "")
        )
    return arr.astype(np.float64)


def as_attribution(value: Any, name: str = "attr_hwc") -> np.ndarray:
    """A channels-last (H, W, C) float64 attribution; a (H, W) map becomes (H, W, 1)."""
    arr = as_array(value, name)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(f"{name}: expected a channels-last (H, W, C) attribution, got shape {arr.shape}")
    if arr.shape[-1] > 4 and arr.shape[0] in (1, 3):
        raise InputError(
            f"{name}: expected channels-last (H, W, C), got shape {arr.shape} which looks channels-first; "
            "transpose it with .transpose(1, 2, 0)"
        )
    return arr.astype(np.float64)


def as_image01(value: Any, name: str = "image", value_range: tuple[float, float] | None = None) -> np.ndarray:
    """An (H, W, 3) float64 RGB image in [0, 1].

    uint8 (and other integer) images are divided by 255; float images inside [0, 1] are kept, float
    images inside [0, 255] (with values above 1) are divided by 255, and other float images (e.g.
    mean-subtracted network inputs) are min-max stretched to [0, 1], unless ``value_range=(lo, hi)``
    says what black and white are. Grey (H, W) or (H, W, 1) images are
    repeated to RGB; an alpha channel (H, W, 4) is dropped.
    """
    arr = as_array(value, name)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: expected an (H, W, 3), (H, W, 1) or (H, W) image, got shape {arr.shape}")
    arr = arr[..., :3]
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise InputError(f"value_range: expected (low, high) with high > low, got {value_range!r}")
        out = (arr.astype(np.float64) - lo) / (hi - lo)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise InputError(f"{name}: integer images must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        out = arr.astype(np.float64) / 255.0
    else:
        out = arr.astype(np.float64)
        lo, hi = out.min(), out.max()
        if lo >= 0 and 1 < hi <= 255:
            out = out / 255.0
        elif lo < 0 or hi > 1:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.clip(out, 0.0, 1.0)


def as_picture(value: Any, name: str) -> np.ndarray:
    """A displayable uint8 picture (H, W, 3) or (H, W, 4): uint8 taken as is, float must lie in [0, 1]."""
    arr = as_array(value, name)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) picture, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 1:
            raise InputError(
                f"{name}: expected uint8 or float in [0, 1], got {arr.dtype} in [{arr.min()}, {arr.max()}]; "
                "render raw attributions with polyviz.render.heatmap (or similar) first"
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def check_fraction(value: Any, name: str) -> float:
    """A float in [0, 1]."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= f <= 1.0:
        raise InputError(f"{name}: expected a number in [0, 1], got {value!r}")
    return f


def check_int(value: Any, name: str, minimum: int = 0) -> int:
    """An int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)
