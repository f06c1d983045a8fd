"""What each metric is: its category (Quantus' six), its direction, the paper it follows and how it
is checked. One table, read by reports, the dataset runner and the README's metrics table.

A metric module declares its metric next to the function::

    @metric("faithfulness", higher_is_better=False, reference="Petsiuk et al. 2018 (RISE)",
            checked="quantus.PixelFlipping (aligned)")
    def deletion_auc(model, x, target=None, **kwargs): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["CATEGORIES", "MetricInfo", "METRICS", "metric", "metric_info"]

CATEGORIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its public ``name``, ``category`` (one of :data:`CATEGORIES`), whether a higher
    value is better, the paper it follows, and the reference it is tested against."""

    name: str
    category: str
    higher_is_better: bool
    reference: str
    checked: str
    fn: Callable[..., Any]

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


METRICS: dict[str, MetricInfo] = {}


def metric(category: str, *, higher_is_better: bool, reference: str, checked: str,
           name: str | None = None) -> Callable[[F], F]:
    """Register the decorated function in :data:`METRICS` under ``name`` (default: its own name)."""
    if category not in CATEGORIES:
        raise ValueError(f"category: expected one of {CATEGORIES}, got {category!r}")

    def register(fn: F) -> F:
        key = name or fn.__name__
        if key in METRICS:
            raise ValueError(f"metric {key!r} is registered twice")
        METRICS[key] = MetricInfo(key, category, higher_is_better, reference, checked, fn)
        return fn

    return register


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a registered metric, or a one-line error listing the known ones."""
    from polyviz.errors import InputError

    try:
        return METRICS[name]
    except KeyError:
        raise InputError(f"metric: expected one of {sorted(METRICS)}, got {name!r}") from None
