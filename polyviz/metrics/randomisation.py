"""Randomisation metrics: does the explanation change when it should? The model-parameter
randomisation test itself (Adebayo et al. 2018) is :func:`polyviz.metrics.sanity_check`; the
randomised models here are the same (:func:`polyviz.metrics.randomised_backend`: a copy, numpy-drawn
weights identical in every framework, the user's model untouched).

* :func:`random_logit`: Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP Attributions
  Fail", ICML (arXiv:1912.09818): the explanation of the target against that of a random other
  class.
* :func:`smooth_mprt` and :func:`efficient_mprt`: Hedström et al. 2023, "Sanity Checks Revisited:
  An Exploration to Repair the Model Parameter Randomisation Test", XAI in Action workshop,
  NeurIPS (arXiv:2401.06465).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import attributions, check_positive_int, chunks, explain_fn, prepare
from polyviz.metrics.info import metric
from polyviz.metrics.sanity import randomised_backend, similarity
from polyviz.preprocess import Preprocess

__all__ = ["random_logit", "other_classes", "smooth_mprt", "smooth_noise", "efficient_mprt", "histogram_entropy"]


def other_classes(targets: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """One class per sample drawn uniformly among the ``classes - 1`` others than its target, by
    ``numpy.random.default_rng(seed).integers(0, classes - 1, N)`` (skipping the target)."""
    if classes < 2:
        raise InputError(f"target: random logit needs a model with at least 2 classes, got {classes}")
    k = np.random.default_rng(seed).integers(0, classes - 1, len(targets))
    return k + (k >= targets)


@metric("randomisation", higher_is_better=False, reference="Sixt et al. 2020",
        checked="quantus.RandomLogit (aligned: 2 classes, Spearman of |map|); torch = keras")
def random_logit(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    other: Any = None, similarity_kind: str = "spearman_abs", layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Random logit (Sixt et al. 2020), (N,) float64: the similarity of the explanation of the
    target to that of another class, drawn at random (:func:`other_classes`, from ``seed``) unless
    ``other`` gives one per sample; lower is better (a class-sensitive method). Similarity:
    :func:`polyviz.metrics.similarity` (``similarity_kind``, default Spearman of the magnitude maps);
    Sixt et al. and Quantus' default use SSIM (Quantus takes any ``similarity_func``).
    """
    similarity(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), similarity_kind)  # validate the kind early
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    classes = setup.backend.class_count(setup.x)
    if other is None:
        off = other_classes(setup.targets, classes, setup.seed)
    else:
        off = np.asarray(other).reshape(-1)
        if off.shape != setup.targets.shape or not np.issubdtype(off.dtype, np.integer) or \
                np.any((off < 0) | (off >= classes)) or np.any(off == setup.targets):
            raise InputError(f"other: expected one class in 0..{classes - 1} per sample, not its target, got {other!r}")
    a = attributions(setup, attribution)
    b = explain_fn(setup)(setup.x, off)
    return similarity(a, b, similarity_kind)


def smooth_noise(x: np.ndarray, index: int, n_samples: int, noise_magnitude: float, seed: int) -> np.ndarray:
    """The ``n_samples`` noisy copies of sample ``index`` of the channels-last ``x`` that
    :func:`smooth_mprt` averages over: ``x_i + e``, ``e ~ N(0, sigma^2)`` with ``sigma =
    noise_magnitude * (max(x_i) - min(x_i))`` (Quantus' SmoothMPRT), drawn by
    ``numpy.random.default_rng([seed, index]).standard_normal`` in float64, rounded to float32."""
    xi = np.asarray(x[index], np.float32)
    sigma = noise_magnitude * float(xi.max() - xi.min())
    e = np.random.default_rng([int(seed), int(index)]).standard_normal((n_samples, *xi.shape)) * sigma
    return xi[None] + e.astype(np.float32)


