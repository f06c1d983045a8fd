"""Grids of tiles: every channel of a layer's activations (Chollet, *Deep Learning with Python*,
section 5.4.1 "Visualizing intermediate activations"), a few channels of several layers side by
side (:func:`layerwise`), and a layer's convolution kernels (first layer RGB kernels in colour as
in Krizhevsky et al. 2012, Fig. 3; deeper kernels one tile per input channel)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.render._check import as_array, check_int
from polyviz.render.colour import Cmap, colormap, to_uint8
from polyviz.render.figures import background_rgb, figure, upscale

__all__ = ["tile", "activation_grid", "layerwise", "filter_grid", "ACTIVATION_NORMS", "FILTER_NORMS"]

ACTIVATION_NORMS = ("std", "minmax", "global", "none")
FILTER_NORMS = ("tile", "filter", "global")


def tile(
    tiles: Sequence[np.ndarray | None],
    columns: int,
    *,
    pad: int = 1,
    background: Any = 255,
) -> np.ndarray:
    """Place equally sized uint8 (h, w, 3) tiles row by row, ``columns`` per row, ``pad`` pixels
    apart (no outer border): tile k's top-left corner is at ``((k // columns) * (h + pad),
    (k % columns) * (w + pad))``. None leaves its place blank (``background``)."""
    shown = [t for t in tiles if t is not None]
    if not shown:
        raise InputError("tiles: nothing to place")
    h, w = shown[0].shape[:2]
    columns = check_int(columns, "columns", 1)
    pad = check_int(pad, "pad", 0)
    rows = math.ceil(len(tiles) / columns)
    columns = min(columns, len(tiles))
    out = np.empty((rows * h + (rows - 1) * pad, columns * w + (columns - 1) * pad, 3), dtype=np.uint8)
    out[...] = background_rgb(background)
    for k, t in enumerate(tiles):
        if t is not None:
            y, x = (k // columns) * (h + pad), (k % columns) * (w + pad)
            out[y : y + h, x : x + w] = t
    return out


def _pick(n: int, chosen: Sequence[int] | int | None, name: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    if isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool):
        return list(range(min(check_int(chosen, name, 1), n)))
    try:
        idx = [int(i) for i in chosen]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a count or a list of indices, got {chosen!r}") from None
    bad = [i for i in idx if not -n <= i < n]
    if bad or not idx:
        raise InputError(f"{name}: expected indices in [0, {n}), got {chosen!r}")
    return [i % n for i in idx]


def _normalise_maps(maps: np.ndarray, normalize: str) -> np.ndarray:
    """(n, H, W) maps to [0, 1] as :func:`activation_grid` describes ``normalize``."""
    if normalize == "std":
        mean = maps.mean(axis=(1, 2), keepdims=True)
        std = maps.std(axis=(1, 2), keepdims=True)
        safe = np.where(std > 0, std, 1.0)
        return np.where(std > 0, np.clip((maps - mean) / safe * 64.0 + 128.0, 0.0, 255.0) / 255.0, 0.0)
    if normalize == "minmax":
        lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
        return np.where(hi > lo, (maps - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    if normalize == "global":
        lo, hi = maps.min(), maps.max()
        return (maps - lo) / (hi - lo) if hi > lo else np.zeros_like(maps)
    return np.clip(maps, 0.0, 1.0)


def activation_grid(
    maps_hwc: Any,
    *,
    columns: int | None = None,
    channels: Sequence[int] | int | None = None,
    normalize: str = "std",
    cmap: Cmap = "viridis",
    pad: int = 1,
    scale: int = 1,
    background: Any = 255,
) -> np.ndarray:
    """Every channel of a layer's activations as a tile, ``columns`` per row (default
    ``min(C, 16)``, Chollet's ``images_per_row``), through ``cmap`` (viridis, as ``plt.matshow``).

    ``maps_hwc``: (H, W, C) or (1, H, W, C). ``channels``: how many (an int) or which channels.
    ``normalize`` per tile: 'std' (Chollet: ``clip((x - mean) / std * 64 + 128, 0, 255) / 255``; a
    constant tile is 0), 'minmax' (``(x - min) / (max - min)``), 'global' (one min-max over all the
    tiles shown, so tiles compare) or 'none' (values clipped to [0, 1]). uint8 RGB.
    """
    a = as_array(maps_hwc, "maps_hwc").astype(np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"maps_hwc: expected (H, W, C) or (1, H, W, C) activations, got shape {a.shape}")
    if normalize not in ACTIVATION_NORMS:
        raise InputError(f"normalize: expected one of {ACTIVATION_NORMS}, got {normalize!r}")
    idx = _pick(a.shape[-1], channels, "channels")
    maps = a[..., idx].transpose(2, 0, 1)  # (n, H, W)
    colours = to_uint8(colormap(cmap)(_normalise_maps(maps, normalize)))  # (n, H, W, 3)
    cols = min(len(idx), 16) if columns is None else check_int(columns, "columns", 1)
    return tile([upscale(t, scale) for t in colours], cols, pad=pad, background=background)


def _resize_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) maps to (n, H, W) by nearest neighbour: output pixel (i, j) shows source pixel
    ``(i * h // H, j * w // W)`` (an integer enlargement repeats each pixel in a block)."""
    h, w = maps.shape[1:]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return maps[:, rows][:, :, cols]


