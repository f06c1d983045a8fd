"""Transformations applied inside the objective, as linear resampling maps with exact adjoints.

Jitter (random shift), random scale, random rotation and random crops (a zoom into a random
window) are composed into one random affine map per image and step, realised as bilinear sampling
with reflected borders (Mordvintsev et al., "Inceptionism", 2015; Olah et al., "Feature
Visualization", Distill 2017). The backend sees ``T x``; the gradient it returns is pulled back to
the optimised image with the transpose ``T^T g``, so the transformation is part of the objective
(differentiably) and the optimised image is never edited by it. Octave upsampling in deep dream is
the same kind of map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Resample", "random_affine", "upsample", "Robustness"]


def _reflect(c: np.ndarray, size: int) -> np.ndarray:
    """Reflect continuous coordinates into [0, size - 1] (mirror about the edge pixels)."""
    if size == 1:
        return np.zeros_like(c)
    period = 2.0 * (size - 1)
    c = np.mod(c, period)
    return (size - 1) - np.abs(c - (size - 1))


class Resample:
    """``y[n, i, j] = sum_k w_k x[n, p_k]``: bilinear sampling of (N, h, w, C) images at given
    source coordinates, giving (N, H, W, C). Linear in ``x``; :meth:`adjoint` is its transpose."""

    def __init__(self, coords: np.ndarray, in_size: tuple[int, int]) -> None:
        """``coords`` (N, H, W, 2): source (row, column) of every output pixel (reflected into range)."""
        n, out_h, out_w, _ = coords.shape
        h, w = in_size
        cy = _reflect(coords[..., 0].astype(np.float64), h)
        cx = _reflect(coords[..., 1].astype(np.float64), w)
        y0 = np.clip(np.floor(cy), 0, h - 1).astype(np.int64)
        x0 = np.clip(np.floor(cx), 0, w - 1).astype(np.int64)
        fy, fx = cy - y0, cx - x0
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        base = (np.arange(n) * h * w)[:, None, None]
        self.index = np.stack([base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1])
        self.weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]).astype(np.float32)
        self.n, self.in_size, self.out_size = n, (h, w), (out_h, out_w)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``T x`` for x (N, h, w, C)."""
        flat = x.reshape(-1, x.shape[-1])
        out = np.zeros((self.n, *self.out_size, x.shape[-1]), np.float32)
        for k in range(4):
            out += self.weight[k][..., None] * flat[self.index[k]]
        return out

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """``T^T g`` for g (N, H, W, C): each output's gradient goes back to its four sources."""
        c = g.shape[-1]
        size = self.n * self.in_size[0] * self.in_size[1]
        index = self.index.reshape(-1)
        out = np.empty((size, c), np.float64)
        for ch in range(c):
            weights = (self.weight * g[None, ..., ch]).reshape(-1)
            out[:, ch] = np.bincount(index, weights=weights, minlength=size)
        return out.reshape(self.n, *self.in_size, c).astype(np.float32)


def random_affine(
    rng: np.random.Generator,
    n: int,
    size: tuple[int, int],
    *,
    jitter: int = 0,
    scale: tuple[float, float] = (1.0, 1.0),
    rotate: float = 0.0,
    crop: float = 0.0,
) -> Resample:
    """One random affine map per image, drawn from ``rng``: output pixel ``p`` samples the source
    at ``R(theta) (p - c) / s + c + shift`` with ``s ~ U(scale) / (1 - U(0, crop))`` (a crop of
    up to ``crop`` of the side, resized back), ``theta ~ U(-rotate, rotate)`` degrees and an integer
    ``shift ~ U{-jitter..jitter}`` per axis."""
    h, w = size
    s = rng.uniform(scale[0], scale[1], n) if scale[0] != scale[1] else np.full(n, scale[0])
    if crop > 0:
        s = s / (1.0 - rng.uniform(0.0, crop, n))
    theta = np.deg2rad(rng.uniform(-rotate, rotate, n)) if rotate > 0 else np.zeros(n)
    shift = rng.integers(-jitter, jitter + 1, (n, 2)) if jitter > 0 else np.zeros((n, 2), np.int64)
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    u, v = ii - cy, jj - cx
    cos, sin = (np.cos(theta) / s)[:, None, None], (np.sin(theta) / s)[:, None, None]
    src_y = cos * u - sin * v + cy + shift[:, 0, None, None]
    src_x = sin * u + cos * v + cx + shift[:, 1, None, None]
    return Resample(np.stack([src_y, src_x], axis=-1), (h, w))


def upsample(n: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> Resample:
    """Bilinear upsampling (half-pixel centres, as ``align_corners=False``) from ``in_size`` to
    ``out_size``, as a linear map."""
    (h, w), (oh, ow) = in_size, out_size
    ys = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.broadcast_to(np.stack([yy, xx], axis=-1), (n, oh, ow, 2))
    return Resample(coords, in_size)


@dataclass(frozen=True)
class Robustness:
    """The random transformations of one run: jitter (pixels), scale range, rotation (degrees)
    and crop (fraction of the side). All zero: the identity (no map is built)."""

    jitter: int = 0
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    crop: float = 0.0

    @property
    def identity(self) -> bool:
        return self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == 0 and self.crop == 0

    def sample(self, rng: np.random.Generator, n: int, size: tuple[int, int]) -> Resample | None:
        if self.identity:
            return None
        return random_affine(rng, n, size, jitter=self.jitter, scale=self.scale, rotate=self.rotate, crop=self.crop)
