"""Multi-panel figures (methods x images, with row and column titles) and colour bars, as uint8
arrays drawn with PIL, so that they can be saved, embedded in a gallery or shown in a notebook."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from polyviz.errors import InputError
from polyviz.render._check import as_picture, check_int
from polyviz.render.colour import Cmap, colormap, to_uint8
from polyviz.render.text import _check_text, draw_text, text_size

__all__ = ["figure", "colorbar", "upscale", "flatten_alpha", "background_rgb"]


def background_rgb(background: Any, name: str = "background") -> np.ndarray:
    """A background colour as a uint8 RGB triple: a grey level 0-255 or an (r, g, b) triple."""
    arr = np.asarray(background)
    if arr.shape == ():
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.number) or arr.min() < 0 or arr.max() > 255:
        raise InputError(f"{name}: expected a grey level 0-255 or an (r, g, b) triple, got {background!r}")
    return arr.astype(np.uint8)


def flatten_alpha(picture: np.ndarray, background: Any = 255) -> np.ndarray:
    """An RGBA uint8 picture composited over ``background`` (RGB pictures are returned as they are)."""
    if picture.shape[-1] != 4:
        return picture
    a = picture[..., 3:].astype(np.float64) / 255.0
    bg = background_rgb(background).astype(np.float64)
    return np.round(picture[..., :3] * a + bg * (1.0 - a)).astype(np.uint8)


def upscale(picture: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (each pixel becomes a scale x scale block)."""
    scale = check_int(scale, "scale", 1)
    if scale == 1:
        return picture
    return np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)


def _titles(titles: Sequence[str] | None, n: int, name: str) -> list[str] | None:
    if titles is None:
        return None
    if isinstance(titles, str) or len(titles) != n:
        raise InputError(f"{name}: expected a list of {n} strings, got {titles!r}")
    return [_check_text(t, f"{name}[{i}]") for i, t in enumerate(titles)]


