"""Activation maximisation: filter visualisation and class models.

* :func:`visualize_filter` - the image that maximises a channel's mean activation (Erhan, Bengio,
  Courville & Vincent 2009, "Visualizing Higher-Layer Features of a Deep Network"; Olah et al.,
  "Feature Visualization", Distill 2017);
* :func:`class_model` - the image that maximises a class score, the pre-softmax logit (Simonyan,
  Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks", arXiv:1312.6034).

Many channels or classes in one call are optimised as one batch (one backend call per step, or
one per ``batch_size`` images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polyviz.errors import InputError, TargetError
from polyviz.optimisation.loop import Edits, Penalties, make_optimizer, objective_gradient, optimise
from polyviz.optimisation.params import make_param
from polyviz.optimisation.result import OptimisationResult
from polyviz.optimisation.setup import (
    check_positive,
    default_blur_sigma,
    default_robustness,
    get_backend,
    image_size,
    layer_geometry,
)
from polyviz.optimisation.transforms import Robustness
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, ChannelMean, ClassScore, Objective

__all__ = ["visualize_filter", "class_model"]

#: Learning rates by (parameterisation, optimiser): Lucid's 0.05 for Adam on the spectrum.
DEFAULT_LR = {("fourier", "adam"): 0.05, ("pixel", "adam"): 0.01, ("fourier", "ascent"): 0.5, ("pixel", "ascent"): 0.01}


def _as_indices(value: Any, name: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(value)
    single = arr.ndim == 0
    arr = np.atleast_1d(arr)
    if arr.ndim != 1 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise TargetError(f"{name}: expected an int >= 0 or a non-empty list of them, got {value!r}")
    return arr.astype(np.int64), single


def run_maximisation(
    be: Backend,
    objective_for: Callable[[slice], Objective],
    n: int,
    layer: str | None,
    method: str,
    *,
    steps: int,
    lr: float | None,
    size: int | tuple[int, int] | None,
    param: str,
    decorrelate: bool,
    optimizer: str,
    transforms: bool,
    jitter: int | None,
    scale: tuple[float, float] | None,
    rotate: float | None,
    crop: float | None,
    l1: float,
    l2: float,
    tv: float,
    blur_every: int | None,
    blur_sigma: float | None,
    clip_norm: float,
    clip_contribution: float,
    normalize_gradient: bool,
    seed: int,
    progress: bool,
    callback: Callable[[int, np.ndarray], object] | None,
    batch_size: int | None,
    extra: dict[str, Any],
) -> OptimisationResult:
    """The shared loop of :func:`visualize_filter` and :func:`class_model`."""
    check_positive("steps", steps, integer=True)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    if callback is not None and not callable(callback):
        raise InputError(f"callback: expected a callable (step, images) or None, got {type(callback).__name__}")
    hwc = image_size(be, size)
    depth, stride = layer_geometry(be, layer, hwc)
    auto = default_robustness(hwc, depth, stride)
    if transforms:
        rob = Robustness(
            jitter=int(auto["jitter"] if jitter is None else check_positive("jitter", jitter, True, True)),
            scale=tuple(float(s) for s in (auto["scale"] if scale is None else scale)),
            rotate=float(auto["rotate"] if rotate is None else check_positive("rotate", rotate, allow_zero=True)),
            crop=float(auto["crop"] if crop is None else crop),
        )
        if not (0 < rob.scale[0] <= rob.scale[1]) or not 0 <= rob.crop < 1:
            raise InputError(f"scale, crop: expected 0 < scale[0] <= scale[1] and 0 <= crop < 1, got {scale!r}, {crop!r}")
    else:
        rob = Robustness()
    if param == "fourier" and (blur_every or clip_norm or clip_contribution):
        raise InputError(
            "blur_every, clip_norm, clip_contribution: these edit the pixels between steps (Yosinski et al. "
            "2015) and need param='pixel'"
        )
    if blur_every is None:
        blur_every = 4 if param == "pixel" else 0
    if blur_sigma is None:
        blur_sigma = default_blur_sigma(hwc) if blur_every else 0.0
    edits = Edits(int(blur_every), float(blur_sigma), float(clip_norm), float(clip_contribution))
    penalties = Penalties(l1=float(l1), l2=float(l2), tv=float(tv))
    shape = (n, *hwc)
    p = make_param(param, shape, decorrelate)
    if lr is None:
        if (param, optimizer) not in DEFAULT_LR:
            make_optimizer(optimizer, 1.0)  # the clear error for a bad name
        lr = DEFAULT_LR[(param, optimizer)]
    check_positive("lr", lr)
    opt = make_optimizer(optimizer, float(lr))
    rng = np.random.default_rng(seed)
    z = p.init(rng)
    z, history = optimise(
        be, objective_for, p, z, steps=int(steps), optimizer=opt, rng=rng, robustness=rob, penalties=penalties,
        edits=edits, normalize=normalize_gradient, batch_size=batch_size, progress=progress, callback=callback,
        desc=method,
    )
    images = p.image(z)
    values, _ = objective_gradient(be, images, objective_for, batch_size)
    options = {
        **extra, "steps": int(steps), "lr": float(lr), "size": hwc[:2], "param": param, "decorrelate": decorrelate,
        "optimizer": optimizer, "jitter": rob.jitter, "scale": rob.scale, "rotate": rob.rotate, "crop": rob.crop,
        "l1": l1, "l2": l2, "tv": tv, "blur_every": edits.blur_every, "blur_sigma": edits.blur_sigma,
        "clip_norm": clip_norm, "clip_contribution": clip_contribution, "normalize_gradient": normalize_gradient,
        "seed": seed, "layer_depth": depth, "layer_stride": stride,
        "preprocess": None if be.preprocess is None else be.preprocess.describe(),
    }
    return OptimisationResult(
        images=images, history=history, values=values, method=method, backend=be.name, layout=be.native_layout, options=options,
    )


def visualize_filter(
    model: Any,
    layer: str,
    channel: int | Sequence[int],
    *,
    steps: int = 256,
    lr: float | None = None,
    size: int | tuple[int, int] | None = None,
    param: str = "fourier",
    decorrelate: bool = True,
    optimizer: str = "adam",
    transforms: bool = True,
    jitter: int | None = None,
    scale: tuple[float, float] | None = None,
    rotate: float | None = None,
    crop: float | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    tv: float = 0.0,
    blur_every: int | None = None,
    blur_sigma: float | None = None,
    clip_norm: float = 0.0,
    clip_contribution: float = 0.0,
    normalize_gradient: bool = True,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
) -> OptimisationResult:
    """Images that maximise the mean activation of ``channel`` of ``layer`` (a dense layer: that
    unit), one image per channel when ``channel`` is a list, optimised as one batch.

    ``param``: "fourier" (Lucid's decorrelated 1/f Fourier basis, default) or "pixel".
    ``transforms``: random jitter / scale / rotation / crop inside the objective; ``jitter``,
    ``scale`` (min, max), ``rotate`` (degrees), ``crop`` (fraction) override the defaults, which
    adapt to the image size and the layer's depth (see :mod:`polyviz.optimisation.setup`).
    ``l1``, ``l2``, ``tv``: penalty weights, relative to the objective's gradient normalised to
    mean |g| = 1 per image (``normalize_gradient``). Pixel parameterisation only: ``blur_every``
    steps by ``blur_sigma``, ``clip_norm`` / ``clip_contribution`` percentiles (Yosinski et al.
    2015). ``size``: image size (default: the model's, else 224). ``callback(step, images)``:
    called every step; return False to stop. Returns an :class:`OptimisationResult`.
    """
    be = get_backend(model, backend, preprocess)
    (layer,) = be.check_layers([layer])
    channels, _ = _as_indices(channel, "channel")

    def objective_for(sl: slice) -> Objective:
        return ChannelMean(layer, channels[sl].tolist())

    return run_maximisation(
        be, objective_for, len(channels), layer, "visualize_filter", steps=steps, lr=lr, size=size, param=param,
        decorrelate=decorrelate, optimizer=optimizer, transforms=transforms, jitter=jitter, scale=scale,
        rotate=rotate, crop=crop, l1=l1, l2=l2, tv=tv, blur_every=blur_every, blur_sigma=blur_sigma,
        clip_norm=clip_norm, clip_contribution=clip_contribution, normalize_gradient=normalize_gradient, seed=seed,
        progress=progress, callback=callback, batch_size=batch_size,
        extra={"layer": layer, "channel": channels.tolist()},
    )


def class_model(
    model: Any,
    target: int | Sequence[int],
    *,
    steps: int = 256,
    lr: float | None = None,
    size: int | tuple[int, int] | None = None,
    param: str = "fourier",
    decorrelate: bool = True,
    optimizer: str = "adam",
    transforms: bool = True,
    jitter: int | None = None,
    scale: tuple[float, float] | None = None,
    rotate: float | None = None,
    crop: float | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    tv: float = 0.0,
    blur_every: int | None = None,
    blur_sigma: float | None = None,
    clip_norm: float = 0.0,
    clip_contribution: float = 0.0,
    normalize_gradient: bool = True,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
) -> OptimisationResult:
    """Class models (Simonyan et al. 2013): images that maximise the pre-softmax score of class
    ``target`` (one image per class when a list), optimised as one batch. Options as for
    :func:`visualize_filter`; ``l2`` is Simonyan et al.'s L2 regularisation."""
    be = get_backend(model, backend, preprocess)
    targets, _ = _as_indices(target, "target")

    def objective_for(sl: slice) -> Objective:
        return ClassScore(targets[sl].tolist())

    return run_maximisation(
        be, objective_for, len(targets), None, "class_model", steps=steps, lr=lr, size=size, param=param,
        decorrelate=decorrelate, optimizer=optimizer, transforms=transforms, jitter=jitter, scale=scale,
        rotate=rotate, crop=crop, l1=l1, l2=l2, tv=tv, blur_every=blur_every, blur_sigma=blur_sigma,
        clip_norm=clip_norm, clip_contribution=clip_contribution, normalize_gradient=normalize_gradient, seed=seed,
        progress=progress, callback=callback, batch_size=batch_size, extra={"target": targets.tolist()},
    )


def step_runner(be: Backend, x: np.ndarray, target: Sequence[int]) -> Callable[[], object]:
    """One step of :func:`class_model` with its defaults for a batch shaped like ``x`` (for the
    benchmark: its floor is one forward and input backward of that batch)."""
    targets = np.asarray(target, np.int64)
    n, h, w, c = x.shape
    p = make_param("fourier", (n, h, w, c))
    auto = default_robustness((h, w, c), 1.0, max(h, w))
    rob = Robustness(auto["jitter"], auto["scale"], auto["rotate"], auto["crop"])
    rng = np.random.default_rng(0)
    state = {"z": p.init(rng), "opt": make_optimizer("adam", DEFAULT_LR[("fourier", "adam")])}

    def objective_for(sl: slice) -> Objective:
        return ClassScore(targets[sl].tolist())

    def run() -> None:
        state["z"], _ = optimise(be, objective_for, p, state["z"], steps=1, optimizer=state["opt"], rng=rng,
                                 robustness=rob, progress=False)

    return run
