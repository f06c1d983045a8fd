"""Metrics that judge explanations (catalog section G), numpy only, for any method and backend.

* :func:`infidelity` (Yeh et al. 2019) and :func:`max_sensitivity` (the relative variant of Yeh et
  al. 2019, divided by the map's norm), with Captum's semantics (``captum.metrics.infidelity`` /
  ``sensitivity_max``);
* :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk et al. 2018, RISE);
* :func:`pointing_game` (Zhang et al. 2016) against object masks;
* :func:`sanity_check` (Adebayo et al. 2018): cascading and independent model-parameter
  randomisation on a copy of the model, with numpy-drawn weights that are the same in every
  framework.
* localisation (:mod:`~polyviz.metrics.localisation`), complexity
  (:mod:`~polyviz.metrics.complexity`), randomisation (:mod:`~polyviz.metrics.randomisation`) and
  axiomatic (:mod:`~polyviz.metrics.axiomatic`) metrics after Quantus' categories.

Every metric is registered in :data:`METRICS` with its category, direction, paper and reference
check (``python -m polyviz.metrics.info --markdown`` prints the table).

Every metric takes the model (or a :class:`~polyviz.Backend`), a batch ``x`` in the model's native
layout (or ``layout=``), the targets (default: the predicted class), and either a method name with
its options (``method="integrated_gradients", n_steps=16``) or precomputed attributions
(``attribution=explanation``). All randomness comes from ``seed`` through numpy.
"""

from __future__ import annotations

from polyviz.metrics.axiomatic import completeness, input_invariance, non_sensitivity
from polyviz.metrics.complexity import complexity, effective_complexity, sparseness
from polyviz.metrics.deletion import (
    Curves,
    blur,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
)
from polyviz.metrics.faithfulness import (
    faithfulness_correlation,
    faithfulness_estimate,
    monotonicity,
    monotonicity_correlation,
    sensitivity_n,
)
from polyviz.metrics.infidelity import infidelity, infidelity_perturbations
from polyviz.metrics.info import CATEGORIES, METRICS, MetricInfo, metric_info
from polyviz.metrics.localisation import (
    attribution_localisation,
    auc,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from polyviz.metrics.pointing import explanation_map, pointing_game, pointing_hits, zhang_tolerance
from polyviz.metrics.randomisation import efficient_mprt, random_logit, smooth_mprt
from polyviz.metrics.regions import RegionCurves, irof, region_perturbation, selectivity
from polyviz.metrics.road import RoadCurves, noisy_linear_imputation, road, road_lerf, road_morf
from polyviz.metrics.robustness import (
    avg_sensitivity,
    gaussian_perturbations,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from polyviz.metrics.sanity import (
    SanityCheck,
    randomised_backend,
    sanity_check,
    similarity,
    spearman,
    weighted_layers,
)
from polyviz.metrics.sensitivity import max_sensitivity, sensitivity_perturbations

__all__ = [
    "efficient_mprt",
    "random_logit",
    "smooth_mprt",
    "completeness",
    "input_invariance",
    "non_sensitivity",
    "attribution_localisation",
    "auc",
    "complexity",
    "effective_complexity",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sparseness",
    "top_k_intersection",
    "zhang_tolerance",
    "CATEGORIES",
    "METRICS",
    "MetricInfo",
    "metric_info",
    "Curves",
    "SanityCheck",
    "blur",
    "deletion_auc",
    "deletion_curve",
    "explanation_map",
    "infidelity",
    "infidelity_perturbations",
    "insertion_auc",
    "insertion_curve",
    "max_sensitivity",
    "pointing_game",
    "pointing_hits",
    "randomised_backend",
    "sanity_check",
    "sensitivity_perturbations",
    "similarity",
    "spearman",
    "weighted_layers",
    # faithfulness and robustness (issue 18, metrics-a)
    "RegionCurves",
    "RoadCurves",
    "avg_sensitivity",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "gaussian_perturbations",
    "irof",
    "local_lipschitz_estimate",
    "monotonicity",
    "monotonicity_correlation",
    "noisy_linear_imputation",
    "region_perturbation",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "road",
    "road_lerf",
    "road_morf",
    "selectivity",
    "sensitivity_n",
]
