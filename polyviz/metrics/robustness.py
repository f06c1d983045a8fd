"""Robustness of explanations to small input changes: average sensitivity (Yeh et al. 2019), the
local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018) and relative input, output and
representation stability (Agarwal et al. 2022).

Each draws ``n_perturb_samples`` perturbed copies of every input from ``seed`` (numpy, the same in
every framework), explains all of them in batches (``batch_size``) with the same method and target,
and compares. Norms are L2 (Frobenius) over the whole attribution, in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import Setup, attributions, check_positive_int, chunks, explain_fn
from polyviz.metrics._perturb import setup_from
from polyviz.metrics.info import metric
from polyviz.metrics.sensitivity import sensitivity_perturbations

__all__ = ["avg_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
           "relative_output_stability", "relative_representation_stability", "gaussian_perturbations"]


def gaussian_perturbations(x: np.ndarray, n_perturb_samples: int, std: float, seed: int) -> np.ndarray:
    """``x + e``, (N * n_perturb_samples, H, W, C) float32, sample i's at rows ``i * n .. i * n + n -
    1``, e ~ N(0, ``std``^2) per value from ``numpy.random.default_rng(seed).standard_normal(dtype=float32)``."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((len(x) * n_perturb_samples, *x.shape[1:]), dtype=np.float32) * np.float32(std)
    return np.repeat(x, n_perturb_samples, axis=0) + e


def _check_perturbed(perturbed: Any, setup: Setup, n: int) -> np.ndarray:
    xp = np.asarray(perturbed, np.float32)
    want = (len(setup.x) * n, *setup.x.shape[1:])
    if xp.shape != want:
        raise InputError(f"perturbed: expected shape {want} (channels-last, sample-major), got {xp.shape}")
    return xp


def _moved(setup: Setup, xp: np.ndarray, n: int, desc: str) -> np.ndarray:
    """The setup's method at the perturbed inputs, the same target per sample, float64."""
    run = explain_fn(setup)
    targets = np.repeat(setup.targets, n)
    size = max(len(setup.x), setup.batch_size or 32)
    return np.concatenate([run(xp[s], targets[s]) for s in chunks(len(xp), size, desc, setup.progress)]).astype(np.float64)


def _forward(setup: Setup, x: np.ndarray) -> np.ndarray:
    size = setup.batch_size or 64
    return np.concatenate([setup.backend.forward(x[s]) for s in chunks(len(x), size, "forward", False)]).astype(np.float64)


def _norm(a: np.ndarray, n: int) -> np.ndarray:
    return np.linalg.norm(a.reshape(n, -1), axis=1)


def _sensitivity(model: Any, x: Any, target: Any, method: str, attribution: Any, n_perturb_samples: int,
                 radius: float, perturbed: Any, kwargs: dict[str, Any]) -> np.ndarray:
    """(N, n) ``||attr(x + d_k) - attr(x)|| / ||attr(x)||`` (a zero norm counts as 1)."""
    n_perturb_samples = check_positive_int(n_perturb_samples, "n_perturb_samples")
    if not isinstance(radius, int | float) or radius < 0:
        raise InputError(f"radius: expected a number >= 0, got {radius!r}")
    setup = setup_from(model, x, target, method, attribution, kwargs, needs_method=True)
    n = len(setup.x)
    base = attributions(setup, attribution).astype(np.float64)
    xp = (sensitivity_perturbations(setup.x, n_perturb_samples, radius, setup.seed) if perturbed is None
          else _check_perturbed(perturbed, setup, n_perturb_samples))
    moved = _moved(setup, xp, n_perturb_samples, "sensitivity")
    diff = _norm(moved - np.repeat(base, n_perturb_samples, axis=0), len(xp)).reshape(n, n_perturb_samples)
    norm = _norm(base, n)
    return diff / np.where(norm == 0, 1.0, norm)[:, None]


@metric("robustness", higher_is_better=False, reference="Yeh et al. 2019, relative variant as in Captum and Quantus",
        checked="quantus.AvgSensitivity (same draws)")