def figure(
    panels: Sequence[Sequence[Any]],
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 4,
    scale: int = 1,
    font_size: int = 12,
    background: Any = 255,
    text_colour: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """A grid of pictures with titles, as one uint8 (H, W, 3) picture.

    ``panels[r][c]``: uint8 (or [0, 1] float) pictures (H, W), (H, W, 3) or (H, W, 4), or None for an
    empty cell; rows may be of different lengths. Each column is as wide as its widest panel (or its
    title), each row as tall as its tallest panel (or its title); panels are centred in their cells,
    ``pad`` pixels apart and from the border. Row titles go left of the rows, column titles above
    them, ``title`` above everything. ``scale`` enlarges every panel (nearest neighbour).
    """
    if isinstance(panels, np.ndarray) or not isinstance(panels, Sequence) or len(panels) == 0:
        raise InputError("panels: expected a non-empty list of rows, each a list of pictures")
    rows: list[list[np.ndarray | None]] = []
    for r, row in enumerate(panels):
        if isinstance(row, np.ndarray) or not isinstance(row, Sequence):
            raise InputError(f"panels[{r}]: expected a list of pictures, got {type(row).__name__}")
        rows.append(
            [None if p is None else upscale(flatten_alpha(as_picture(p, f"panels[{r}][{c}]"), background), scale)
             for c, p in enumerate(row)]
        )
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    if n_cols == 0:
        raise InputError("panels: every row is empty")
    rows = [row + [None] * (n_cols - len(row)) for row in rows]
    pad = check_int(pad, "pad", 0)
    font_size = check_int(font_size, "font_size", 1)
    rts = _titles(row_titles, n_rows, "row_titles")
    cts = _titles(col_titles, n_cols, "col_titles")
    if title is not None:
        _check_text(title, "title")
    bg = background_rgb(background)

    col_w = [max([p.shape[1] for p in (row[c] for row in rows) if p is not None], default=0) for c in range(n_cols)]
    row_h = [max([p.shape[0] for p in row if p is not None], default=0) for row in rows]
    ct_sizes = [text_size(t, font_size) for t in cts] if cts else []
    rt_sizes = [text_size(t, font_size) for t in rts] if rts else []
    col_w = [max(w, ct_sizes[c][0] if cts else 0) for c, w in enumerate(col_w)]
    row_h = [max(h, rt_sizes[r][1] if rts else 0) for r, h in enumerate(row_h)]
    left = max((w for w, _ in rt_sizes), default=0) + pad if rts else 0
    title_h = text_size(title, font_size)[1] + pad if title else 0
    head = max((h for _, h in ct_sizes), default=0) + pad if cts else 0
    width = left + sum(col_w) + (n_cols + 1) * pad
    if title:
        width = max(width, text_size(title, font_size)[0] + 2 * pad)
    height = title_h + head + sum(row_h) + (n_rows + 1) * pad

    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = bg
    xs = [left + pad + sum(col_w[:c]) + c * pad for c in range(n_cols)]
    ys = [title_h + head + pad + sum(row_h[:r]) + r * pad for r in range(n_rows)]
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            if p is not None:
                y = ys[r] + (row_h[r] - p.shape[0]) // 2
                x = xs[c] + (col_w[c] - p.shape[1]) // 2
                canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
    if not (title or rts or cts):
        return canvas
    img = Image.fromarray(canvas)
    if title:
        draw_text(img, ((width - text_size(title, font_size)[0]) // 2, pad), title, font_size, text_colour)
    for c, t in enumerate(cts or []):
        w, h = ct_sizes[c]
        draw_text(img, (xs[c] + (col_w[c] - w) // 2, title_h + pad + head - pad - h), t, font_size, text_colour, "center")
    for r, t in enumerate(rts or []):
        w, h = rt_sizes[r]
        draw_text(img, (pad, ys[r] + (row_h[r] - h) // 2), t, font_size, text_colour)
    return np.asarray(img)


def colorbar(
    cmap: Cmap = None,
    *,
    sign: str = "absolute",
    length: int = 256,
    thickness: int = 16,
    orientation: str = "vertical",
    labels: tuple[str, str] | None = None,
    font_size: int = 10,
    background: Any = 255,
) -> np.ndarray:
    """A colour bar for ``cmap`` (None: the default map for ``sign``) as uint8 RGB.

    Position i of ``length`` shows the colour of value ``i / (length - 1)``: left to right when
    horizontal, bottom to top when vertical (the bar alone is (length, thickness, 3) or
    (thickness, length, 3)). ``labels=(low, high)`` writes the end values beside (vertical, right)
    or below (horizontal) the bar, e.g. ``("0", "max")`` or ``("-1", "+1")`` for a signed map.
    """
    length = check_int(length, "length", 2)
    thickness = check_int(thickness, "thickness", 1)
    if orientation not in ("vertical", "horizontal"):
        raise InputError(f"orientation: expected 'vertical' or 'horizontal', got {orientation!r}")
    colours = to_uint8(colormap(cmap, sign)(np.linspace(0.0, 1.0, length)))  # (length, 3)
    if orientation == "vertical":
        bar = np.repeat(colours[::-1, None, :], thickness, axis=1)
    else:
        bar = np.repeat(colours[None, :, :], thickness, axis=0)
    if labels is None:
        return bar
    if isinstance(labels, str) or len(labels) != 2:
        raise InputError(f"labels: expected (low, high) strings, got {labels!r}")
    low, high = (_check_text(t, "labels") for t in labels)
    (lw, lh), (hw, hh) = text_size(low, font_size), text_size(high, font_size)
    bg = background_rgb(background)
    gap = 3
    if orientation == "vertical":
        canvas = np.empty((max(length, lh + hh), thickness + gap + max(lw, hw), 3), np.uint8)
        canvas[...] = bg
        canvas[:length, :thickness] = bar
        img = Image.fromarray(canvas)
        draw_text(img, (thickness + gap, 0), high, font_size)
        draw_text(img, (thickness + gap, max(length - lh, hh)), low, font_size)
    else:
        canvas = np.empty((thickness + gap + max(lh, hh), max(length, lw + hw + gap), 3), np.uint8)
        canvas[...] = bg
        canvas[:thickness, :length] = bar
        img = Image.fromarray(canvas)
        draw_text(img, (0, thickness + gap), low, font_size)
        draw_text(img, (canvas.shape[1] - hw, thickness + gap), high, font_size)
    return np.asarray(img)
