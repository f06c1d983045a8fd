"""What the optimisation functions return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["OptimisationResult"]


@dataclass
class OptimisationResult:
    """Images made by optimisation, and how they were made.

    ``images``: (N, H, W, C) float32 in [0, 1], channels-last RGB whatever the framework (ready to
    display; :attr:`native` gives them in the caller's layout, to feed back to the model).
    ``history``: (steps, N) the objective per step and image, as the backend computed it on the
    transformed images of that step (the layer distance for :func:`invert`, the cross-entropy for
    :func:`adversarial`). ``values``: (N,) the objective on the final, untransformed images.
    ``labels`` / ``original_labels``: predicted classes after / before (:func:`adversarial`).
    """

    images: np.ndarray
    history: np.ndarray
    values: np.ndarray
    method: str
    backend: str
    layout: str = "NHWC"
    options: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None
    original_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        """One place for the dtypes and shapes above: float32 arrays, ``history`` as (steps, N)
        from the per-step lists the optimisers collect."""
        self.images = np.asarray(self.images, np.float32)
        self.history = np.asarray(self.history, np.float32).reshape(len(self.history), len(self.images))
        self.values = np.asarray(self.values, np.float32)

    @property
    def native(self) -> np.ndarray:
        """The images in the caller's layout: (N, C, H, W) for NCHW (torch), else (N, H, W, C)."""
        if self.layout == "NCHW":
            return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2))
        return self.images

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        steps = len(self.history)
        return (f"OptimisationResult(method={self.method!r}, backend={self.backend!r}, images={self.images.shape}, "
                f"steps={steps}, values={np.round(self.values, 4).tolist()[:8]})")