def layerwise(
    activations: Mapping[str, Any],
    *,
    channels: Sequence[int] | int = 8,
    index: int = 0,
    size: int | tuple[int, int] | None = None,
    normalize: str = "std",
    cmap: Cmap = "viridis",
    titles: bool = True,
    pad: int = 1,
    font_size: int = 12,
    background: Any = 255,
) -> np.ndarray:
    """A few channels of several layers side by side: one row per layer (in the mapping's order,
    its name as the row title), the same ``channels`` in each row (an int: the first that many,
    fewer where a layer has fewer; a list: those channels, column titles ``ch k``), uint8 RGB.

    ``activations``: ``{layer: (h, w, C) or (N, h, w, C)}``, e.g. from :func:`polyviz.activations`;
    ``index`` picks the sample of a batch. Each tile is normalised on its own (``normalize`` as in
    :func:`activation_grid`: 'std', 'minmax', 'global' over the tiles of its row, or 'none') and
    drawn through ``cmap``, then resized by nearest neighbour to ``size`` (default: the largest map's
    (h, w)) so that deep 7x7 maps and shallow 112x112 ones line up. Tiles are ``pad`` pixels apart
    and from the border; ``titles=False`` leaves names out. This is the layer-by-layer view of
    Chollet's *Deep Learning with Python*, section 5.4.1, cut to a few channels per layer.
    """
    if not isinstance(activations, Mapping) or not activations:
        raise InputError("activations: expected a non-empty {layer name: (h, w, C) array} mapping")
    if normalize not in ACTIVATION_NORMS:
        raise InputError(f"normalize: expected one of {ACTIVATION_NORMS}, got {normalize!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"index: expected a sample index (int), got {index!r}")
    layers: dict[str, np.ndarray] = {}
    for name, value in activations.items():
        what = f"activations[{name!r}]"
        a = as_array(value, what).astype(np.float64)
        if a.ndim == 4:
            if not -len(a) <= index < len(a):
                raise InputError(f"index: {index} is out of range for {what} with {len(a)} samples")
            a = a[index]
        if a.ndim != 3:
            raise InputError(
                f"{what}: expected (h, w, C) or (N, h, w, C) feature maps, got shape {a.shape}"
                + (" (a dense layer has no maps to draw)" if a.ndim <= 2 else "")
            )
        layers[str(name)] = a
    if size is None:
        hw = (max(a.shape[0] for a in layers.values()), max(a.shape[1] for a in layers.values()))
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (check_int(size, "size", 1),) * 2
    else:
        try:
            hw = tuple(check_int(s, "size", 1) for s in size)  # type: ignore[union-attr]
        except TypeError:
            raise InputError(f"size: expected a tile side or (height, width), got {size!r}") from None
        if len(hw) != 2:
            raise InputError(f"size: expected a tile side or (height, width), got {size!r}")
    chosen = None if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool) else channels
    panels = []
    for name, a in layers.items():
        c = a.shape[-1]
        if chosen is not None:
            bad = [k for k in chosen if isinstance(k, (int, np.integer)) and not -c <= k < c]
            if bad:
                raise InputError(f"channels: {bad[0]} is out of range for layer {name!r} with {c} channels")
        idx = _pick(c, channels, "channels")
        maps = _resize_nearest(_normalise_maps(a[..., idx].transpose(2, 0, 1), normalize), hw)
        panels.append(list(to_uint8(colormap(cmap)(maps))))
    if titles:
        col_titles = None if chosen is None else [f"ch {int(k)}" for k in chosen]
        return figure(panels, row_titles=list(layers), col_titles=col_titles, pad=pad, font_size=font_size,
                      background=background)
    return figure(panels, pad=pad, background=background)


