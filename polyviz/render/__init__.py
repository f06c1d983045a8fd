"""Rendering: raw attributions and activations to pictures (numpy, PIL and matplotlib colour maps).

Single pictures (:mod:`~polyviz.render.images`): :func:`heatmap`, :func:`overlay`,
:func:`masked_image`, :func:`alpha_scaled`, :func:`original`, :func:`gradient_image`,
:func:`grayscale`, :func:`positive_negative`, and :func:`picture` for any of them by style name.
Colour (:mod:`~polyviz.render.colour`): sign selection, percentile clipping, :func:`normalise`,
:func:`colormap`. Composites: :func:`figure` (panels with row/column titles), :func:`colorbar`,
:func:`activation_grid`, :func:`layerwise` (a few channels of several layers), :func:`filter_grid`. Output: :func:`save_png`, :func:`png_bytes`,
:func:`write_gallery` (an HTML page of PNGs) with :func:`html_table`.

Inputs are numpy arrays (framework tensors are converted): maps (H, W), attributions (H, W, C)
channels-last, images uint8 or float in any range. Outputs are uint8 (H, W, 3) unless said.
"""

from __future__ import annotations

from polyviz.render.colour import SIGNS, apply_cmap, colormap, default_cmap, normalise, select_sign, to_uint8
from polyviz.render.figures import colorbar, figure, upscale
from polyviz.render.gallery import html_table, write_gallery
from polyviz.render.grids import activation_grid, filter_grid, layerwise, tile
from polyviz.render.images import (
    alpha_scaled,
    gradient_image,
    grayscale,
    heatmap,
    masked_image,
    original,
    overlay,
    positive_negative,
    resize_map,
)
from polyviz.render.io import png_bytes, save_png
from polyviz.render.styles import STYLES, picture

__all__ = [
    "SIGNS",
    "STYLES",
    "activation_grid",
    "alpha_scaled",
    "apply_cmap",
    "colorbar",
    "colormap",
    "default_cmap",
    "figure",
    "filter_grid",
    "gradient_image",
    "grayscale",
    "heatmap",
    "html_table",
    "layerwise",
    "masked_image",
    "normalise",
    "original",
    "overlay",
    "picture",
    "png_bytes",
    "positive_negative",
    "resize_map",
    "save_png",
    "select_sign",
    "tile",
    "to_uint8",
    "upscale",
    "write_gallery",
]
