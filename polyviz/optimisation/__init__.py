"""Images made by optimisation, written once in numpy over the backend protocol.

:func:`visualize_filter`, :func:`class_model`, :func:`deep_dream`, :func:`invert` and
:func:`adversarial` drive a numpy optimiser (:mod:`.loop`) with nothing but the backend's input
gradient of an objective; parameterisations (:mod:`.params`), transformations (:mod:`.transforms`)
and priors (:mod:`.regularisers`) are numpy with exact adjoints. Every function returns an
:class:`OptimisationResult` with channels-last RGB images in [0, 1].
"""

from __future__ import annotations

from polyviz.optimisation.adversarial import adversarial
from polyviz.optimisation.dream import deep_dream
from polyviz.optimisation.inversion import invert
from polyviz.optimisation.maximise import class_model, visualize_filter
from polyviz.optimisation.result import OptimisationResult

__all__ = ["visualize_filter", "class_model", "deep_dream", "invert", "adversarial", "OptimisationResult"]
