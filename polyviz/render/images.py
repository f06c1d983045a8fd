"""Single pictures from one map or attribution: heat map, overlay, masked image, alpha scaling,
original, and the gradient pictures of Simonyan et al. (2014) / Springenberg et al. (2015) as drawn
by Ozbulak's pytorch-cnn-visualizations (coloured gradient, grayscale, positive/negative saliency).

Inputs: maps (H, W) and attributions (H, W, C) channels-last, raw float; images uint8 or float in
any range (see :func:`polyviz.render._check.as_image01`). Outputs: uint8 (H, W, 3) unless said.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.render._check import as_attribution, as_image01, as_map, check_fraction
from polyviz.render.colour import Cmap, check_percentile, check_sign, colormap, normalise, to_uint8

__all__ = [
    "heatmap",
    "overlay",
    "masked_image",
    "alpha_scaled",
    "original",
    "gradient_image",
    "grayscale",
    "positive_negative",
    "resize_map",
]


def resize_map(map2d: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (h, w) map to ``shape`` = (H, W) (a CAM at layer resolution to the
    image's); returned unchanged when already that size."""
    if tuple(map2d.shape) == tuple(shape):
        return map2d
    from PIL import Image

    img = Image.fromarray(np.asarray(map2d, dtype=np.float32), mode="F")
    return np.asarray(img.resize((int(shape[1]), int(shape[0])), Image.Resampling.BILINEAR), dtype=np.float64)