def _smoothed(run: Any, be: Any, x: np.ndarray, targets: np.ndarray, n_samples: int, noise_magnitude: float,
              seed: int, size: int, desc: str, progress: bool) -> np.ndarray:
    """Mean explanation over :func:`smooth_noise` copies, per sample (float64)."""
    per_call = max(1, size // n_samples)
    out = []
    for s in chunks(len(x), per_call, desc, progress):
        idx = range(s.start, s.stop)
        xb = np.concatenate([smooth_noise(x, i, n_samples, noise_magnitude, seed) for i in idx])
        a = run(xb, np.repeat(targets[s], n_samples), be).astype(np.float64)
        out.append(a.reshape(len(idx), n_samples, *a.shape[1:]).mean(axis=1))
    return np.concatenate(out)


@metric("randomisation", higher_is_better=False, reference="Hedström et al. 2023 (sMPRT)",
        checked="= sanity_check at n_samples=1, noise 0; torch = keras")
def smooth_mprt(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", n_samples: int = 50,
    noise_magnitude: float = 0.1, similarity_kind: str = "spearman_abs", layers: list[str] | None = None,
    layer: str | None = None, backend: str | None = None, preprocess: Preprocess | str | None = None,
    layout: str | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
    method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Smooth MPRT (Hedström et al. 2023), (N,) float64: MPRT on denoised explanations. Each
    explanation is the mean over ``n_samples`` noisy copies of the input (:func:`smooth_noise`, the
    same copies for both models), of the original model and of the fully randomised one
    (:func:`polyviz.metrics.randomised_backend`: every conv and dense layer of ``layers``); the
    value is their similarity (``similarity_kind``), lower is better. This is Quantus'
    ``SmoothMPRT(return_last_correlation=True)``; the per-layer cascade is
    :func:`polyviz.metrics.sanity_check`'s. Quantus draws fresh noise for each model and
    re-initialises layers with the framework's initialiser (different in each framework).
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    if not isinstance(noise_magnitude, int | float) or noise_magnitude < 0:
        raise InputError(f"noise_magnitude: expected a number >= 0, got {noise_magnitude!r}")
    similarity(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), similarity_kind)
    setup = prepare(model, x, target, method=method, attribution=None,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    randomised, _ = randomised_backend(setup.backend, seed=setup.seed, layers=layers)
    run = explain_fn(setup)
    size = max(n_samples, setup.batch_size or 64)
    args = (setup.x, setup.targets, n_samples, float(noise_magnitude), setup.seed, size)
    original = _smoothed(run, setup.backend, *args, "smooth MPRT (original)", setup.progress)
    moved = _smoothed(run, randomised, *args, "smooth MPRT (randomised)", setup.progress)
    return similarity(original, moved, similarity_kind)


def histogram_entropy(a: np.ndarray, n_bins: int = 100) -> np.ndarray:
    """Per sample, the Shannon entropy (nats) of the histogram of every value of the explanation in
    ``n_bins`` equal bins between its minimum and maximum (Hedström et al.'s discrete entropy)."""
    flat = np.asarray(a, np.float64).reshape(len(a), -1)
    out = np.empty(len(flat))
    for i, row in enumerate(flat):
        counts, _ = np.histogram(row, bins=n_bins)
        p = counts[counts > 0] / counts.sum()
        out[i] = -(p * np.log(p)).sum()
    return out


@metric("randomisation", higher_is_better=True, reference="Hedström et al. 2023 (eMPRT)",
        checked="quantus discrete_entropy on the same maps; torch = keras")
def efficient_mprt(
    model: Any, x: Any, target: Any = None, *, method: str = "saliency", attribution: Any = None,
    n_bins: int = 100, layers: list[str] | None = None, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True, method_options: dict[str, Any] | None = None, **options: Any,
) -> np.ndarray:
    """Efficient MPRT (Hedström et al. 2023), (N,) float64: the relative rise in the explanation's
    complexity when every layer is randomised, ``(H(e_random) - H(e)) / H(e)``, with ``H`` the
    discrete entropy of a ``n_bins`` histogram of the explanation's values
    (:func:`histogram_entropy`, Quantus' default ``discrete_entropy``); higher is better (the
    explanation of a random model should be noisier). The randomised model:
    :func:`polyviz.metrics.randomised_backend` (every conv and dense layer of ``layers``).
    ``attribution`` may give the original's explanation.
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    setup = prepare(model, x, target, method=method, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    randomised, _ = randomised_backend(setup.backend, seed=setup.seed, layers=layers)
    before = histogram_entropy(attributions(setup, attribution), n_bins)
    after = histogram_entropy(explain_fn(setup)(setup.x, setup.targets, randomised), n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (after - before) / before
