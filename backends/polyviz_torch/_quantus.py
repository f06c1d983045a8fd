"""Quantus 0.6.0 on the same work as polyviz's metrics, for ``polyviz bench --metrics``.

Each entry is a zero-argument callable running one Quantus metric on the torch model with the
settings of :data:`polyviz.bench_metrics.SETTINGS` translated to Quantus' arguments: the same
images, targets and saliency maps (``a_batch``), the same number of runs, steps, regions and
perturbed samples, and polyviz's saliency as ``explain_func`` where a metric recomputes
explanations, so that both sides pay for the same explanations. Quantus is LGPL: it is called,
nothing is copied. Empty when Quantus is not installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["quantus_metric_benchmarks"]


@contextlib.contextmanager
def _numpy_trapz() -> Iterator[None]:
    """Quantus 0.6.0 calls ``np.trapz``, which numpy 2 removed: lend it ``np.trapezoid`` meanwhile."""
    had = hasattr(np, "trapz")
    if not had:
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not had:
            del np.trapz


def _explain(model: Any, inputs: np.ndarray, targets: Any, **kwargs: Any) -> np.ndarray:
    import polyviz

    return polyviz.explain(model, np.asarray(inputs, np.float32), "saliency", target=np.asarray(targets),
                           layout="NCHW", progress=False).attribution


def quantus_metric_benchmarks(model: Any, x: np.ndarray, target: np.ndarray, maps: np.ndarray, layer: str,
                              names: tuple[str, ...], settings: dict[str, dict[str, Any]]) -> dict[str, Callable[[], Any]]:
    from polyviz_torch._compat import guard_triton

    guard_triton()  # TensorFlow may be loaded already: then triton must not be (see _compat)
    import torch._dynamo  # noqa: F401  (before quantus, which imports TensorFlow)

    try:
        import quantus
    except ImportError:
        return {}
    xc = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    a = np.asarray(maps, np.float32)[:, None]
    h = x.shape[1]
    common = {"normalise": False, "abs": False, "disable_warnings": True, "display_progressbar": False,
              "return_aggregate": False}
    robust = {**common, "return_nan_when_prediction_changes": False}

    def s(name: str, key: str) -> Any:
        return settings[name][key]

    build: dict[str, Callable[[], Any]] = {
        "faithfulness_correlation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=s("faithfulness_correlation", "n_runs"), subset_size=s("faithfulness_correlation", "subset_size"),
            perturb_baseline=0.0, **common),
        "faithfulness_estimate": lambda: quantus.FaithfulnessEstimate(
            features_in_step=s("faithfulness_estimate", "step"), perturb_baseline=0.0, **common),
        "monotonicity_correlation": lambda: quantus.MonotonicityCorrelation(
            features_in_step=s("monotonicity_correlation", "step"), nr_samples=s("monotonicity_correlation", "n_samples"),
            perturb_baseline=0.0, **{**common, "abs": True}),
        "region_perturbation": lambda: quantus.RegionPerturbation(
            patch_size=s("region_perturbation", "patch_size"), order="morf",
            regions_evaluation=(-(-h // s("region_perturbation", "patch_size"))) ** 2, perturb_baseline=0.0, **common),
        "selectivity": lambda: quantus.Selectivity(patch_size=s("selectivity", "patch_size"), perturb_baseline=0.0,
                                                   **common),
        "irof": lambda: quantus.IROF(perturb_baseline=0.0, **common),
        "road_morf": lambda: quantus.ROAD(percentages=list(s("road_morf", "percentages")), noise=s("road_morf", "noise"),
                                          **common),
        "avg_sensitivity": lambda: quantus.AvgSensitivity(
            nr_samples=s("avg_sensitivity", "n_perturb_samples"), lower_bound=s("avg_sensitivity", "radius"), **robust),
        "max_sensitivity": lambda: quantus.MaxSensitivity(
            nr_samples=s("max_sensitivity", "n_perturb_samples"), lower_bound=s("max_sensitivity", "radius"), **robust),
        "local_lipschitz_estimate": lambda: quantus.LocalLipschitzEstimate(
            nr_samples=s("local_lipschitz_estimate", "n_perturb_samples"),
            perturb_std=s("local_lipschitz_estimate", "std"), **robust),
        "relative_input_stability": lambda: quantus.RelativeInputStability(
            nr_samples=s("relative_input_stability", "n_perturb_samples"), **robust),
        "relative_output_stability": lambda: quantus.RelativeOutputStability(
            nr_samples=s("relative_output_stability", "n_perturb_samples"), **robust),
        "relative_representation_stability": lambda: quantus.RelativeRepresentationStability(
            nr_samples=s("relative_representation_stability", "n_perturb_samples"), layer_names=[layer], **robust),
    }
    recompute = {"avg_sensitivity", "max_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
                 "relative_output_stability", "relative_representation_stability"}
    out: dict[str, Callable[[], Any]] = {}
    for name in names:
        if name not in build:
            continue
        metric = build[name]()
        explained = name in recompute

        def run(metric: Any = metric, explained: bool = explained) -> Any:
            with _numpy_trapz():
                return metric(model=model, x_batch=xc, y_batch=np.asarray(target), a_batch=None if explained else a,
                              channel_first=True, explain_func=_explain, explain_func_kwargs={},
                              softmax=not explained, device="cpu")

        out[name] = run
    return out