def avg_sensitivity(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_perturb_samples: int = 10, radius: float = 0.02, perturbed: np.ndarray | None = None, **kwargs: Any,
) -> np.ndarray:
    """Average sensitivity per sample (N,), Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
    Explanations" (NeurIPS), eq. 5 with the mean over the ball instead of the max:
    ``mean_k ||attr(x + d_k) - attr(x)|| / ||attr(x)||``. The division by ``||attr(x)||`` is the
    *relative* variant of Captum and Quantus (Yeh et al. do not divide); d_k uniform in the L-inf
    ball of ``radius`` (:func:`~polyviz.metrics.sensitivity_perturbations`), or the given
    ``perturbed`` inputs (N * n, H, W, C) channels-last, sample-major. ``attribution`` may give
    ``attr(x)``; ``method`` recomputes the rest."""
    return _sensitivity(model, x, target, method, attribution, n_perturb_samples, radius, perturbed, kwargs).mean(axis=1)


@metric("robustness", higher_is_better=False, reference="Alvarez-Melis & Jaakkola 2018 (local Lipschitz estimate)",
        checked="quantus.LocalLipschitzEstimate (same draws)")
def local_lipschitz_estimate(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_perturb_samples: int = 10, std: float = 0.1, perturbed: np.ndarray | None = None, **kwargs: Any,
) -> np.ndarray:
    """Local Lipschitz estimate per sample (N,), Alvarez-Melis & Jaakkola 2018, "On the Robustness of
    Interpretability Methods" (arXiv:1806.08049), eq. 3 with the max over samples:
    ``max_k ||attr(x) - attr(x_k)||_2 / ||x - x_k||_2``, x_k = x + N(0, ``std``^2) per value
    (:func:`gaussian_perturbations`, Quantus' default std 0.1) or the given ``perturbed``. Quantus
    adds 1e-10 to the denominator."""
    n_perturb_samples = check_positive_int(n_perturb_samples, "n_perturb_samples")
    if not isinstance(std, int | float) or std < 0:
        raise InputError(f"std: expected a number >= 0, got {std!r}")
    setup = setup_from(model, x, target, method, attribution, kwargs, needs_method=True)
    n = len(setup.x)
    base = attributions(setup, attribution).astype(np.float64)
    xp = (gaussian_perturbations(setup.x, n_perturb_samples, std, setup.seed) if perturbed is None
          else _check_perturbed(perturbed, setup, n_perturb_samples))
    moved = _moved(setup, xp, n_perturb_samples, "lipschitz")
    num = _norm(moved - np.repeat(base, n_perturb_samples, axis=0), len(xp))
    den = _norm(xp.astype(np.float64) - np.repeat(setup.x, n_perturb_samples, axis=0), len(xp))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.nanmax(ratio.reshape(n, n_perturb_samples), axis=1)


def _relative(a: np.ndarray, b: np.ndarray, eps: float, rows: int) -> np.ndarray:
    """``||(a - b) / a||`` per row, a zero ``a`` replaced by ``eps`` (as Quantus)."""
    return _norm((a - b) / np.where(a == 0, eps, a), rows)


def _stability(kind: str, model: Any, x: Any, target: Any, method: str, attribution: Any, n_perturb_samples: int,
               radius: float, perturbed: Any, eps_min: float, exclude_changed: bool, representation: str | None,
               kwargs: dict[str, Any]) -> np.ndarray:
    n_perturb_samples = check_positive_int(n_perturb_samples, "n_perturb_samples")
    if not isinstance(radius, int | float) or radius < 0:
        raise InputError(f"radius: expected a number >= 0, got {radius!r}")
    if not isinstance(eps_min, int | float) or eps_min <= 0:
        raise InputError(f"eps_min: expected a number > 0, got {eps_min!r}")
    setup = setup_from(model, x, target, method, attribution, kwargs, needs_method=True)
    xs, n, k = setup.x.astype(np.float64), len(setup.x), n_perturb_samples
    base = attributions(setup, attribution).astype(np.float64)
    xp = (sensitivity_perturbations(setup.x, k, radius, setup.seed) if perturbed is None
          else _check_perturbed(perturbed, setup, k))
    rows = len(xp)
    moved = _moved(setup, xp, k, kind)
    num = _relative(np.repeat(base, k, axis=0), moved, eps_min, rows)
    if kind == "output" or exclude_changed:  # x and x' in one batched pass
        both = _forward(setup, np.concatenate([setup.x, xp]))
        logits, logits_p = both[:n], both[n:]
    if kind == "input":
        den = _relative(np.repeat(xs, k, axis=0), xp.astype(np.float64), eps_min, rows)
    elif kind == "output":
        den = _norm(np.repeat(logits, k, axis=0) - logits_p, rows)
    else:
        from polyviz.api import default_layer

        layer = representation or default_layer(setup.backend)
        size = setup.batch_size or 64
        both_x = np.concatenate([setup.x, xp])
        acts = np.concatenate([setup.backend.layer_activations(both_x[s], [layer])[layer]
                               for s in chunks(len(both_x), size, "representation", False)]).astype(np.float64)
        den = _relative(np.repeat(acts[:n], k, axis=0), acts[n:], eps_min, rows)
    ratio = (num / np.maximum(den, eps_min)).reshape(n, k)
    if exclude_changed:
        same = (logits_p.argmax(axis=1) == np.repeat(logits.argmax(axis=1), k)).reshape(n, k)
        ratio = np.where(same, ratio, np.nan)
        if not same.any(axis=1).all():
            return np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in ratio])
    return np.nanmax(ratio, axis=1)


