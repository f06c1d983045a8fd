"""Perturbation attribution: forward passes only, written once in numpy.

Masks cross the protocol as small descriptions (:class:`~polyviz.protocol.Boxes`, ...): the backend
builds the masked inputs ``x * m + baseline * (1 - m)`` on its own device and returns the target
scores, in batches of ``batch_size``.
"""

from __future__ import annotations

import numpy as np

from polyviz.errors import InputError
from polyviz.features import positive_pair
from polyviz.protocol import Boxes, Capability, ClassScore
from polyviz.techniques import Context, Result, method
from polyviz.techniques.gradients import _baseline

__all__ = ["occlusion", "window_starts"]


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Captum's window positions along one axis: ``ceil((size - window) / stride) + 1`` starts
    ``0, stride, 2 stride, ...``; the last window may stick out of the image (it is cropped)."""
    return np.arange(int(np.ceil((size - window) / stride)) + 1) * stride


def _cover(starts: np.ndarray, window: int, size: int) -> np.ndarray:
    """(n_windows, size) 0/1 matrix: which pixels each window covers."""
    pix = np.arange(size)
    return ((pix >= starts[:, None]) & (pix < starts[:, None] + window)).astype(np.float64)


@method(
    "occlusion",
    "Occlusion (Zeiler & Fergus 2013, arXiv:1311.2901): score drop when a sliding window is replaced by a baseline, averaged over the windows covering each pixel",
    kind="map", needs_baseline=True, capabilities=(Capability.FORWARD, Capability.MASKED_SCORES), family="perturbation",
)
def occlusion(
    ctx: Context,
    *,
    window: int | tuple[int, int] = (15, 15),
    stride: int | tuple[int, int] = (8, 8),
    baseline: float | np.ndarray = 0.0,
) -> Result:
    """A (N, H, W) map: each pixel's mean of ``S(x) - S(x with one window set to baseline)`` over the
    windows that cover it (0 where none does, possible only when ``stride > window``).

    Windows (``window``, ``stride``: an int or (height, width) in pixels) cover every channel and sit
    where Captum's ``Occlusion`` puts them: starts ``0, stride, ...`` up to the first one reaching the
    edge. ``baseline``: a scalar, one image (H, W, C) or one per sample (N, H, W, C). Equals
    ``Occlusion(model).attribute(x, sliding_window_shapes=(C, wh, ww), strides=(C, sh, sw),
    baselines=baseline)[:, c]`` for any channel c. Costs one forward pass for ``S(x)`` plus one
    masked forward per window and sample, ``batch_size`` (default 32) masks per backend call, masks
    built on the backend's device.
    """
    n, height, width, _ = ctx.x.shape
    wh, ww = positive_pair(window, "window")
    sh, sw = positive_pair(stride, "stride")
    if wh > height or ww > width:
        raise InputError(f"window: {wh}x{ww} is larger than the input {height}x{width}")
    ys, xs = window_starts(height, wh, sh), window_starts(width, ww, sw)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack(
        [grid_y.ravel(), grid_x.ravel(), np.minimum(grid_y.ravel() + wh, height), np.minimum(grid_x.ravel() + ww, width)],
        axis=1,
    )
    per_sample = len(boxes)
    _baseline(ctx, baseline)  # validated here, expanded by the backend
    base = np.asarray(baseline, dtype=np.float32)
    be = ctx.backend
    clean = []
    for sl in ctx.chunks(n, 32, "forward"):
        clean.append(be.forward(ctx.x[sl])[np.arange(sl.stop - sl.start), ctx.targets[sl]])
    clean = np.concatenate(clean).astype(np.float64)
    masked = np.zeros(n * per_sample, np.float64)
    for sl in ctx.chunks(n * per_sample, 32, "occlusion"):
        sample, box = np.divmod(np.arange(sl.start, sl.stop), per_sample)
        lo, hi = sample[0], sample[-1] + 1  # send only the samples this batch occludes
        b = base[lo:hi] if base.ndim == 4 and len(base) == n else base
        masked[sl] = be.masked_scores(
            ctx.x[lo:hi], Boxes(boxes[box]), b, sample_index=sample - lo, objective=ClassScore(ctx.targets[sample])
        )
    drops = clean[:, None] - masked.reshape(n, per_sample)
    ry, rx = _cover(ys, wh, height), _cover(xs, ww, width)  # (ny, H), (nx, W)
    total = np.einsum("yH,nyx,xW->nHW", ry, drops.reshape(n, len(ys), len(xs)), rx, optimize=True)
    counts = np.outer(ry.sum(axis=0), rx.sum(axis=0))
    attr = np.where(counts > 0, total / np.where(counts > 0, counts, 1.0), 0.0)
    return Result(
        attribution=attr.astype(np.float32),
        scores=clean.astype(np.float32),
        metadata={"windows": per_sample, "forward_passes": n * (per_sample + 1)},
    )
