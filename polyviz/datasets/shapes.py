"""A synthetic image set with ground truth: one coloured shape per image, its exact mask.

Each image (``size`` x ``size`` RGB in [0, 1]) shows one object of six classes -- disc, square,
triangle, star, cross, ring -- at a random place, size, rotation and colour, on a textured
background (smooth colour noise plus stripes of random frequency, angle and phase) with 1 to 4
distractors (small soft blobs and short line segments, which are none of the classes) and mild
pixel noise. The object is drawn last, with hard edges, so ``masks`` is exactly the set of pixels
showing the object (a ring's hole is not part of it). Everything is drawn from
``numpy.random.default_rng(seed)``: the same ``(n, seed, size)`` always gives the same arrays.

Geometry, in pixels, for an object of radius ``r`` (a fraction 0.19..0.31 of ``size``) and
rotation ``t``: disc ``|p| <= r``; square of half-side ``0.8 r``; equilateral triangle of
circumradius ``r``; five-pointed star of outer radius ``r`` and inner radius ``0.45 r``; plus-shaped
cross of arm length ``r`` and half-width ``0.3 r``; ring ``0.55 r <= |p| <= r``. Pixel ``(i, j)``
(row, column) samples the point ``(x, y) = (j, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyviz.errors import InputError

__all__ = ["ShapesData", "shapes", "SHAPE_CLASSES"]

#: The class names, in label order.
SHAPE_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "star", "cross", "ring")

_CHUNK = 512  # images rendered at a time (bounds the temporary arrays)
_RADIUS = (0.19, 0.31)  # object radius as a fraction of the image size
_STAR_INNER = 0.45
_RING_INNER = 0.55
_CROSS_HALF_WIDTH = 0.3
_SQUARE_HALF_SIDE = 0.8
_EXTENT = _SQUARE_HALF_SIDE * np.sqrt(2)  # the largest centre-to-boundary distance / r (square corners)


@dataclass(frozen=True)
class ShapesData:
    """A batch of the shapes data set.

    ``images`` (N, size, size, 3) float32 in [0, 1], channels-last RGB; ``labels`` (N,) int64
    indices into ``class_names``; ``masks`` (N, size, size) bool, True on the object's pixels.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...] = SHAPE_CLASSES

    def __len__(self) -> int:
        return len(self.labels)


