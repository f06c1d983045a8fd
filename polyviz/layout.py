"""Image layouts: the caller's (NCHW or NHWC, batched or not) to polyviz's channels-last batch and back."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from polyviz.errors import InputError

__all__ = ["Layout", "to_channels_last", "from_channels_last", "LAYOUTS", "TOKENS", "axes_order", "token_grid", "mark_tokens", "to_grid", "from_grid_order"]

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


# --------------------------------------------------------------------------------------------
# Layer layouts: how a layer's output is laid out, declared or detected by the backend, never guessed
# --------------------------------------------------------------------------------------------

#: ``LayerInfo.layout`` of a token sequence (N, tokens, C) shown as a grid (see :func:`grid_of`).
TOKENS = "NTC"


def axes_order(layout: str) -> tuple[int, int, int, int]:
    """The permutation taking a 4-D tensor laid out as ``layout`` (a permutation of "NCHW", e.g.
    "NCHW" for a torch conv map, "NHWC" for a torch ConvNeXt/Swin block) to (N, H, W, C)."""
    if sorted(layout) != sorted("NCHW") or layout[0] != "N":
        raise ValueError(f"layout: expected a permutation of NCHW with N first, got {layout!r}")
    return (0, layout.index("H"), layout.index("W"), layout.index("C"))


def token_grid(tokens: int, grid: tuple[int, int], max_prefix: int = 16) -> int | None:
    """The number of leading class/register/distillation tokens when ``tokens`` = prefix + h * w for
    the patch embedding's ``grid`` (h, w), with 0 <= prefix <= ``max_prefix``; None otherwise.

    ViTs put their extra tokens first (torchvision and timm ViT: class token, then registers; DeiT:
    class and distillation tokens), so the grid is the last h * w tokens in row-major order, as the
    patch embedding's ``flatten(2).transpose(1, 2)`` made them."""
    h, w = grid
    prefix = int(tokens) - int(h) * int(w)
    return prefix if 0 <= prefix <= max_prefix else None


def mark_tokens(infos: list[Any]) -> list[Any]:
    """``LayerInfo`` s with token sequences marked as grids, by one rule for every backend.

    Walking the layers in the order their outputs were produced (``LayerInfo.tensor``), a map with
    a known layout sets the grid (h, w) (the patch embedding, for a ViT); a later (tokens, C)
    output whose token count is prefix + h * w (:func:`token_grid`) becomes a token grid: layout
    :data:`TOKENS`, output shape (h, w, C), ``prefix`` leading tokens. A map after the first token
    layer ends the walk (a hybrid this rule does not describe). Layers without a tensor number
    (run twice, unknown) are left as they are."""
    from dataclasses import replace

    grid: tuple[int, int] | None = None
    marked: dict[int, tuple[tuple[int, int, int], int]] = {}
    for info in sorted((i for i in infos if i.tensor is not None), key=lambda i: i.tensor):
        shape = info.output_shape
        if shape is None or any(d is None for d in shape):
            continue
        if len(shape) == 3 and info.layout is not None and len(info.layout) == 4:
            if marked:
                break
            grid = (int(shape[0]), int(shape[1]))
        elif len(shape) == 2 and grid is not None:
            prefix = token_grid(int(shape[0]), grid)
            if prefix is not None:
                marked[info.tensor] = ((*grid, int(shape[1])), prefix)
    return [
        replace(info, output_shape=marked[info.tensor][0], layout=TOKENS, prefix=marked[info.tensor][1])
        if info.tensor in marked else info
        for info in infos
    ]


def to_grid(a: Any, layout: str | None, prefix: int, shape: tuple[int, ...], permute: Any) -> Any:
    """A layer output ``a`` as the framework holds it -> channels-last (N, H, W, C), or unchanged
    when it is not a map. Works on numpy arrays and framework tensors alike: ``permute(a, axes)``
    is the framework's transpose. ``shape`` is the layer's channels-last ``LayerInfo.output_shape``.

    * a 4-D ``layout`` (a permutation of NCHW): permuted to NHWC;
    * :data:`TOKENS`: the first ``prefix`` tokens (class, registers) dropped and the rest reshaped
      row-major to the (h, w) grid of the patch embedding;
    * None with a 4-D output: refused, the layout is unknown (never guessed)."""
    if layout == TOKENS:
        h, w, c = shape
        return a[:, prefix:].reshape(a.shape[0], h, w, c)
    if layout is not None and len(layout) == 4 and len(a.shape) == 4:
        order = axes_order(layout)
        return a if order == (0, 1, 2, 3) else permute(a, order)
    return a


def from_grid_order(layout: str) -> tuple[int, int, int, int]:
    """The inverse of :func:`axes_order`: (N, H, W, C) -> ``layout``."""
    order = axes_order(layout)
    return tuple(order.index(i) for i in range(4))  # type: ignore[return-value]
