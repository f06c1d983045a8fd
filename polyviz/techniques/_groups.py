"""Shared machinery of the feature-group methods (ablation, permutation, Shapley, LIME, KernelSHAP):
the ``features=`` options and batched scores of inputs whose groups are kept or replaced.

Masks cross the protocol as :class:`~polyviz.protocol.FeatureGroups` (the (H, W) group labels and
one keep-vector per mask); the backend builds ``x * m + baseline * (1 - m)`` on its own device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from polyviz.errors import InputError
from polyviz.features import Partition, feature_groups
from polyviz.protocol import ClassScore, FeatureGroups
from polyviz.techniques import Context

F = TypeVar("F", bound=Callable[..., Any])

#: What the ``features`` option of every feature-group method means (shared docstring text).
FEATURES_DOC = """``features``: the feature groups, each covering every channel of its pixels:
    "pixels", "patches" (tiles of ``patch_size``, an int or (height, width)), "superpixels"
    (SLIC-style, ``n_segments`` seeds, ``compactness``; see :func:`polyviz.features.superpixels`),
    or an int array of group ids, (H, W) for every sample or (N, H, W) one per sample. The groups
    used come back in ``options["groups"]`` (N, H, W)."""


def features_doc(fn: F) -> F:
    """Append :data:`FEATURES_DOC` to a method's docstring."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n    " + FEATURES_DOC + "\n"
    return fn


def partition(ctx: Context, features: object, patch_size: object, n_segments: object, compactness: object) -> Partition:
    """The feature groups of ``ctx.x`` for the ``features`` options (validated)."""
    return feature_groups(ctx.x, features, patch_size=patch_size, n_segments=n_segments, compactness=compactness)  # type: ignore[arg-type]


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def positive_float(value: object, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        raise InputError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _runs(values: np.ndarray) -> list[slice]:
    """Slices of the runs of equal consecutive values."""
    cuts = np.flatnonzero(values[1:] != values[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(values)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def group_scores(
    ctx: Context,
    part: Partition,
    sample: np.ndarray,
    keep: np.ndarray | Callable[[np.ndarray], np.ndarray],
    baseline: np.ndarray,
    desc: str,
    donor: np.ndarray | None = None,
) -> np.ndarray:
    """Target scores (M,) float64 of the inputs ``x[sample[m]]`` with the groups where
    ``keep[m] == 0`` replaced by the baseline (scalar, (H, W, C) or one per sample (N, H, W, C)),
    or, when ``donor`` (M,) is given, by the same pixels of sample ``donor[m]`` (permutation).

    ``keep`` (M, G) or a function of mask indices returning their rows, so that many groups (one
    mask per pixel) never need an (M, G) matrix. ``sample`` must be sorted. Masks go to the backend ``batch_size`` (32) at a time; when the
    samples have groups of their own (superpixels, an (N, H, W) mask) a batch is split at sample
    boundaries, since one mask description holds one set of labels.
    """
    be = ctx.backend
    m = len(sample)
    out = np.empty(m, dtype=np.float64)
    if callable(keep):
        rows = keep
    else:
        table = np.asarray(keep, dtype=np.float32)

        def rows(idx: np.ndarray) -> np.ndarray:
            return table[idx]

    for sl in ctx.chunks(m, 32, desc):
        parts = [sl] if part.shared else [slice(sl.start + r.start, sl.start + r.stop) for r in _runs(sample[sl])]
        for p in parts:
            s = sample[p]
            labels = part.labels[s[0]]
            masks = FeatureGroups(labels, np.asarray(rows(np.arange(p.start, p.stop)), dtype=np.float32))
            objective = ClassScore(ctx.targets[s])
            if donor is not None:  # each mask its own pair (image, donor image)
                xs, base, index = ctx.x[s], ctx.x[donor[p]], np.arange(len(s))
            else:  # send only the samples this batch masks
                lo, hi = int(s[0]), int(s[-1]) + 1
                xs, index = ctx.x[lo:hi], s - lo
                base = baseline[lo:hi] if baseline.ndim == 4 else baseline
            out[p] = be.masked_scores(xs, masks, base, sample_index=index, objective=objective)
    return out


def groups_metadata(part: Partition) -> dict[str, object]:
    return {"groups": part.labels.astype(np.int32), "n_groups": part.counts.copy()}
