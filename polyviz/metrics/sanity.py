"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv:1810.03292): how similar the map stays when the model's weights are re-initialised, layer by
layer from the top (cascading) or one layer at a time (independent). A map that hardly changes
does not depend on what the model learned.

Randomisation means the same in every framework: for the weighted layer at index j (conv and
dense layers in execution order), the new kernel is drawn by numpy,
``numpy.random.default_rng([seed, j]).standard_normal(kernel.shape) * kernel.std()`` in the
canonical layout (conv (kh, kw, in, out), dense (in, out)), a normal distribution with the
standard deviation of that layer's original kernel (so each layer's output keeps about its scale),
and the bias is set to 0. The backend applies it to a copy of the model (``Backend.with_weights``);
the user's model is never touched. Quantus re-initialises PyTorch layers with their default
initialiser but shuffles the weights of TensorFlow layers (Quantus issue #285), so its numbers
differ between frameworks; tf-keras-vis and Xplique-type TensorFlow tools likewise shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import InputError, LayerError
from polyviz.metrics._common import as_map, attributions, chunks, explain_fn, prepare
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, Capability

__all__ = ["sanity_check", "SanityCheck", "weighted_layers", "random_weights", "randomised_backend", "similarity", "spearman",
           "SIMILARITIES"]

SIMILARITIES = ("spearman_abs", "spearman", "pearson_abs", "pearson")
DISTRIBUTION = "kernel ~ N(0, std(original kernel)^2), bias = 0, drawn by numpy from (seed, layer index)"


@dataclass
class SanityCheck:
    """Per-layer similarities of the randomised model's maps to the original's.

    ``layers``: the weighted layers, top first (the cascade's order). ``cascading``: (L + 1, N),
    row k after randomising the top k layers (row 0: none, row L: all); rows not computed (see
    ``steps``) are NaN. ``independent``: (L, N), row k with only ``layers[k]`` randomised (None when
    not computed). ``similarity``: the measure; ``distribution``: the re-initialisation.
    """

    layers: list[str]
    cascading: np.ndarray | None
    independent: np.ndarray | None
    similarity: str
    distribution: str = DISTRIBUTION
    options: dict[str, Any] = field(default_factory=dict)


def weighted_layers(backend: Backend) -> list[str]:
    """Conv and dense layers with parameters, in execution order (a torch ReLU that stands for its
    fused conv is left out: it has no parameters of its own); the layers LRP gives rules to."""
    from polyviz.techniques.lrp import weighted_layers as conv_and_dense

    return [name for name, _ in conv_and_dense(backend) if "kernel" in backend.layer_weights(name)]


def random_weights(original: dict[str, np.ndarray], seed: int, index: int) -> dict[str, np.ndarray]:
    """New weights for weighted layer ``index`` (see the module docstring)."""
    kernel = np.asarray(original["kernel"], np.float64)
    rng = np.random.default_rng([int(seed), int(index)])
    out = {"kernel": (rng.standard_normal(kernel.shape) * kernel.std()).astype(np.float32)}
    if "bias" in original:
        out["bias"] = np.zeros_like(np.asarray(original["bias"], np.float32))
    return out


def randomised_backend(
    backend: Backend, *, seed: int = 0, depth: int | None = None, layers: list[str] | None = None
) -> tuple[Backend, list[str]]:
    """A backend over a copy of the model with its top ``depth`` weighted layers (default: all of
    ``layers``, default :func:`weighted_layers`) re-initialised as :func:`sanity_check` does (same
    seed, same weights). Returns the backend and the randomised layers, top first."""
    backend.require(Capability.REWEIGHT)
    names = weighted_layers(backend) if layers is None else backend.check_layers(list(layers))
    if not names:
        raise LayerError("layers: this model has no conv or dense layer to randomise")
    depth = len(names) if depth is None else int(depth)
    if not 1 <= depth <= len(names):
        raise InputError(f"depth: expected 1..{len(names)} layers, got {depth}")
    chosen = names[::-1][:depth]
    weights = {name: random_weights(backend.layer_weights(name), seed, names.index(name)) for name in chosen}
    return backend.with_weights(weights), chosen


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank) along the last axis."""
    order = np.argsort(a, axis=-1, kind="stable")
    ranks = np.empty_like(a, dtype=np.float64)
    for i in range(a.shape[0]):
        sorted_a = a[i, order[i]]
        first = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
        ids = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], len(sorted_a)]
        mean_rank = (starts + ends - 1) / 2.0
        ranks[i, order[i]] = mean_rank[ids]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row of (N, P) arrays (average ranks for ties; 0 when a row is
    constant)."""
    return _pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


