"""What every metric shares: the backend and channels-last batch, the targets, the attributions
(computed with any registered method, or given), maps, scores and batched forwards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.layout import to_channels_last
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, range_already_checked

__all__ = ["Setup", "prepare", "attributions", "explain_fn", "as_map", "softmax", "batched_forward", "chunks",
           "check_positive_int"]


@dataclass
class Setup:
    """A validated metric call: the backend, x channels-last (N, H, W, C), one target per sample
    and how the explanations are produced."""

    backend: Backend
    x: np.ndarray
    targets: np.ndarray
    layout: str
    method: str | None
    options: dict[str, Any]
    layer: str | None
    batch_size: int | None
    seed: int
    progress: bool


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def prepare(
    model: Any,
    x: Any,
    target: Any,
    *,
    method: str | None,
    attribution: Any,
    options: dict[str, Any],
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Setup:
    """Resolve the backend (a :class:`Backend` instance is used as it is), bring ``x`` to
    channels-last and fix one target per sample: ``target``, else the explanation's, else the
    predicted class."""
    from polyviz.api import check_seed, resolve_targets
    from polyviz.registry import backend_for

    be = backend_for(model, backend, preprocess=preprocess)
    layout = layout or be.native_layout
    xs, _ = be.check_input(x, layout)
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    if method is None and attribution is None:
        raise InputError("method: give a method name (method='saliency', ...) or precomputed attributions")
    if method is not None and not isinstance(method, str):
        raise InputError(f"method: expected a method name, got {type(method).__name__}")
    if target is None and attribution is not None and getattr(attribution, "target", None) is not None:
        target = attribution.target
    targets, _ = resolve_targets(be, xs, target, batch_size)
    return Setup(be, xs, targets, layout, method, dict(options), layer, batch_size, check_seed(seed), bool(progress))


def explain_fn(setup: Setup) -> Any:
    """``f(x channels-last, targets) -> attributions channels-last`` with the setup's method."""
    from polyviz.api import explain

    if setup.method is None:
        raise InputError("method: this metric recomputes explanations at new inputs; give a method name")

    def run(x: np.ndarray, targets: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        with range_already_checked():  # prepare() warned once about the caller's x
            e = explain(backend or setup.backend, x, setup.method, target=targets, layer=setup.layer,
                        batch_size=setup.batch_size, seed=setup.seed, progress=False, layout="NHWC", **setup.options)
        return np.asarray(e.attribution, np.float32)

    return run


def attributions(setup: Setup, attribution: Any) -> np.ndarray:
    """The attributions of ``setup.x`` channels-last: (N, H, W, C) or maps (N, H, W). ``attribution``
    is an :class:`~polyviz.Explanation`, an array (input-shaped in the caller's layout, or maps), or
    None to run the setup's method."""
    n, h, w, c = setup.x.shape
    if attribution is None:
        return explain_fn(setup)(setup.x, setup.targets)
    if hasattr(attribution, "attribution") and hasattr(attribution, "layout"):
        a = np.asarray(attribution.attribution, np.float32)
        layout = attribution.layout
    else:
        a = np.asarray(attribution, np.float32)
        layout = setup.layout
    given = a.shape
    if a.ndim == 4:
        a, _ = to_channels_last(a, layout)
    if a.shape not in ((n, h, w, c), (n, h, w)):
        raise InputError(
            f"attribution: expected one attribution per sample, input-shaped ({n}, {h}, {w}, {c} channels-last) "
            f"or maps ({n}, {h}, {w}), got shape {given}"
        )
    if not np.all(np.isfinite(a)):
        raise InputError("attribution: contains NaN or infinite values")
    return np.ascontiguousarray(a, np.float32)


def as_map(a: np.ndarray, absolute: bool = False) -> np.ndarray:
    """(N, H, W) from channels-last attributions: maps as they are, input-shaped ones summed over
    channels (of ``|a|`` when ``absolute``)."""
    a = np.asarray(a, np.float64)
    if absolute:
        a = np.abs(a)
    return a.sum(axis=-1) if a.ndim == 4 else a


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def chunks(n: int, size: int, desc: str, progress: bool) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` (a progress bar when asked and worth it)."""
    starts: Any = range(0, n, max(1, size))
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        yield slice(start, min(start + size, n))


def batched_forward(setup: Setup, x: np.ndarray, desc: str, default: int = 64) -> np.ndarray:
    """Model outputs (M, K) for a channels-last batch, ``batch_size`` (default ``default``) at a time."""
    size = setup.batch_size or default
    outs = [setup.backend.forward(x[s]) for s in chunks(len(x), size, desc, setup.progress)]
    return np.concatenate(outs).astype(np.float64)
