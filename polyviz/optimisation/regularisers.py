"""Image priors (penalties with exact gradients) and the image edits of Yosinski et al. 2015.

Penalties are functions of a channels-last batch ``x`` (N, H, W, C) in [0, 1], centred on grey
(``x - 0.5``), returning one value per image and the exact gradient. They are subtracted from the
objective: the optimiser ascends ``objective - sum(weight * penalty)``.

* L1 and L2 decay: ``sum |x - 0.5|`` and ``sum (x - 0.5)^2`` (Simonyan et al. 2013 use L2).
* alpha-norm: ``sum |x - 0.5|^alpha`` (Mahendran & Vedaldi 2014, alpha = 6).
* total variation: ``sum_ij ((x[i, j+1] - x[i, j])^2 + (x[i+1, j] - x[i, j])^2 + eps)^(beta/2)``
  over pixels with both neighbours (Mahendran & Vedaldi 2014, "Understanding Deep Image
  Representations by Inverting Them", arXiv:1412.0035; beta = 2 by default).

Edits, applied to the optimised pixels between steps (Yosinski, Clune, Nguyen, Fuchs & Lipson
2015, "Understanding Neural Networks Through Deep Visualization", arXiv:1506.06579): Gaussian blur
every k steps, and resetting to grey the pixels of small norm or of small contribution
(``|sum_c (x - 0.5) * grad|``) below a percentile.
"""

from __future__ import annotations

import numpy as np

__all__ = ["l1", "l2", "alpha_norm", "total_variation", "gaussian_blur", "clip_small_norm", "clip_small_contribution"]


def _per_image(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).sum(axis=1)


def l1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum |x - 0.5|`` per image and its (sub)gradient ``sign(x - 0.5)``."""
    d = x.astype(np.float64) - 0.5
    return _per_image(np.abs(d)), np.sign(d)


def l2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum (x - 0.5)^2`` per image and its gradient ``2 (x - 0.5)``."""
    d = x.astype(np.float64) - 0.5
    return _per_image(d * d), 2.0 * d


def alpha_norm(x: np.ndarray, alpha: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """``sum |x - 0.5|^alpha`` per image and its gradient ``alpha |d|^(alpha-1) sign(d)``."""
    d = x.astype(np.float64) - 0.5
    a = np.abs(d)
    return _per_image(a**alpha), alpha * a ** (alpha - 1) * np.sign(d)


def total_variation(x: np.ndarray, beta: float = 2.0, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Mahendran & Vedaldi's TV^beta per image and its exact gradient (see the module docstring)."""
    x = x.astype(np.float64)
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    s = dx * dx + dy * dy
    if beta != 2.0:
        s = s + eps
    value = _per_image(s ** (beta / 2.0))
    coef = beta * s ** (beta / 2.0 - 1.0) if beta != 2.0 else np.full_like(s, 2.0)  # d value / d(dx) = coef dx
    gx, gy = coef * dx, coef * dy
    grad = np.zeros_like(x)
    grad[:, :-1, :-1, :] -= gx + gy
    grad[:, :-1, 1:, :] += gx
    grad[:, 1:, :-1, :] += gy
    return value, grad


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of each channel, reflected borders."""
    if sigma <= 0:
        return x
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    out = x.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect" if out.shape[axis] > r else "edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += weight * np.take(p, np.arange(i, i + size), axis=axis)
        out = acc
    return out.astype(np.float32)


def clip_small_norm(x: np.ndarray, percentile: float) -> np.ndarray:
    """Reset to grey the pixels whose colour norm ``||x - 0.5||`` is below the per-image percentile."""
    d = x - 0.5
    norm = np.linalg.norm(d, axis=-1)
    cut = np.percentile(norm.reshape(len(x), -1), percentile, axis=1)[:, None, None]
    return np.where((norm < cut)[..., None], np.float32(0.5), x).astype(np.float32)


def clip_small_contribution(x: np.ndarray, grad: np.ndarray, percentile: float) -> np.ndarray:
    """Reset to grey the pixels whose contribution ``|sum_c (x - 0.5) grad|`` (the first-order
    change of the objective if the pixel were grey) is below the per-image percentile."""
    contrib = np.abs(((x - 0.5) * grad).sum(axis=-1))
    cut = np.percentile(contrib.reshape(len(x), -1), percentile, axis=1)[:, None, None]
    return np.where((contrib < cut)[..., None], np.float32(0.5), x).astype(np.float32)