_STABILITY_DOC = """

    ``x'``: ``n_perturb_samples`` draws uniform in the L-inf ball of ``radius`` around x
    (:func:`~polyviz.metrics.sensitivity_perturbations`, from ``seed``) or the given ``perturbed``
    (N * n, H, W, C) channels-last, sample-major. As in the paper, only x' that keep the model's
    predicted class count (``exclude_changed``; NaN when none does); Quantus instead returns NaN
    when any draw changes the class (its default), or counts them all. Divisions by a zero value use
    ``eps_min`` in its place, as Quantus; the denominator is at least ``eps_min`` (the paper's max).
"""


@metric("robustness", higher_is_better=False, reference="Agarwal et al. 2022 (relative input stability)",
        checked="quantus.RelativeInputStability (same draws)")
def relative_input_stability(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_perturb_samples: int = 10, radius: float = 0.02, perturbed: np.ndarray | None = None, eps_min: float = 1e-6,
    exclude_changed: bool = True, **kwargs: Any,
) -> np.ndarray:
    """Relative input stability per sample (N,), Agarwal et al. 2022, "Rethinking Stability for
    Attribution-based Explanations" (arXiv:2203.06877), eq. 2:
    ``max_x' ||(e_x - e_x') / e_x||_2 / max(||(x - x') / x||_2, eps_min)``."""
    return _stability("input", model, x, target, method, attribution, n_perturb_samples, radius, perturbed, eps_min,
                      exclude_changed, None, kwargs)


@metric("robustness", higher_is_better=False, reference="Agarwal et al. 2022 (relative output stability)",
        checked="quantus.RelativeOutputStability (same draws)")
def relative_output_stability(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_perturb_samples: int = 10, radius: float = 0.02, perturbed: np.ndarray | None = None, eps_min: float = 1e-6,
    exclude_changed: bool = True, **kwargs: Any,
) -> np.ndarray:
    """Relative output stability per sample (N,), Agarwal et al. 2022 (arXiv:2203.06877), eq. 5:
    ``max_x' ||(e_x - e_x') / e_x||_2 / max(||h(x) - h(x')||_2, eps_min)``, h the logits."""
    return _stability("output", model, x, target, method, attribution, n_perturb_samples, radius, perturbed, eps_min,
                      exclude_changed, None, kwargs)


@metric("robustness", higher_is_better=False, reference="Agarwal et al. 2022 (relative representation stability)",
        checked="quantus.RelativeRepresentationStability (same draws, same layer)")
def relative_representation_stability(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_perturb_samples: int = 10, radius: float = 0.02, perturbed: np.ndarray | None = None, eps_min: float = 1e-6,
    exclude_changed: bool = True, representation: str | None = None, **kwargs: Any,
) -> np.ndarray:
    """Relative representation stability per sample (N,), Agarwal et al. 2022 (arXiv:2203.06877),
    eq. 4: ``max_x' ||(e_x - e_x') / e_x||_2 / max(||(L_x - L_x') / L_x||_2, eps_min)``, L the
    activations of the layer ``representation`` (default: the default CAM layer; Quantus defaults to
    all layers concatenated)."""
    return _stability("representation", model, x, target, method, attribution, n_perturb_samples, radius, perturbed,
                      eps_min, exclude_changed, representation, kwargs)


for _fn in (relative_input_stability, relative_output_stability, relative_representation_stability):
    _fn.__doc__ = (_fn.__doc__ or "") + _STABILITY_DOC
