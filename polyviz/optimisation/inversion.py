"""Representation inversion (Mahendran & Vedaldi 2014, "Understanding Deep Image Representations by
Inverting Them", arXiv:1412.0035): the image whose representation at ``layer`` matches that of
``x``, found by minimising

    ||phi(x') - phi(x)||^2 / ||phi(x)||^2  +  a * mean(|x' - 0.5| / B)^alpha  +  t * mean(TV^beta(x') / V^beta)

with the alpha-norm and total-variation priors normalised as in the paper (B = 0.5, the half range
of a [0, 1] image, V = B / 6.5), from seeded noise, by Adam with a decaying step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.optimisation.loop import Penalties, make_optimizer, objective_gradient, optimise
from polyviz.optimisation.params import PixelParam
from polyviz.optimisation.result import OptimisationResult
from polyviz.optimisation.setup import check_images, check_positive, get_backend
from polyviz.preprocess import Preprocess
from polyviz.protocol import LayerDistance, Objective

__all__ = ["invert"]

B = 0.5
V = B / 6.5


def invert(
    model: Any,
    x: Any,
    layer: str,
    *,
    steps: int = 200,
    lr: float = 0.05,
    alpha: float = 6.0,
    alpha_weight: float = 1e-3,
    tv_beta: float = 2.0,
    tv_weight: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
    layout: str | None = None,
) -> OptimisationResult:
    """Reconstruct ``x`` (images in [0, 1], native layout unless ``layout=``) from its activations
    at ``layer``. ``values`` and ``history`` hold the squared representation distance
    ``sum (phi(x') - phi(x))^2`` per image (``history[0]`` is the seeded noise start's)."""
    be = get_backend(model, backend, preprocess)
    xs, layout_name = check_images(be, x, layout)
    (layer,) = be.check_layers([layer])
    check_positive("steps", steps, integer=True)
    check_positive("lr", lr)
    for name, value in (("alpha_weight", alpha_weight), ("tv_weight", tv_weight)):
        check_positive(name, value, allow_zero=True)
    if alpha < 1 or tv_beta < 1:
        raise InputError(f"alpha, tv_beta: expected exponents >= 1, got {alpha!r}, {tv_beta!r}")
    n, h, w, c = xs.shape
    size = batch_size or n
    reference = np.concatenate(
        [be.layer_activations(xs[i : i + size], [layer])[layer] for i in range(0, n, size)]
    ).astype(np.float32)
    ref_norm = np.maximum((reference.astype(np.float64) ** 2).reshape(n, -1).sum(axis=1), 1e-12)

    def objective_for(sl: slice) -> Objective:
        return LayerDistance(layer, reference[sl])

    elements = h * w * c
    penalties = Penalties(alpha=alpha_weight / (elements * B**alpha), alpha_power=alpha,
                          tv=tv_weight / (elements * V**tv_beta), tv_beta=tv_beta)
    scale = (1.0 / ref_norm)[:, None, None, None]
    param = PixelParam(xs.shape)
    rng = np.random.default_rng(seed)
    z = param.init(rng, std=0.1)
    z, history = optimise(
        be, objective_for, param, z, steps=int(steps), optimizer=make_optimizer("adam", float(lr)), rng=rng,
        penalties=penalties, normalize=False, sign=-1.0, objective_scale=scale,
        lr_at=lambda step: lr * 0.05 ** (step / steps), batch_size=batch_size, progress=progress,
        callback=callback, desc="invert",
    )
    values, _ = objective_gradient(be, z, objective_for, batch_size)
    return OptimisationResult(
        images=z, history=history, values=values, method="invert", backend=be.name, layout=layout_name,
        options={"layer": layer, "steps": steps, "lr": lr, "alpha": alpha, "alpha_weight": alpha_weight,
                 "tv_beta": tv_beta, "tv_weight": tv_weight, "seed": seed},
    )
