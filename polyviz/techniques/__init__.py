"""Techniques, written once in numpy over the backend protocol, registered under public names.

A technique is a function ``fn(ctx: Context, **options) -> Result``. It asks the backend
(``ctx.backend``) for what its definition needs, in batches of ``ctx.batch_size``, draws any noise,
baselines or masks from ``ctx.rng()`` (numpy, seeded), and returns raw values.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyviz.protocol import Backend

__all__ = ["Context", "Result", "MethodInfo", "METHODS", "method", "load_all"]


@dataclass
class Context:
    """What a technique works on: a backend, a validated channels-last batch and its targets."""

    backend: Backend
    x: np.ndarray  # (N, H, W, C) float32
    targets: np.ndarray  # (N,) int64 class per sample
    layer: str | None
    batch_size: int | None
    seed: int
    progress: bool

    def rng(self, offset: int = 0) -> np.random.Generator:
        """The numpy generator every random draw comes from (same draws in every framework)."""
        return np.random.default_rng(self.seed + offset)

    def chunks(self, n: int, default: int, desc: str) -> Iterator[slice]:
        """Slices of ``range(n)`` of at most ``batch_size`` (or ``default``), with a progress bar."""
        size = max(1, int(self.batch_size or default))
        starts = range(0, n, size)
        if self.progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch", leave=False)
        for start in starts:
            yield slice(start, min(start + size, n))


@dataclass
class Result:
    """What a technique returns: raw, signed, float32.

    ``attribution``: input-shaped channels-last (N, H, W, C) for input-space methods (kind
    "input"), (N, H, W) maps at input resolution (kind "map"), or shaped like a layer's output,
    channels-last (N, h, w, C) or (N, units), for layer methods (kind "layer"); ``layer_attribution``: (N, h, w) at the layer's resolution;
    ``scores``: the target scores where the technique computed them; ``metadata``: extra numbers
    (convergence delta, weights, ...).
    """

    attribution: np.ndarray
    layer_attribution: np.ndarray | None = None
    scores: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """A registered technique: name, one-line description, what it needs, and its function."""

    name: str
    fn: Callable[..., Result]
    description: str
    kind: str  # "input" (input-shaped), "map" (one (H, W) map per sample) or "layer" (layer-shaped)
    needs_layer: bool = False
    needs_baseline: bool = False
    capabilities: tuple[str, ...] = ()
    family: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """The technique's own options and their defaults."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


METHODS: dict[str, MethodInfo] = {}


def method(
    name: str,
    description: str,
    *,
    kind: str,
    needs_layer: bool = False,
    needs_baseline: bool = False,
    capabilities: tuple[str, ...] = (),
    family: str = "",
) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Register a technique under its public name."""

    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        METHODS[name] = MethodInfo(name, fn, description, kind, needs_layer, needs_baseline, tuple(capabilities), family)
        return fn

    return register


def load_all() -> dict[str, MethodInfo]:
    """Import every technique module (each registers its methods) and return the registry."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return METHODS
