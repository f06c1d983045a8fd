"""Colour: sign selection, outlier-percentile clipping, normalisation to [0, 1] and colour maps.

The display conventions follow Captum's ``visualization`` module (sign 'all' / 'positive' /
'negative' / 'absolute_value', outlier clipping) and the misc_functions of Ozbulak's
pytorch-cnn-visualizations: attributions stay raw and are only scaled here, for display.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polyviz.errors import InputError, did_you_mean

__all__ = [
    "SIGNS",
    "check_sign",
    "check_percentile",
    "Cmap",
    "select_sign",
    "scale_of",
    "normalise",
    "colormap",
    "default_cmap",
    "apply_cmap",
    "to_uint8",
]

SIGNS = ("all", "positive", "negative", "absolute")

#: A colour map: a matplotlib name ('jet', 'viridis', 'bwr', ...), a matplotlib Colormap, or any
#: callable taking an array of values in [0, 1] and returning (..., 3) or (..., 4) floats in [0, 1].
Cmap = str | Callable[[np.ndarray], Any] | None


def check_sign(sign: str) -> str:
    """``sign`` validated (Captum's 'absolute_value' accepted as 'absolute')."""
    if sign == "absolute_value":  # Captum's spelling
        return "absolute"
    if sign not in SIGNS:
        raise InputError(f"sign: expected one of {SIGNS}, got {sign!r}.{did_you_mean(str(sign), SIGNS)}")
    return sign


def select_sign(values: np.ndarray, sign: str = "absolute") -> np.ndarray:
    """The part of ``values`` that ``sign`` asks for, as float64.

    'absolute': |v|; 'positive': max(v, 0); 'negative': max(-v, 0) (so the strongest negative
    evidence is largest); 'all': v unchanged (signed).
    """
    sign = check_sign(sign)
    v = np.asarray(values, dtype=np.float64)
    if sign == "absolute":
        return np.abs(v)
    if sign == "positive":
        return np.maximum(v, 0.0)
    if sign == "negative":
        return np.maximum(-v, 0.0)
    return v


def check_percentile(clip_percentile: Any) -> float | None:
    """``clip_percentile`` validated: None or a float in (0, 100]."""
    if clip_percentile is None:
        return None
    try:
        q = float(clip_percentile)
    except (TypeError, ValueError):
        raise InputError(f"clip_percentile: expected None or a number in (0, 100], got {clip_percentile!r}") from None
    if not 0.0 < q <= 100.0:
        raise InputError(f"clip_percentile: expected None or a number in (0, 100], got {clip_percentile!r}")
    return q


def scale_of(selected: np.ndarray, clip_percentile: float | None = None) -> float:
    """The display scale of sign-selected values: the ``clip_percentile``-th percentile of their
    magnitudes (numpy's linear interpolation), or their largest magnitude when None. Values beyond it
    saturate, so that a few outliers do not wash out the rest of the map."""
    q = check_percentile(clip_percentile)
    mag = np.abs(selected)
    return float(mag.max() if q is None else np.percentile(mag, q))


def normalise(
    values: Any,
    sign: str = "absolute",
    clip_percentile: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Raw values to display values in [0, 1].

    With sign 'absolute', 'positive' or 'negative': ``clip(s / scale, 0, 1)`` where ``s`` is the
    sign-selected map, so zero attribution is always the bottom of the colour map. With sign 'all':
    ``0.5 + 0.5 * clip(v / scale, -1, 1)``, so zero is the middle (use a diverging map such as 'bwr').
    ``scale`` is ``vmax`` when given (use one ``vmax`` for maps you want to compare, e.g. the same
    method in two frameworks), else :func:`scale_of` (``clip_percentile``-th percentile or maximum).
    An all-zero map gives 0 (or 0.5 for 'all').
    """
    sign = check_sign(sign)
    s = select_sign(values, sign)
    if vmax is not None:
        try:
            scale = float(vmax)
        except (TypeError, ValueError):
            raise InputError(f"vmax: expected a positive number, got {vmax!r}") from None
        if not (np.isfinite(scale) and scale > 0):
            raise InputError(f"vmax: expected a positive number, got {vmax!r}")
        check_percentile(clip_percentile)
    else:
        scale = scale_of(s, clip_percentile)
    if sign == "all":
        if scale <= 0:
            return np.full_like(s, 0.5)
        return 0.5 + 0.5 * np.clip(s / scale, -1.0, 1.0)
    if scale <= 0:
        return np.zeros_like(s)
    return np.clip(s / scale, 0.0, 1.0)


def default_cmap(sign: str = "absolute") -> str:
    """'jet' for one-signed maps (Grad-CAM's convention), 'bwr' (blue-white-red) for signed ones."""
    return "bwr" if check_sign(sign) == "all" else "jet"


def colormap(cmap: Cmap = None, sign: str = "absolute") -> Callable[[np.ndarray], np.ndarray]:
    """A function from values in [0, 1] to (..., 3) float64 RGB in [0, 1].

    ``cmap``: a matplotlib colour-map name or Colormap object, any callable returning (..., 3) or
    (..., 4) colours, or None for :func:`default_cmap` of ``sign``.
    """
    if cmap is None:
        cmap = default_cmap(sign)
    if isinstance(cmap, str):
        from matplotlib import colormaps

        if cmap not in colormaps:
            raise InputError(
                f"cmap: unknown matplotlib colour map {cmap!r}.{did_you_mean(cmap, list(colormaps))}"
            )
        fn: Callable[[np.ndarray], Any] = colormaps[cmap]
    elif callable(cmap):
        fn = cmap
    else:
        raise InputError(f"cmap: expected a colour-map name, a Colormap or a callable, got {type(cmap).__name__}")

    def apply(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        try:
            rgb = np.asarray(fn(v), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - a user callable failing is an input error
            raise InputError(f"cmap: the colour map failed on values of shape {v.shape}: {exc}") from None
        if rgb.shape[:-1] != v.shape or rgb.shape[-1] not in (3, 4):
            raise InputError(
                f"cmap: expected colours of shape {v.shape + (3,)} or {v.shape + (4,)}, got {rgb.shape}"
            )
        return np.clip(rgb[..., :3], 0.0, 1.0)

    return apply


def apply_cmap(values01: np.ndarray, cmap: Cmap = None, sign: str = "absolute") -> np.ndarray:
    """(H, W) values in [0, 1] through a colour map: (H, W, 3) float64 RGB in [0, 1]."""
    return colormap(cmap, sign)(values01)


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    """Float colours in [0, 1] to uint8: ``round(clip(x, 0, 1) * 255)``."""
    return np.round(np.clip(np.asarray(rgb01, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
