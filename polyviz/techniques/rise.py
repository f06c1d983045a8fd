"""RISE, randomized input sampling for explanation (Petsiuk et al. 2018, arXiv:1806.07421): the
mean of random smooth masks weighted by the score of the masked input. Forward passes only."""

from __future__ import annotations

import numpy as np

from polyviz.errors import InputError
from polyviz.protocol import Capability, ClassScore, LowResMasks, materialize_masks
from polyviz.techniques import Context, Result, method
from polyviz.techniques._groups import positive_int
from polyviz.techniques.cam import _softmax_target
from polyviz.techniques.gradients import _add_by_sample, _baseline

__all__ = ["rise", "rise_masks"]


def rise_masks(
    rng: np.random.Generator, n_masks: int, grid: int, p: float, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """RISE's masks as the paper's code draws them: ``n_masks`` binary (grid, grid) cells, each 1
    with probability ``p``; each is upsampled bilinearly to ((grid + 1) ch, (grid + 1) cw) with the
    cell size (ch, cw) = (ceil(H / grid), ceil(W / grid)) and an (H, W) window is cropped at a
    random offset in [0, ch) x [0, cw). Returns (grids (M, grid, grid) float32, offsets (M, 2),
    upsampled size)."""
    ch, cw = -(-height // grid), -(-width // grid)
    grids = (rng.random((n_masks, grid, grid)) < p).astype(np.float32)
    offsets = np.stack([rng.integers(0, ch, n_masks), rng.integers(0, cw, n_masks)], axis=1)
    return grids, offsets.astype(np.int64), ((grid + 1) * ch, (grid + 1) * cw)


@method(
    "rise",
    "RISE (Petsiuk et al. 2018, arXiv:1806.07421): mean of random smooth masks weighted by the score of the masked input",
    kind="map", needs_baseline=True, capabilities=(Capability.MASKED_SCORES,), family="perturbation",
)
def rise(
    ctx: Context,
    *,
    n_masks: int = 2000,
    grid: int = 7,
    p: float = 0.5,
    score: str = "softmax",
    baseline: float | np.ndarray = 0.0,
) -> Result:
    """A (N, H, W) map ``sum_i S(x * M_i + b * (1 - M_i)) M_i / (n_masks p)`` over random smooth
    masks M_i (:func:`rise_masks`: ``grid`` x ``grid`` binary cells kept with probability ``p``,
    bilinearly upsampled with a random shift; the same masks for every sample, drawn from the
    seed). The paper masks to 0 (``baseline=0.0``); a scalar, one image or one per sample may be
    given.

    ``score``: "softmax" (the class probability, as the paper) or "logit". The paper uses N = 4000
    to 8000 masks on ImageNet; ``n_masks`` defaults to 2000 for speed (the map's noise falls as
    1/sqrt(n_masks)). Costs ``n_masks`` forward passes per sample, ``batch_size`` (32) masks per
    backend call, the masks upsampled and cropped on the backend's device (:class:`LowResMasks`).
    The grids and offsets come back in ``options["grids"]`` and ``options["offsets"]``.
    """
    m = positive_int(n_masks, "n_masks")
    g = positive_int(grid, "grid")
    if isinstance(p, bool) or not isinstance(p, int | float | np.number) or not 0 < p <= 1:
        raise InputError(f"p: expected a probability in (0, 1], got {p!r}")
    if score not in ("softmax", "logit"):
        raise InputError(f"score: expected 'softmax' or 'logit', got {score!r}")
    n, height, width, _ = ctx.x.shape
    if g > min(height, width):
        raise InputError(f"grid: {g} cells do not fit the input {height}x{width} (expected grid <= {min(height, width)})")
    _baseline(ctx, baseline)
    base = np.asarray(baseline, dtype=np.float32)
    grids, offsets, size = rise_masks(ctx.rng(), m, g, float(p), height, width)
    be = ctx.backend
    saliency = np.zeros((n, height, width), dtype=np.float64)
    for sl in ctx.chunks(n * m, 32, "rise"):
        sample, index = np.divmod(np.arange(sl.start, sl.stop), m)
        lo, hi = int(sample[0]), int(sample[-1]) + 1
        spec = LowResMasks(grids[index], mode="bilinear", upsampled_size=size, offsets=offsets[index])
        b = base[lo:hi] if base.ndim == 4 else base
        targets = ctx.targets[sample]
        if score == "softmax":
            out = be.masked_scores(ctx.x[lo:hi], spec, b, sample_index=sample - lo)
            weights = _softmax_target(np.asarray(out), targets)
        else:
            weights = np.asarray(
                be.masked_scores(ctx.x[lo:hi], spec, b, sample_index=sample - lo, objective=ClassScore(targets)),
                np.float64,
            )
        masks = materialize_masks(spec, height, width).astype(np.float64)
        _add_by_sample(saliency, sample, weights[:, None, None] * masks)
    saliency /= m * float(p)
    return Result(
        attribution=saliency.astype(np.float32),
        metadata={"grids": grids, "offsets": offsets, "upsampled_size": size, "forward_passes": int(n * m)},
    )
