"""Feature ablation and feature permutation: the score change when one group of pixels is replaced,
by a baseline or by the same pixels of another sample of the batch. Forward passes only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polyviz.errors import InputError
from polyviz.protocol import Capability
from polyviz.techniques import Context, Result, method
from polyviz.techniques._groups import features_doc, group_scores, groups_metadata, partition
from polyviz.techniques.gradients import _baseline, _target_scores

__all__ = ["feature_ablation", "feature_permutation"]

_CAPS = (Capability.FORWARD, Capability.MASKED_SCORES)


def _one_off(part_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """For every sample n and group g < counts[n]: (sample, group, keep rows) with the keep rows
    all ones but g, built per batch."""
    sample = np.repeat(np.arange(len(part_counts)), part_counts)
    group = np.concatenate([np.arange(c) for c in part_counts])
    width = int(part_counts.max())

    def keep(idx: np.ndarray) -> np.ndarray:
        rows = np.ones((len(idx), width), dtype=np.float32)
        rows[np.arange(len(idx)), group[idx]] = 0.0
        return rows

    return sample, group, keep


def _drops(clean: np.ndarray, masked: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [clean[n] - masked[s : s + c] for n, (s, c) in enumerate(zip(starts, counts))]


@method(
    "feature_ablation",
    "Feature ablation: score drop S(x) - S(x with one feature group replaced by a baseline), per group (pixels, patches, superpixels, a mask)",
    kind="map", needs_baseline=True, capabilities=_CAPS, family="perturbation",
)
@features_doc
def feature_ablation(
    ctx: Context,
    *,
    features: str | np.ndarray = "superpixels",
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
    baseline: float | np.ndarray = 0.0,
) -> Result:
    """A (N, H, W) map: every pixel gets ``S(x) - S(x_g)`` of its group g, where ``x_g`` is x with
    the pixels of g (all channels) set to the baseline (a scalar, one image (H, W, C) or one per
    sample (N, H, W, C)).

    Equals Captum's ``FeatureAblation(model).attribute(x, baselines=..., feature_mask=groups)`` on
    any channel. Costs one forward pass per sample for S(x) plus one masked forward per group and
    sample, ``batch_size`` (32) per backend call, masks built on the backend's device.
    """
    part = partition(ctx, features, patch_size, n_segments, compactness)
    _baseline(ctx, baseline)
    base = np.asarray(baseline, dtype=np.float32)
    clean = _target_scores(ctx, ctx.x, ctx.targets)
    sample, _, keep = _one_off(part.counts)
    masked = group_scores(ctx, part, sample, keep, base, "feature_ablation")
    attr = part.spread(_drops(clean, masked, part.counts))
    return Result(
        attribution=attr, scores=clean.astype(np.float32),
        metadata={**groups_metadata(part), "forward_passes": int(len(ctx.x) + len(sample))},
    )


def permutations(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` random permutations of ``range(n)`` (count, n), each redrawn while it is the
    identity (Captum's ``_permute_feature``)."""
    out = np.empty((count, n), dtype=np.int64)
    for i in range(count):
        perm = rng.permutation(n)
        while np.array_equal(perm, np.arange(n)):
            perm = rng.permutation(n)
        out[i] = perm
    return out


@method(
    "feature_permutation",
    "Feature permutation: score drop when one feature group is swapped with the same pixels of other samples of the batch (a random permutation per group)",
    kind="map", capabilities=_CAPS, family="perturbation",
)
@features_doc
def feature_permutation(
    ctx: Context,
    *,
    features: str | np.ndarray = "patches",
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
) -> Result:
    """A (N, H, W) map: every pixel of group g of sample n gets ``S(x_n) - S(x_n^g)``, where
    ``x_n^g`` is x_n with the pixels of its group g (all channels) taken from sample ``pi_g(n)``,
    ``pi_g`` a random permutation of the batch (not the identity), one per group, drawn from the
    seed. Needs at least two samples: the batch is the distribution features are drawn from
    (permutation feature importance, Breiman 2001; Fisher et al. 2019).

    Captum's ``FeaturePermutation`` with the same permutations gives the same maps. Groups default
    to patches, which mean the same region in every sample; superpixels differ per sample, so group
    g of sample n then takes sample pi_g(n)'s pixels under n's own group g. Costs one forward pass
    per sample plus one per group and sample.
    """
    n = len(ctx.x)
    if n < 2:
        raise InputError(
            "x: feature_permutation permutes each feature group across the batch and needs at least "
            "2 samples, got 1 (use feature_ablation for a single image)"
        )
    part = partition(ctx, features, patch_size, n_segments, compactness)
    perms = permutations(ctx.rng(), n, part.max_groups)
    clean = _target_scores(ctx, ctx.x, ctx.targets)
    sample, group, keep = _one_off(part.counts)
    donor = perms[group, sample]
    masked = group_scores(ctx, part, sample, keep, np.float32(0.0), "feature_permutation", donor=donor)
    attr = part.spread(_drops(clean, masked, part.counts))
    return Result(
        attribution=attr, scores=clean.astype(np.float32),
        metadata={**groups_metadata(part), "permutations": perms, "forward_passes": int(n + len(sample))},
    )