def similarity(a: np.ndarray, b: np.ndarray, kind: str = "spearman_abs") -> np.ndarray:
    """Similarity per sample of two channels-last attributions (N, H, W, C) or maps (N, H, W):
    input-shaped ones are first summed over channels (of ``|a|`` for the ``_abs`` kinds);
    ``spearman_abs`` (Adebayo et al.'s main measure): Spearman rank correlation of the magnitude
    maps; ``spearman``: of the signed maps; ``pearson[_abs]``: Pearson correlation. A constant map
    has no ranking: its similarity is 0."""
    if kind not in SIMILARITIES:
        raise InputError(f"similarity: expected one of {', '.join(SIMILARITIES)}, got {kind!r}")
    absolute = kind.endswith("_abs")
    ma, mb = as_map(a, absolute), as_map(b, absolute)
    ma, mb = ma.reshape(len(ma), -1), mb.reshape(len(mb), -1)
    return spearman(ma, mb) if kind.startswith("spearman") else _pearson(ma, mb)


@metric("randomisation", higher_is_better=False, reference="Adebayo et al. 2018 (MPRT)", checked="quantus.MPRT")
def sanity_check(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    method: str = "saliency",
    mode: str = "both",
    steps: list[int] | None = None,
    layers: list[str] | None = None,
    similarity_kind: str = "spearman_abs",
    attribution: Any = None,
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    method_options: dict[str, Any] | None = None,
    **options: Any,
) -> SanityCheck:
    """Cascading and/or independent randomisation (``mode`` "both", "cascading", "independent").

    ``method``: any registered method (options as keywords or in ``method_options``), explained for
    the same targets before and after; ``attribution`` may give the original's precomputed.
    ``layers``: the weighted layers to randomise (default: every conv and dense layer,
    :func:`weighted_layers`), in execution order; the cascade starts at the last. ``steps``: which
    cascade depths k (0..L) to compute (default all; ``[L]`` only the fully randomised model).
    ``seed`` draws the new weights (module docstring) and seeds the method. Similarity: see
    :func:`similarity` (``similarity_kind``). Returns a :class:`SanityCheck`.
    """
    if mode not in ("both", "cascading", "independent"):
        raise InputError(f"mode: expected 'both', 'cascading' or 'independent', got {mode!r}")
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    be = setup.backend
    be.require(Capability.REWEIGHT)
    similarity(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), similarity_kind)  # validate the kind early
    names = weighted_layers(be) if layers is None else be.check_layers(list(layers))
    if not names:
        raise LayerError("layers: this model has no conv or dense layer to randomise")
    for name in names:
        if "kernel" not in be.layer_weights(name):
            raise LayerError(f"layers: {name!r} has no kernel (conv or dense layers only)")
    top_first = names[::-1]
    count = len(names)
    if steps is None:
        steps = list(range(count + 1))
    steps = sorted({int(k) for k in steps})
    if any(k < 0 or k > count for k in steps):
        raise InputError(f"steps: expected cascade depths in 0..{count}, got {steps}")
    new = {name: random_weights(be.layer_weights(name), setup.seed, j) for j, name in enumerate(names)}
    run = explain_fn(setup)
    original = attributions(setup, attribution)
    n = len(setup.x)

    def compare(randomised: list[str]) -> np.ndarray:
        if not randomised:
            return similarity(original, run(setup.x, setup.targets), similarity_kind)
        copy = be.with_weights({name: new[name] for name in randomised})
        return similarity(original, run(setup.x, setup.targets, copy), similarity_kind)

    jobs: list[tuple[str, int]] = []
    if mode in ("both", "cascading"):
        jobs += [("cascading", k) for k in steps]
    if mode in ("both", "independent"):
        jobs += [("independent", k) for k in range(count)]
    cascading = np.full((count + 1, n), np.nan) if mode != "independent" else None
    independent = np.full((count, n), np.nan) if mode != "cascading" else None
    for s in chunks(len(jobs), 1, "sanity check", setup.progress):
        kind, k = jobs[s.start]
        if kind == "cascading":
            cascading[k] = compare(top_first[:k])
        else:
            independent[k] = compare([top_first[k]])
    return SanityCheck(top_first, cascading, independent, similarity_kind,
                       options={"method": method, "seed": setup.seed, "steps": steps, **setup.options})
