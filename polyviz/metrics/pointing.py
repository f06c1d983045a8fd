"""The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop",
arXiv:1608.00507): does the map's maximum fall on the object? The one definition in polyviz
(``polyviz demo``'s table and the tests use it too)."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import as_map, attributions, check_aspect, given_attributions, prepare
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess
from polyviz.protocol import range_already_checked

__all__ = ["pointing_game", "pointing_hits", "explanation_map", "zhang_tolerance"]


def zhang_tolerance(size: int) -> float:
    """Zhang et al.'s tolerance (15 px at 224 px) scaled to an image side of ``size`` pixels."""
    return 15.0 * float(size) / 224.0


def explanation_map(explanation: Any) -> np.ndarray:
    """(N, h, w) magnitude map the pointing game looks at: the layer-resolution map where the
    method has one (CAMs: the peak of the map the method computed, not of its bilinear upsampling,
    which is flat over half a cell at the border), else ``|map|`` or the sum of ``|attribution|``
    over channels at input resolution."""
    layer = getattr(explanation, "layer_attribution", None)
    if layer is not None:
        return np.abs(np.asarray(layer, np.float64))
    a = np.abs(np.asarray(explanation.attribution, np.float64))
    if a.ndim == 3:
        return a
    return a.sum(axis=1) if getattr(explanation, "layout", "NHWC") == "NCHW" else a.sum(axis=-1)


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(N,) bool: the peak of each map (N, h, w) lies on its object mask (N, H, W).

    The peak is the first maximum of the map, placed at its cell's centre in mask pixels (a map
    coarser than the mask has its cells' centres between pixels). A hit: a mask pixel within
    ``tolerance`` pixels of the peak (Zhang et al. use 15 px at 224 px); with no tolerance, the
    pixel under the peak, or one of the pixels around a centre that falls between pixels.
    """
    maps = np.asarray(maps, np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
        raise InputError(f"masks: expected one (H, W) mask per map, got maps {maps.shape} and masks {masks.shape}")
    n, h, w = maps.shape
    big_h, big_w = masks.shape[1:]
    if h > big_h or w > big_w:
        raise InputError(f"masks: expected masks at least as large as the maps {(h, w)}, got {(big_h, big_w)}")
    check_aspect((h, w), (big_h, big_w), "maps")
    if not isinstance(tolerance, int | float) or tolerance < 0:
        raise InputError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
    top = maps.reshape(n, -1).argmax(axis=1)
    py = (top // w + 0.5) * big_h / h - 0.5
    px = (top % w + 0.5) * big_w / w - 0.5
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    d2 = (yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2
    nearest = np.sqrt(np.where(masks, d2, np.inf).min(axis=(1, 2)))
    return nearest <= max(float(tolerance), np.sqrt(0.5)) + 1e-9


@metric("localisation", higher_is_better=True, reference="Zhang et al. 2016",
        checked="quantus.PointingGame (aligned; an empty mask is a miss here, a hit in Quantus)")
def pointing_game(
    model: Any,
    x: Any,
    masks: np.ndarray,
    target: Any = None,
    *,
    method: str | None = "saliency",
    attribution: Any = None,
    tolerance: float = 0.0,
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    method_options: dict[str, Any] | None = None,
    **options: Any,
) -> np.ndarray:
    """Pointing-game hits per sample, (N,) bool (their mean is the accuracy).

    The map is that of ``method`` (any registered method; options as keywords or in
    ``method_options``) or the given ``attribution`` (an Explanation, whose layer-resolution map is
    used where it has one, see :func:`explanation_map`; or an array: maps (N, H, W) or input-shaped
    in the caller's layout), by magnitude; a hit as :func:`pointing_hits` says. ``masks``: (N, H, W)
    object masks. ``model`` and ``x`` may be None when the attribution is given: a raw input-shaped
    array is then read in ``layout`` or, when not given, in the one layout whose spatial axes fit the
    masks (refused when both do, e.g. (N, 16, 16, 16) against 16 x 16 masks); maps whose aspect ratio
    differs from the masks' are refused.

    ``tolerance`` (pixels, default 0): Zhang et al. count a hit within 15 px of the object at
    224 px, i.e. ``tolerance = 15 * H / 224`` at other sizes (:func:`zhang_tolerance`); polyviz
    defaults to 0 (the peak on the object) and every report states the tolerance it used. Quantus'
    ``PointingGame`` counts a sample with an empty mask as a hit; here it is a miss (nothing to
    point at).
    """
    if model is None:
        if attribution is None:
            raise InputError("model: needed to compute the maps; or pass attribution= (an Explanation or maps)")
        if hasattr(attribution, "attribution"):
            return pointing_hits(explanation_map(attribution), masks, tolerance)
        spatial = tuple(np.shape(masks)[1:3])
        a = given_attributions(None, None, None, method=None, attribution=attribution, options={},
                               spatial=spatial if len(spatial) == 2 else None, layout=layout)
        return pointing_hits(as_map(a, absolute=True), masks, tolerance)
    if attribution is None:
        from polyviz.api import explain

        setup = prepare(model, x, target, method=method, attribution=None,
                        options={**(method_options or {}), **options}, layer=layer, backend=backend,
                        preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
        with range_already_checked():  # prepare() warned once about x
            attribution = explain(setup.backend, setup.x, method, target=setup.targets, layer=layer,
                                  batch_size=batch_size, seed=setup.seed, progress=setup.progress, layout="NHWC",
                                  **setup.options)
    if hasattr(attribution, "attribution"):
        return pointing_hits(explanation_map(attribution), masks, tolerance)
    setup = prepare(model, x, target, method=None, attribution=attribution, options={}, backend=backend,
                    preprocess=preprocess, layout=layout, seed=seed, progress=progress)
    return pointing_hits(as_map(attributions(setup, attribution), absolute=True), masks, tolerance)