def _object_masks(label: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inside tests of the six shapes at local (rotated, centred) coordinates ``u, v`` (n, H, W)."""
    rho2 = u * u + v * v
    r2 = r * r
    inside = np.zeros(u.shape, dtype=bool)
    for cls in range(len(SHAPE_CLASSES)):
        sel = label[:, 0, 0] == cls
        if not sel.any():
            continue
        uu, vv, rr, pp = u[sel], v[sel], r[sel], rho2[sel]
        name = SHAPE_CLASSES[cls]
        if name == "disc":
            m = pp <= r2[sel]
        elif name == "square":
            m = np.maximum(np.abs(uu), np.abs(vv)) <= _SQUARE_HALF_SIDE * rr
        elif name == "triangle":  # edges at distance r/2 (the inradius) along three normals
            m = np.ones(uu.shape, dtype=bool)
            for k in range(3):
                a = np.pi / 2 + 2 * np.pi * k / 3
                m &= uu * np.cos(a) + vv * np.sin(a) <= 0.5 * rr
        elif name == "star":
            m = _star(uu, vv, rr)
        elif name == "cross":
            au, av, w = np.abs(uu), np.abs(vv), _CROSS_HALF_WIDTH * rr
            m = ((au <= w) & (av <= rr)) | ((av <= w) & (au <= rr))
        else:  # ring
            m = (pp <= r2[sel]) & (pp >= (_RING_INNER * _RING_INNER) * r2[sel])
        inside[sel] = m
    return inside


def _star(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Five-pointed star: fold the angle into the sector between an outer vertex (angle 0,
    radius r) and the next inner vertex (angle pi/5, radius 0.45 r); inside = on the origin's side
    of the edge joining them."""
    sector = 2 * np.pi / 5
    phi = np.arctan2(v, u) + np.pi / 2  # a point up
    a = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
    rho = np.sqrt(u * u + v * v)
    px, py = rho * np.cos(a), rho * np.sin(a)
    ax, ay = r, np.zeros_like(r)
    bx, by = _STAR_INNER * r * np.cos(sector / 2), _STAR_INNER * r * np.sin(sector / 2)
    # cross((B - A), (P - A)) >= 0 <=> P on the origin's side (origin gives +r * by >= 0)
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """(n, size, size, 3) bilinear-upsampled (cells x cells) uniform noise in [-1, 1]."""
    low = rng.uniform(-1.0, 1.0, (n, cells, cells, 3)).astype(np.float32)
    src = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    f = (src - i0).astype(np.float32)
    mat = np.zeros((size, cells), np.float32)
    np.add.at(mat, (np.arange(size), i0), 1 - f)
    np.add.at(mat, (np.arange(size), i1), f)
    return np.einsum("ia,nabc,jb->nijc", mat, low, mat, optimize=True)


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of one chunk; every random number comes from ``rng``."""
    n = len(labels)
    f32 = np.float32
    yy, xx = np.mgrid[0:size, 0:size].astype(f32)
    xx, yy = xx[None], yy[None]

    def col(a: np.ndarray) -> np.ndarray:  # (n,) -> (n, 1, 1)
        return a.astype(f32)[:, None, None]

    # background: base colour + smooth colour noise + coloured stripes
    base = rng.uniform(0.15, 0.85, (n, 3)).astype(f32)
    noise_amp = rng.uniform(0.05, 0.2, n).astype(f32)
    cells = 4 + rng.integers(0, 5)  # one noise resolution per chunk keeps it vectorised
    noise = _smooth_noise(rng, n, size, int(cells))
    period = rng.uniform(5.0, 20.0, n) * size / 64
    angle = rng.uniform(0, np.pi, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    stripe_amp = rng.uniform(0.0, 0.15, n) * (rng.random(n) < 0.7)
    stripe_col = rng.uniform(-1, 1, (n, 3)).astype(f32)
    wave = np.sin(2 * np.pi / col(period) * (xx * col(np.cos(angle)) + yy * col(np.sin(angle))) + col(phase))
    img = (
        base[:, None, None, :]
        + col(noise_amp)[..., None] * noise
        + (col(stripe_amp) * wave)[..., None] * stripe_col[:, None, None, :]
    )

    # distractors: 1..4 soft blobs (radius 1.5..3.5 px) or line segments (length 8..20 px)
    n_distract = rng.integers(1, 5, n)
    for k in range(4):
        on = col((n_distract > k).astype(f32))
        colour = rng.uniform(0, 1, (n, 3)).astype(f32)
        cx, cy = rng.uniform(0, size, n), rng.uniform(0, size, n)
        is_line = col((rng.random(n) < 0.5).astype(f32))
        s = size / 64
        blob_r = rng.uniform(1.5, 3.5, n) * s
        blob = np.exp(-((xx - col(cx)) ** 2 + (yy - col(cy)) ** 2) / (2 * col(blob_r) ** 2))
        length = rng.uniform(8, 20, n) * s
        theta = rng.uniform(0, np.pi, n)
        half_t = rng.uniform(0.5, 1.2, n) * s
        dx, dy = xx - col(cx), yy - col(cy)
        along = np.clip(dx * col(np.cos(theta)) + dy * col(np.sin(theta)), -col(length) / 2, col(length) / 2)
        ex, ey = dx - along * col(np.cos(theta)), dy - along * col(np.sin(theta))
        line = np.clip(col(half_t) + 0.5 - np.sqrt(ex * ex + ey * ey), 0, 1)
        alpha = (on * (is_line * line + (1 - is_line) * blob))[..., None]
        img += alpha * (colour[:, None, None, :] - img)

    # the object: class shape at centre c, radius r, rotation t, with a contrasting colour
    r = rng.uniform(*_RADIUS, n) * size
    margin = _EXTENT * r + 1  # the whole object stays at least a pixel inside the frame
    cx = rng.uniform(margin, size - 1 - margin)
    cy = rng.uniform(margin, size - 1 - margin)
    t = rng.uniform(0, 2 * np.pi, n)
    dx, dy = xx - col(cx), yy - col(cy)
    ct, st = col(np.cos(t)), col(np.sin(t))
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    masks = _object_masks(labels[:, None, None], u, v, col(r))
    candidates = rng.uniform(0, 1, (n, 8, 3)).astype(f32)
    contrast = np.linalg.norm(candidates - base[:, None, :], axis=-1)
    good = contrast >= 0.45
    pick = np.where(good.any(axis=1), good.argmax(axis=1), contrast.argmax(axis=1))
    colour = candidates[np.arange(n), pick]
    shade = 1 + 0.15 * (u / col(r))  # a gentle gradient across the object
    obj = np.clip(colour[:, None, None, :] * shade[..., None], 0, 1)
    img = np.where(masks[..., None], obj, img)

    img += 0.02 * rng.standard_normal(img.shape, dtype=f32)
    return np.clip(img, 0, 1, out=img), masks


def shapes(n: int, seed: int = 0, size: int = 64) -> ShapesData:
    """``n`` images of the shapes data set (see the module docstring), deterministic in ``seed``.

    Labels are balanced (each class ``n // 6`` or one more times) in a random order. Returns a
    :class:`ShapesData` with ``images`` (n, size, size, 3) float32 in [0, 1], ``labels`` (n,)
    int64 and ``masks`` (n, size, size) bool.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InputError(f"n: expected a non-negative int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 16:
        raise InputError(f"size: expected an int >= 16, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed: expected a non-negative int, got {seed!r}")
    n, size = int(n), int(size)
    rng = np.random.default_rng(int(seed))
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    chunk_seeds = rng.integers(0, 2**63 - 1, max(1, -(-n // _CHUNK)))
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.empty((n, size, size), bool)
    for k, start in enumerate(range(0, n, _CHUNK)):
        stop = min(n, start + _CHUNK)
        images[start:stop], masks[start:stop] = _render(
            np.random.default_rng(int(chunk_seeds[k])), labels[start:stop], size
        )
    return ShapesData(images=images, labels=labels, masks=masks, class_names=SHAPE_CLASSES)
