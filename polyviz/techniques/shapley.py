"""Shapley value sampling (Castro et al. 2009; Strumbelj & Kononenko 2010): the mean marginal
contribution of each feature group over random orderings of the groups. Forward passes only."""

from __future__ import annotations

import numpy as np

from polyviz.protocol import Capability
from polyviz.techniques import Context, Result, method
from polyviz.techniques._groups import features_doc, group_scores, groups_metadata, partition, positive_int
from polyviz.techniques.gradients import _baseline

__all__ = ["shapley_sampling"]


@method(
    "shapley_sampling",
    "Shapley value sampling: mean marginal contribution of each feature group over random orderings of the groups, starting from the baseline",
    kind="map", needs_baseline=True, capabilities=(Capability.FORWARD, Capability.MASKED_SCORES), family="perturbation",
)
@features_doc
def shapley_sampling(
    ctx: Context,
    *,
    n_samples: int = 25,
    features: str | np.ndarray = "superpixels",
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
    baseline: float | np.ndarray = 0.0,
) -> Result:
    """A (N, H, W) map: every pixel gets the Shapley value estimate of its group,
    ``phi_g = 1/K sum_k [S(x_{P_k(g) + g}) - S(x_{P_k(g)})]``, over ``n_samples`` = K orderings of
    the groups drawn at random per sample from the seed, where ``x_P`` is the input with the groups
    in P kept and all others set to the baseline (a scalar, one image (H, W, C) or one per sample)
    and ``P_k(g)`` the groups before g in ordering k.

    Each ordering adds the groups one at a time to the baseline; the chain starts at S(baseline)
    and ends at S(x), which are evaluated once per sample, so a sample with G groups costs
    2 + K (G - 1) forward passes (Captum's ``ShapleyValueSampling`` runs K G + 1), batched
    ``batch_size`` (32) masks at a time. With the same orderings Captum gives the same maps; it
    draws one ordering set for the whole batch, polyviz one per sample. The sum of a sample's group
    values is exactly S(x) - S(baseline) (efficiency).
    """
    k = positive_int(n_samples, "n_samples")
    part = partition(ctx, features, patch_size, n_segments, compactness)
    _baseline(ctx, baseline)
    base = np.asarray(baseline, dtype=np.float32)
    rng = ctx.rng()
    gmax = part.max_groups
    orderings = [np.stack([rng.permutation(int(g)) for _ in range(k)]) for g in part.counts]
    counts = part.counts.astype(np.int64)
    per_sample = 2 + k * (counts - 1)  # row 0: baseline (nothing kept), row 1: x (everything kept)
    first = np.concatenate([[0], np.cumsum(per_sample)[:-1]])
    sample = np.repeat(np.arange(len(counts)), per_sample)
    ranks = [np.argsort(order, axis=1) for order in orderings]  # rank[i, group]: its place in ordering i

    def keep(idx: np.ndarray) -> np.ndarray:
        """Row 2 + i (G - 1) + j of a sample keeps the first j + 1 groups of its ordering i."""
        rows = np.zeros((len(idx), gmax), dtype=np.float32)
        for r, flat in enumerate(idx.tolist()):
            s = int(sample[flat])
            local, g = flat - int(first[s]), int(counts[s])
            if local == 1:
                rows[r, :g] = 1.0
            elif local >= 2:
                i, j = divmod(local - 2, g - 1)
                rows[r, :g] = ranks[s][i] <= j
        return rows

    scores = group_scores(ctx, part, sample, keep, base, "shapley_sampling")
    values, start = [], 0
    for g, order, rows in zip(counts.tolist(), orderings, per_sample.tolist()):
        block = scores[start : start + rows]
        start += rows
        chain = np.concatenate([np.full((k, 1), block[0]), block[2:].reshape(k, g - 1), np.full((k, 1), block[1])], axis=1)
        contrib = np.diff(chain, axis=1)  # (k, g): contribution of the j-th group of ordering i
        phi = np.zeros(g)
        np.add.at(phi, order.ravel(), contrib.ravel())
        values.append(phi / k)
    clean = scores[first + 1]
    return Result(
        attribution=part.spread(values), scores=clean.astype(np.float32),
        metadata={**groups_metadata(part), "orderings": orderings, "baseline_scores": scores[first].astype(np.float32),
                  "forward_passes": int(len(sample))},
    )
