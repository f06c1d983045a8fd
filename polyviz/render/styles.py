"""One entry point over every single-picture style, used by :meth:`polyviz.Explanation.render`."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from polyviz.errors import InputError, did_you_mean
from polyviz.render._check import as_array
from polyviz.render.images import (
    alpha_scaled,
    gradient_image,
    grayscale,
    heatmap,
    masked_image,
    original,
    overlay,
    positive_negative,
)

__all__ = ["STYLES", "picture"]


def _positive(attr_hwc: Any, **kw: Any) -> np.ndarray:
    return positive_negative(attr_hwc, **kw)[0]


def _negative(attr_hwc: Any, **kw: Any) -> np.ndarray:
    return positive_negative(attr_hwc, **kw)[1]


# style -> (function, what it takes: 'map' (H, W), 'attr' (H, W, C), 'image', 'image+map')
_TABLE = {
    "overlay": (overlay, "image+map"),
    "heatmap": (heatmap, "map"),
    "masked": (masked_image, "image+map"),
    "alpha": (alpha_scaled, "image+map"),
    "original": (original, "image"),
    "gradient": (gradient_image, "attr"),
    "grayscale": (grayscale, "attr"),
    "positive": (_positive, "attr"),
    "negative": (_negative, "attr"),
}
STYLES = tuple(_TABLE)


def _options(fn: Any) -> set[str]:
    target = positive_negative if fn in (_positive, _negative) else fn
    return {p.name for p in inspect.signature(target).parameters.values() if p.kind is p.KEYWORD_ONLY}


def picture(attribution: Any, image: Any = None, *, style: str = "overlay", **options: Any) -> np.ndarray:
    """Render one attribution in ``style``, uint8 (H, W, 3) (or RGBA for 'alpha' without background).

    ``attribution``: an (H, W) map or an (H, W, C) channels-last attribution; the map styles
    ('overlay', 'heatmap', 'masked', 'alpha') sum an (H, W, C) attribution over C (signed), the
    gradient styles ('gradient', 'grayscale', 'positive', 'negative') take it as is. ``image``: the
    input picture for 'overlay', 'masked', 'alpha' and 'original' ('overlay' without an image falls
    back to 'heatmap'). ``options`` go to the style's function (e.g. sign, cmap, alpha,
    clip_percentile, vmax); one it does not take is an error.
    """
    if style not in _TABLE:
        raise InputError(f"style: expected one of {STYLES}, got {style!r}.{did_you_mean(str(style), STYLES)}")
    if style == "overlay" and image is None:
        options.pop("alpha", None)
        options.pop("value_range", None)
        style = "heatmap"
    fn, takes = _TABLE[style]
    unknown = set(options) - _options(fn)
    if unknown:
        raise InputError(
            f"{sorted(unknown)[0]}: not an option of style {style!r}; it takes {sorted(_options(fn)) or 'none'}"
        )
    if "image" in takes and image is None:
        raise InputError(f"image: style {style!r} needs the input image, and none is available")
    if style == "original":
        return fn(image, **options)
    a = as_array(attribution, "attribution").astype(np.float64)
    if a.ndim not in (2, 3):
        raise InputError(f"attribution: expected (H, W) or (H, W, C), got shape {a.shape}")
    if takes == "attr":
        return fn(a, **options)
    m = a.sum(axis=-1) if a.ndim == 3 else a
    return fn(m, **options) if takes == "map" else fn(image, m, **options)
