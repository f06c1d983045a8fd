"""Deep dream (Mordvintsev, Olah & Tyka 2015, "Inceptionism: Going Deeper into Neural Networks"):
gradient ascent on an image to raise the norm of a layer's activations (over ``channels`` if given),
with normalised steps, random jitter inside the objective and octaves.

Octaves work on models of any input size, fixed or not: the image always keeps its size, and at
octave ``k`` (coarse to fine) the gradient is restricted to details of ``size / octave_scale**k``
pixels, ``g -> U U^T g`` with ``U`` the bilinear upsampling from that resolution (so coarse octaves
paint large structures and the last one fine detail, as the classic pyramid does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.optimisation.loop import _normalise, make_optimizer, objective_gradient, optimise
from polyviz.optimisation.params import PixelParam
from polyviz.optimisation.result import OptimisationResult
from polyviz.optimisation.setup import check_images, check_positive, get_backend
from polyviz.optimisation.transforms import Robustness, upsample
from polyviz.preprocess import Preprocess
from polyviz.protocol import LayerNorm, Objective

__all__ = ["deep_dream"]


def deep_dream(
    model: Any,
    x: Any,
    layer: str,
    channels: Sequence[int] | None = None,
    *,
    octaves: int = 3,
    octave_scale: float = 1.4,
    steps: int = 20,
    lr: float = 0.01,
    jitter: int | None = None,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
    layout: str | None = None,
) -> OptimisationResult:
    """Deep dream of ``x`` (images in [0, 1], the model's native layout unless ``layout=``):
    ``steps`` steps per octave of ``x += lr * g / mean|g|`` on the mean squared activation of
    ``layer`` (``channels`` only, if given), clipped to [0, 1]. ``jitter`` (default: size / 16
    pixels) shifts the image randomly inside the objective. Returns an :class:`OptimisationResult`
    whose ``values`` are the layer norm of the dreamed images."""
    be = get_backend(model, backend, preprocess)
    xs, layout_name = check_images(be, x, layout)
    (layer,) = be.check_layers([layer])
    check_positive("octaves", octaves, integer=True)
    check_positive("steps", steps, integer=True)
    check_positive("lr", lr)
    if not isinstance(octave_scale, int | float) or octave_scale < 1:
        raise InputError(f"octave_scale: expected a number >= 1, got {octave_scale!r}")
    if channels is not None:
        channels = tuple(int(c) for c in np.atleast_1d(channels))
    n, h, w, _ = xs.shape
    if jitter is None:
        jitter = max(1, min(h, w) // 16)
    check_positive("jitter", jitter, integer=True, allow_zero=True)
    objective = LayerNorm(layer, channels)

    def objective_for(sl: slice) -> Objective:
        return objective

    param = PixelParam(xs.shape)
    z = xs.copy()
    rng = np.random.default_rng(seed)
    history: list[np.ndarray] = []
    for k in reversed(range(octaves)):
        low = (max(1, int(round(h / octave_scale**k))), max(1, int(round(w / octave_scale**k))))
        up = upsample(n, low, (h, w)) if low != (h, w) else None

        def restrict(g: np.ndarray, up: Any = up) -> np.ndarray:
            if up is not None:
                g = up.apply(up.adjoint(g.astype(np.float32)))
            return _normalise(g)

        z, hist = optimise(
            be, objective_for, param, z, steps=int(steps), optimizer=make_optimizer("ascent", float(lr)), rng=rng,
            robustness=Robustness(jitter=int(jitter)), normalize=False, grad_filter=restrict, batch_size=batch_size,
            progress=progress, callback=callback, desc=f"deep_dream octave {octaves - k}/{octaves}",
            step_offset=len(history),
        )
        history += hist
    values, _ = objective_gradient(be, z, objective_for, batch_size)
    return OptimisationResult(
        images=z, history=history, values=values, method="deep_dream", backend=be.name, layout=layout_name,
        options={"layer": layer, "channels": channels, "octaves": octaves, "octave_scale": octave_scale,
                 "steps": steps, "lr": lr, "jitter": jitter, "seed": seed},
    )
