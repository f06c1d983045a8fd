"""Max-sensitivity, the relative variant: Yeh et al. 2019 ("On the (In)fidelity and Sensitivity of
Explanations", arXiv:1901.09392) define ``max ||attr(x + d) - attr(x)||``; polyviz, like Captum
(``captum.metrics.sensitivity_max``) and Quantus (``MaxSensitivity``, ``norm_denominator``), divides
by ``||attr(x)||``, so that methods of different scales compare. Not the paper's plain value."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import attributions, check_positive_int, chunks, explain_fn, prepare
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess

__all__ = ["max_sensitivity", "sensitivity_perturbations"]


def sensitivity_perturbations(x: np.ndarray, n_perturb_samples: int, radius: float, seed: int) -> np.ndarray:
    """The perturbed inputs ``x + d``, (N * n_perturb_samples, H, W, C) float32, sample i's at rows
    ``i * n .. i * n + n - 1``: d uniform in the L-inf ball of ``radius`` (each element uniform in
    [-radius, radius), Captum's ``default_perturb_func``), drawn by
    ``numpy.random.default_rng(seed).uniform`` in float64 and rounded to float32."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    d = rng.uniform(-radius, radius, (len(x) * n_perturb_samples, *x.shape[1:])).astype(np.float32)
    return np.repeat(x, n_perturb_samples, axis=0) + d


@metric("robustness", higher_is_better=False, reference="Yeh et al. 2019, relative variant as in Captum and Quantus", checked="quantus.MaxSensitivity, captum.metrics.sensitivity_max")
def max_sensitivity(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    method: str = "saliency",
    attribution: Any = None,
    n_perturb_samples: int = 10,
    radius: float = 0.02,
    perturbed: np.ndarray | None = None,
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    method_options: dict[str, Any] | None = None,
    **options: Any,
) -> np.ndarray:
    """Relative max-sensitivity per sample, (N,) float64:
    ``max_k ||attr(x + d_k) - attr(x)|| / ||attr(x)||`` (Frobenius norms over the whole attribution;
    a zero ``||attr(x)||`` counts as 1, as in Captum). This is the relative variant of Captum and
    Quantus; Yeh et al.'s definition has no denominator (multiply by ``||attr(x)||`` to get it).

    The attributions come from ``method`` (any registered method; options as keywords or in
    ``method_options``) for the same target at every perturbed input; ``attribution`` may give
    ``attr(x)`` precomputed. ``d_k``: ``n_perturb_samples`` draws uniform in the L-inf ball of
    ``radius`` (Captum's default 0.02, in the model's input units before preprocessing) from
    ``seed`` (:func:`sensitivity_perturbations`), or the given ``perturbed`` inputs (N * n, H, W, C)
    channels-last, sample-major. A random method (SmoothGrad...) draws the same noise at every
    input (same seed), so only the input moves.
    """
    n_perturb_samples = check_positive_int(n_perturb_samples, "n_perturb_samples")
    if not isinstance(radius, int | float) or radius < 0:
        raise InputError(f"radius: expected a number >= 0, got {radius!r}")
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    xs = setup.x
    n = len(xs)
    base = attributions(setup, attribution).astype(np.float64)
    if perturbed is None:
        xp = sensitivity_perturbations(xs, n_perturb_samples, radius, setup.seed)
    else:
        xp = np.asarray(perturbed, np.float32)
        if xp.shape != (n * n_perturb_samples, *xs.shape[1:]):
            raise InputError(f"perturbed: expected shape {(n * n_perturb_samples, *xs.shape[1:])} (channels-last, "
                             f"sample-major), got {xp.shape}")
    run = explain_fn(setup)
    targets = np.repeat(setup.targets, n_perturb_samples)
    size = max(n, setup.batch_size or 32)
    moved = np.concatenate([run(xp[s], targets[s]) for s in chunks(len(xp), size, "max-sensitivity", setup.progress)])
    diff = (moved.astype(np.float64) - np.repeat(base, n_perturb_samples, axis=0)).reshape(len(xp), -1)
    norm = np.linalg.norm(base.reshape(n, -1), axis=1)
    norm = np.where(norm == 0, 1.0, norm)
    ratio = np.linalg.norm(diff, axis=1).reshape(n, n_perturb_samples) / norm[:, None]
    return ratio.max(axis=1)
