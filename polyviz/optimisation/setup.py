"""Shared set-up of the optimisation functions: backend, image size, layer geometry, defaults.

Defaults adapt to the input size and to the depth of the layer (not to one network):

* jitter: ``min(stride, size // 16)`` pixels (at least 1), where ``stride`` is the layer's
  downsampling factor (input size / map size; the whole input for a dense layer or the output).
  Shifts by about one map cell stop the image from aligning with the layer's grid (checkerboards),
  and the cap keeps them small against the image (Lucid's 8-16 px at 224 px);
* random scale ``1 +- 0.1 d`` and rotation ``+- 10 d`` degrees, with ``d`` the layer's depth in
  [0, 1]: units of shallow layers see small patches and
  need no robustness to them, class units need the most (Lucid's ranges at d = 1). ``d`` is the
  share of the model's weighted layers (convolutions, dense) at or before the layer;
* Gaussian blur (pixel parameterisation): every 4 steps, sigma ``0.5 * max(1, size / 112)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend
from polyviz.registry import backend_for

__all__ = ["get_backend", "image_size", "layer_geometry", "default_robustness", "check_images", "check_positive"]

#: Layer types that only group other layers.
CONTAINER_TYPES = {"Sequential", "ModuleList", "ModuleDict", "Functional", "Model"}
#: Size used when neither ``size=`` nor the model says one (a torch model takes any size).
FALLBACK_SIZE = 224


def get_backend(model: Any, backend: str | None, preprocess: Preprocess | str | None) -> Backend:
    """The backend driving ``model``; preset preprocessing names are resolved for images in [0, 1]."""
    return backend_for(model, backend, preprocess=Preprocess.named(preprocess, input_range=1.0))


def image_size(be: Backend, size: int | tuple[int, int] | None) -> tuple[int, int, int]:
    """(H, W, C) of the optimised images: ``size``, else the model's own size, else 224."""
    shape = be.input_shape or (None, None, 3)
    channels = int(shape[-1] or 3)
    fixed = (shape[0], shape[1]) if shape[0] is not None and shape[1] is not None else None
    if size is None:
        h, w = fixed or (FALLBACK_SIZE, FALLBACK_SIZE)
    else:
        try:
            h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError):
            raise InputError(f"size: expected an int or (height, width), got {size!r}") from None
        if min(h, w) < 8:
            raise InputError(f"size: expected at least 8 pixels, got {size!r}")
        if fixed is not None and (h, w) != tuple(int(s) for s in fixed):
            raise InputError(f"size: this model takes {fixed[0]}x{fixed[1]} images, got {h}x{w}")
    return int(h), int(w), channels


def layer_geometry(be: Backend, layer: str | None, size: tuple[int, int, int]) -> tuple[float, int]:
    """(depth in [0, 1], stride in pixels) of ``layer`` (None: the output) for images of ``size``."""
    h, w, c = size
    be.check_x(np.zeros((1, h, w, c), np.float32))  # fixes the size torch probes layer shapes at
    if layer is None:
        return 1.0, max(h, w)
    infos = [info for info in be.layers() if info.type not in CONTAINER_TYPES]
    names = [info.name for info in infos]
    if layer not in names:
        return 1.0, max(h, w)
    index = names.index(layer)
    # depth: the share of the model's weighted layers at or before this one (the same count in
    # every framework, whether ReLUs are separate layers or fused into convolutions)
    weighted = [info.params > 0 for info in infos]
    depth = sum(weighted[: index + 1]) / max(sum(weighted), 1)
    shape = infos[index].output_shape
    stride = max(h, w) if shape is None or len(shape) != 3 else max(1, int(round(h / max(shape[0], 1))))
    return float(depth), int(stride)


def default_robustness(size: tuple[int, int, int], depth: float, stride: int) -> dict[str, Any]:
    """The default jitter, scale, rotation and crop for a layer (see the module docstring)."""
    side = min(size[0], size[1])
    return {
        "jitter": int(max(1, min(stride, side // 16))),
        "scale": (1.0 - 0.1 * depth, 1.0 + 0.1 * depth),
        "rotate": 10.0 * depth,
        "crop": 0.0,
    }


def default_blur_sigma(size: tuple[int, int, int]) -> float:
    return 0.5 * max(1.0, min(size[0], size[1]) / 112.0)


def check_images(be: Backend, x: Any, layout: str | None, name: str = "x") -> tuple[np.ndarray, str]:
    """A caller's image or batch in [0, 1] as a validated channels-last batch, and its layout."""
    if layout is None:
        layout = be.native_layout
    xs, lay = be.check_input(x, layout, name, range_warning=False)  # the [0, 1] check follows
    lo, hi = float(xs.min()), float(xs.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(
            f"{name}: optimisation works on images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; rescale "
            "them and give the model's own input scaling as preprocess= (e.g. Preprocess(scale=255))"
        )
    return np.clip(xs, 0.0, 1.0), lay.name


def check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> Any:
    ok = isinstance(value, int | np.integer) if integer else isinstance(value, int | float | np.integer | np.floating)
    if not ok or isinstance(value, bool) or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "an int" if integer else "a number"
        raise InputError(f"{name}: expected {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value
