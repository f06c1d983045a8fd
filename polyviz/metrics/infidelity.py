"""Explanation infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations",
arXiv:1901.09392), with Captum's semantics (``captum.metrics.infidelity``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.metrics._common import attributions, batched_forward, check_positive_int, prepare, softmax
from polyviz.metrics.info import metric
from polyviz.preprocess import Preprocess

__all__ = ["infidelity", "infidelity_perturbations"]


def infidelity_perturbations(x: np.ndarray, n_perturb_samples: int, noise_std: float, seed: int) -> np.ndarray:
    """The perturbations I, (N * n_perturb_samples, H, W, C) float32, sample i's at rows
    ``i * n .. i * n + n - 1`` (Captum's ``repeat_interleave`` order): I ~ N(0, noise_std^2) per
    element, drawn by ``numpy.random.default_rng(seed).standard_normal(dtype=float32)``."""
    n, *shape = np.shape(x)
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((n * n_perturb_samples, *shape), dtype=np.float32)
    return draws * np.float32(noise_std)


@metric("faithfulness", higher_is_better=False, reference="Yeh et al. 2019; captum.metrics.infidelity", checked="quantus.Infidelity, captum.metrics.infidelity")
def infidelity(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    method: str | None = "saliency",
    attribution: Any = None,
    n_perturb_samples: int = 10,
    noise_std: float = 0.003,
    perturbations: np.ndarray | None = None,
    multiply_by_inputs: bool = False,
    baseline: float | np.ndarray = 0.0,
    normalize: bool = False,
    relative: bool = False,
    score: str = "logit",
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
    """Infidelity per sample, (N,) float64: ``mean_k (I_k . attr - (S(x) - S(x - I_k)))^2``.

    ``attr``: the attributions of ``method`` (any registered method, its options as keywords or in
    ``method_options``) or the given ``attribution`` (an Explanation or an array in the caller's
    layout). A map (N, H, W) counts for every channel of its pixel. ``S``: the target's logit
    (``score="logit"``, what Captum sees from a torch model) or softmax probability.

    Perturbations (Captum's documented example, its default in all but name): I ~ N(0,
    ``noise_std``^2) per element, the perturbed input ``x - I``; ``n_perturb_samples`` per sample,
    drawn from ``seed`` (see :func:`infidelity_perturbations`), or given as ``perturbations`` (N *
    n, H, W, C) channels-last, sample-major. ``multiply_by_inputs`` (Captum's
    ``infidelity_perturb_func_decorator(True)``, for attributions that include the input factor,
    such as gradient x input or integrated gradients): the dot product uses ``I / (x - baseline)``
    (1 where ``x == baseline``) instead of I. ``normalize`` (Captum, from the paper's code): scale
    ``I . attr`` by ``beta = E[(I . attr)(S(x) - S(x - I))] / E[(I . attr)^2]`` first, which makes
    the value invariant to scaling the attributions. ``relative`` (not in Captum): divide by
    ``E[(S(x) - S(x - I))^2]``, the infidelity of a zero attribution, so that 0 is perfect and 1 no
    better than nothing; with ``normalize`` it is ``1 - cos^2`` between the vectors of ``I . attr``
    and of the score changes over the draws.
    """
    n_perturb_samples = check_positive_int(n_perturb_samples, "n_perturb_samples")
    if score not in ("logit", "probability"):
        raise InputError(f"score: expected 'logit' or 'probability', got {score!r}")
    setup = prepare(model, x, target, method=method if attribution is None else None, attribution=attribution,
                    options={**(method_options or {}), **options}, layer=layer, backend=backend,
                    preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed, progress=progress)
    xs = setup.x
    n = len(xs)
    attr = attributions(setup, attribution)
    if attr.ndim == 3:
        attr = attr[..., None]
    if perturbations is None:
        pert = infidelity_perturbations(xs, n_perturb_samples, noise_std, setup.seed)
    else:
        pert = np.asarray(perturbations, np.float32)
        if pert.shape != (n * n_perturb_samples, *xs.shape[1:]):
            raise InputError(f"perturbations: expected shape {(n * n_perturb_samples, *xs.shape[1:])} (channels-last, "
                             f"sample-major), got {pert.shape}")
    rep = np.repeat(xs, n_perturb_samples, axis=0)
    perturbed = rep - pert
    dot = pert.astype(np.float64)
    if multiply_by_inputs:
        denom = rep.astype(np.float64) - np.broadcast_to(np.asarray(baseline, np.float64), rep.shape[1:])
        dot = dot / np.where(denom != 0, denom, 1.0)
    a = (dot * np.repeat(attr.astype(np.float64), n_perturb_samples, axis=0)).reshape(len(dot), -1).sum(axis=1)
    outs = batched_forward(setup, np.concatenate([xs, perturbed]), "infidelity")
    if score == "probability":
        outs = softmax(outs)
    t = np.concatenate([setup.targets, np.repeat(setup.targets, n_perturb_samples)])
    s = outs[np.arange(len(outs)), t]
    b = np.repeat(s[:n], n_perturb_samples) - s[n:]
    a, b = a.reshape(n, n_perturb_samples), b.reshape(n, n_perturb_samples)
    if normalize:
        aa, ab, bb = (a * a).sum(1), (a * b).sum(1), (b * b).sum(1)
        beta = ab / np.where(aa != 0, aa, 1.0)
        value = (beta * beta * aa - 2 * beta * ab + bb) / n_perturb_samples
    else:
        value = ((a - b) ** 2).mean(axis=1)
    if relative:
        scale = (b * b).mean(axis=1)
        value = value / np.where(scale > 0, scale, 1.0)
    return value