def _minmax(k: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    lo, hi = k.min(axis=axes, keepdims=True), k.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (k - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)


def filter_grid(
    kernels_khwio: Any,
    *,
    layout: str = "HWIO",
    rgb: bool | None = None,
    normalize: str = "tile",
    cmap: Cmap = "gray",
    columns: int | None = None,
    filters: Sequence[int] | int | None = None,
    inputs: Sequence[int] | int | None = None,
    pad: int = 1,
    scale: int | None = None,
    background: Any = 255,
) -> np.ndarray:
    """A layer's convolution kernels as tiles, uint8 RGB.

    ``kernels_khwio``: (kh, kw, in, out) as Keras stores them (``layout='HWIO'``) or (out, in, kh, kw)
    as PyTorch does (``layout='OIHW'``). With ``rgb`` (default: when there are 3 input channels, a
    first layer) every filter is one colour tile, its input channels read as R, G, B, ``columns``
    per row (default ``ceil(sqrt(n))``). Otherwise each row is one filter and each column one of its
    input channels, drawn through ``cmap``. ``normalize``: 'tile' (min-max per tile), 'filter'
    (min-max per filter over all its inputs) or 'global' (one min-max over everything shown, so
    strengths compare); a constant tile is mid-grey. ``filters`` / ``inputs``: how many or which.
    ``scale``: nearest-neighbour enlargement (default: tiles at least 16 pixels).
    """
    k = as_array(kernels_khwio, "kernels_khwio").astype(np.float64)
    if k.ndim != 4:
        raise InputError(f"kernels_khwio: expected a 4-D kernel array ({layout}), got shape {k.shape}")
    if layout == "OIHW":
        k = k.transpose(2, 3, 1, 0)
    elif layout != "HWIO":
        raise InputError(f"layout: expected 'HWIO' (Keras) or 'OIHW' (PyTorch), got {layout!r}")
    if normalize not in FILTER_NORMS:
        raise InputError(f"normalize: expected one of {FILTER_NORMS}, got {normalize!r}")
    kh, kw, n_in, n_out = k.shape
    if rgb is None:
        rgb = n_in == 3
    if rgb and n_in != 3:
        raise InputError(f"rgb: colour tiles need 3 input channels, the kernels have {n_in}")
    s = max(1, math.ceil(16 / max(kh, kw))) if scale is None else check_int(scale, "scale", 1)
    outs = _pick(n_out, filters, "filters")
    k = k[..., outs]
    if rgb:
        if inputs is not None:
            raise InputError("inputs: not used for colour (rgb) tiles")
        axes = {"tile": (0, 1, 2), "filter": (0, 1, 2), "global": (0, 1, 2, 3)}[normalize]
        v = _minmax(k, axes)  # (kh, kw, 3, n)
        tiles = [upscale(to_uint8(v[..., o]), s) for o in range(len(outs))]
        cols = math.ceil(math.sqrt(len(outs))) if columns is None else check_int(columns, "columns", 1)
        return tile(tiles, cols, pad=pad, background=background)
    ins = _pick(n_in, inputs, "inputs")
    k = k[:, :, ins, :]
    axes = {"tile": (0, 1), "filter": (0, 1, 2), "global": (0, 1, 2, 3)}[normalize]
    v = _minmax(k, axes)  # (kh, kw, i, o)
    colours = to_uint8(colormap(cmap)(v))  # (kh, kw, i, o, 3)
    if columns is not None:
        raise InputError("columns: per-input-channel grids have one column per input channel; use inputs=")
    tiles = [upscale(colours[:, :, i, o], s) for o in range(len(outs)) for i in range(len(ins))]
    return tile(tiles, len(ins), pad=pad, background=background)