def _size(size: Any) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise InputError(f"size: expected (height, width) in pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _map_for(image01: np.ndarray, map2d: Any) -> np.ndarray:
    m = as_map(map2d, "map2d")
    return resize_map(m, image01.shape[:2])


def heatmap(
    map2d: Any,
    *,
    sign: str = "absolute",
    cmap: Cmap = None,
    clip_percentile: float | None = None,
    vmax: float | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The map as a colour picture: :func:`~polyviz.render.colour.normalise` then the colour map
    (``cmap`` None: 'jet', or 'bwr' for ``sign='all'``). (H, W) in, uint8 (H, W, 3) out, or
    ``size`` = (height, width) out: the raw map is resized bilinearly first (e.g. a 7x7 CAM to 224x224)."""
    m = as_map(map2d, "map2d")
    if size is not None:
        m = resize_map(m, _size(size))
    return to_uint8(colormap(cmap, sign)(normalise(m, sign, clip_percentile, vmax)))


def overlay(
    image: Any,
    map2d: Any,
    *,
    alpha: float = 0.5,
    sign: str = "absolute",
    cmap: Cmap = None,
    clip_percentile: float | None = None,
    vmax: float | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The heat map blended over the image: ``(1 - alpha) * image + alpha * colour`` in [0, 1], then
    uint8 (the Grad-CAM paper's figures; alpha 0 is the image, 1 the bare heat map). A map smaller
    than the image (a CAM at layer resolution) is resized bilinearly first."""
    a = check_fraction(alpha, "alpha")
    img = as_image01(image, "image", value_range)
    m = _map_for(img, map2d)
    colour = colormap(cmap, sign)(normalise(m, sign, clip_percentile, vmax))
    return to_uint8((1.0 - a) * img + a * colour)


def masked_image(
    image: Any,
    map2d: Any,
    *,
    sign: str = "absolute",
    clip_percentile: float | None = None,
    vmax: float | None = None,
    threshold: float | None = None,
    fill: float | tuple[float, float, float] = 0.0,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The image seen through the map (Captum's 'masked_image').

    Without ``threshold``: ``image * w + fill * (1 - w)`` per pixel, ``w`` the normalised map in
    [0, 1] (sign 'all' uses ``|v| / scale``). With ``threshold`` t in [0, 1]: a hard mask, the pixels
    with ``w >= t`` are kept and the rest become ``fill`` (grey level in [0, 1] or an RGB triple).
    """
    img = as_image01(image, "image", value_range)
    m = _map_for(img, map2d)
    w = normalise(m, _one_signed(sign), clip_percentile, vmax)
    if threshold is not None:
        w = (w >= check_fraction(threshold, "threshold")).astype(np.float64)
    f = _fill(fill)
    return to_uint8(img * w[..., None] + f * (1.0 - w[..., None]))


def _one_signed(sign: str) -> str:
    """Visibility needs a one-signed weight: sign 'all' uses the magnitude."""
    sign = check_sign(sign)
    return "absolute" if sign == "all" else sign


def _fill(fill: Any, name: str = "fill") -> np.ndarray:
    """A grey level or an RGB triple in [0, 1], as float64 of shape () or (3,)."""
    try:
        arr = np.asarray(fill, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.full(2, np.nan)
    if arr.shape not in ((), (3,)) or not np.all((arr >= 0) & (arr <= 1)):
        raise InputError(f"{name}: expected a grey level or an RGB triple in [0, 1], got {fill!r}")
    return arr


def alpha_scaled(
    image: Any,
    map2d: Any,
    *,
    sign: str = "absolute",
    clip_percentile: float | None = None,
    vmax: float | None = None,
    background: float | tuple[float, float, float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Alpha scaling (Captum's 'alpha_scaling'): the image with its opacity set to the normalised
    map. uint8 RGBA (H, W, 4) with alpha ``round(255 * w)``; or, with ``background`` (grey level or
    RGB triple in [0, 1]), composited over it: uint8 RGB ``image * w + background * (1 - w)``."""
    img = as_image01(image, "image", value_range)
    m = _map_for(img, map2d)
    w = normalise(m, _one_signed(sign), clip_percentile, vmax)
    if background is None:
        return np.concatenate([to_uint8(img), to_uint8(w)[..., None]], axis=-1)
    bg = _fill(background, "background")
    return to_uint8(img * w[..., None] + bg * (1.0 - w[..., None]))


def original(image: Any, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """The image itself as uint8 RGB (uint8 kept, [0, 1] floats scaled, other floats stretched)."""
    return to_uint8(as_image01(image, "image", value_range))


def _rgb(a01: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] to uint8 RGB: C = 3 kept, C = 1 repeated, other C averaged to grey."""
    if a01.shape[-1] == 1:
        a01 = np.repeat(a01, 3, axis=-1)
    elif a01.shape[-1] != 3:
        a01 = np.repeat(a01.mean(axis=-1, keepdims=True), 3, axis=-1)
    return to_uint8(a01)


def gradient_image(attr_hwc: Any, *, clip_percentile: float | None = None) -> np.ndarray:
    """Coloured gradient: the attribution min-max stretched to [0, 1] over all pixels and channels,
    ``(a - min) / (max - min)`` (pytorch-cnn-visualizations' ``save_gradient_images``), each input
    channel shown as its colour channel. ``clip_percentile`` q first clips to the [100 - q, q]
    percentiles. A constant attribution gives black."""
    a = as_attribution(attr_hwc, "attr_hwc")
    if clip_percentile is not None:
        q = check_percentile(clip_percentile)
        lo, hi = np.percentile(a, sorted([100.0 - q, q]))
        a = np.clip(a, lo, hi)
    lo, hi = a.min(), a.max()
    out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return _rgb(out)


def grayscale(attr_hwc: Any, *, clip_percentile: float | None = 99.0) -> np.ndarray:
    """Grayscale saliency (pytorch-cnn-visualizations' ``convert_to_grayscale``): ``g = sum_c |a|``,
    then ``clip((g - min g) / (P_q(g) - min g), 0, 1)`` with P_q the ``clip_percentile``-th
    percentile (99 by default; None uses the maximum). uint8 (H, W, 3), grey."""
    a = as_attribution(attr_hwc, "attr_hwc")
    g = np.abs(a).sum(axis=-1)
    q = check_percentile(clip_percentile)
    top = g.max() if q is None else np.percentile(g, q)
    lo = g.min()
    out = np.clip((g - lo) / (top - lo), 0.0, 1.0) if top > lo else np.zeros_like(g)
    return _rgb(out[..., None])


def positive_negative(attr_hwc: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative saliency (pytorch-cnn-visualizations' ``get_positive_negative_saliency``):
    ``max(a, 0) / max(a)`` and ``max(-a, 0) / -min(a)`` per channel value, each as uint8 (H, W, 3)
    (colour for 3 channels, grey for 1). A side with no values of its sign is black."""
    a = as_attribution(attr_hwc, "attr_hwc")
    top, bottom = a.max(), a.min()
    pos = np.maximum(a, 0.0) / top if top > 0 else np.zeros_like(a)
    neg = np.maximum(-a, 0.0) / -bottom if bottom < 0 else np.zeros_like(a)
    return _rgb(pos), _rgb(neg)
