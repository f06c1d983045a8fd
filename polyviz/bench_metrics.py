"""``polyviz bench --metrics``: metric rows, each timed against Quantus on the same work.

Every metric runs on the same images, targets and saliency maps, with settings aligned so that
both sides do the same number of forward passes and explanations (:data:`SETTINGS`: polyviz's
keyword arguments; each backend that has Quantus translates them in ``peer_metric_benchmarks``).
The bench network has one input channel, where Quantus' features (C x H x W values) and polyviz's
(pixels) coincide, and where Quantus' ROAD and IROF run at all (they fail on colour images). Where
both draw nothing at random the per-image values are compared too (``max_diff``). Timing as in
:mod:`polyviz.bench`: median over ``repeat`` round-robin runs after a warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from polyviz.bench import _time_together
from polyviz.registry import backend_for

__all__ = ["MetricRow", "SETTINGS", "run_metric_bench", "metric_markdown", "bench_spec"]

#: Per metric: polyviz's keyword arguments (besides model, x, target, attribution or method).
SETTINGS: dict[str, dict[str, Any]] = {
    "faithfulness_correlation": {"n_runs": 50, "subset_size": 100, "baseline": 0.0},
    "faithfulness_estimate": {"step": 16, "baseline": 0.0},
    "monotonicity_correlation": {"step": 64, "n_samples": 10, "baseline": 0.0},
    "region_perturbation": {"patch_size": 4, "baseline": 0.0},
    "selectivity": {"patch_size": 4, "baseline": 0.0},
    "irof": {"baseline": 0.0},
    "road_morf": {"percentages": (10, 20, 30, 40, 50, 60, 70, 80, 90), "noise": 0.0},
    "avg_sensitivity": {"n_perturb_samples": 10, "radius": 0.02},
    "max_sensitivity": {"n_perturb_samples": 10, "radius": 0.02},
    "local_lipschitz_estimate": {"n_perturb_samples": 10, "std": 0.1},
    "relative_input_stability": {"n_perturb_samples": 10, "radius": 0.02, "exclude_changed": False},
    "relative_output_stability": {"n_perturb_samples": 10, "radius": 0.02, "exclude_changed": False},
    "relative_representation_stability": {"n_perturb_samples": 10, "radius": 0.02, "exclude_changed": False},
}
#: Metrics whose values are compared (no random draws on either side, or the same ones).
DETERMINISTIC = ("faithfulness_estimate", "monotonicity_correlation", "region_perturbation", "road_morf")
#: Metrics that recompute explanations (saliency) at perturbed inputs.
RECOMPUTE = ("avg_sensitivity", "max_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
             "relative_output_stability", "relative_representation_stability")


@dataclass
class MetricRow:
    backend: str
    metric: str
    median_s: float
    quantus_s: float | None
    speedup: float | None
    max_diff: float | None  # largest per-image |polyviz - Quantus| where comparable

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_spec(size: int = 32) -> Any:
    """The bench network: VGG-style blocks on one-channel ``size`` px images, 10 classes."""
    from polyviz.models.spec import vgg_spec

    return vgg_spec([[8], [16, 16], [32, 32]], input_shape=(size, size, 1), dense=(64,), classes=10)


def _segments(x: np.ndarray) -> np.ndarray:
    """SLIC superpixels of each image, as Quantus' IROF computes them (scikit-image)."""
    from skimage.segmentation import slic

    return np.stack([slic(img.astype("double"), start_label=0) for img in x])


def _polyviz_call(name: str, model: Any, x: np.ndarray, target: np.ndarray, maps: np.ndarray, layer: str,
                  batch_size: int) -> Callable[[], Any]:
    import polyviz.metrics as M

    kwargs: dict[str, Any] = dict(SETTINGS[name], layout="NHWC", progress=False, batch_size=batch_size)
    fn = M.METRICS[name].fn
    if name in RECOMPUTE:
        kwargs["method"] = "saliency"
        if name == "relative_representation_stability":
            kwargs["representation"] = layer
        return lambda: fn(model, x, target, **kwargs)
    if name == "irof":
        return lambda: fn(model, x, target, attribution=maps, segments=_segments(x), **kwargs)
    return lambda: fn(model, x, target, attribution=maps, **kwargs)


def run_metric_bench(model: Any, x: np.ndarray, metrics: tuple[str, ...] | None = None, *, repeat: int = 3,
                     batch_size: int = 256, peers: bool = True, progress: bool = True) -> list[MetricRow]:
    """Time ``metrics`` (default: every metric in :data:`SETTINGS`) on ``model`` for the
    channels-last batch ``x`` (the predicted classes, saliency maps summed over channels), each
    with Quantus on the same work where the backend offers it."""
    import polyviz
    from polyviz.api import default_layer

    backend = backend_for(model)
    target = backend.forward(x).argmax(axis=1)
    maps = polyviz.explain(model, x, "saliency", target=target, layout="NHWC", progress=False).attribution.sum(-1)
    layer = default_layer(backend)
    names = tuple(metrics or SETTINGS)
    peer_fns: dict[str, Callable[[], Any]] = {}
    if peers and hasattr(backend, "peer_metric_benchmarks"):
        peer_fns = backend.peer_metric_benchmarks(model, x, target, maps, layer, names, SETTINGS)
    iterator: Any = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc=f"metric bench {backend.name}", unit="metric")
    rows = []
    for name in iterator:
        ours = _polyviz_call(name, model, x, target, maps, layer, batch_size)
        timed = {"polyviz": ours}
        if name in peer_fns:
            timed["quantus"] = peer_fns[name]
        results = _time_together(timed, repeat)
        median = results["polyviz"][0]
        quantus_s = results["quantus"][0] if "quantus" in results else None
        diff = None
        if quantus_s is not None and name in DETERMINISTIC:
            a, b = _comparable(name, ours(), peer_fns[name]())
            diff = float(np.nanmax(np.abs(a - b)))
        rows.append(MetricRow(backend.name, name, median, quantus_s,
                              None if quantus_s is None else quantus_s / median, diff))
    return rows


def _comparable(name: str, ours: Any, theirs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-image values in the same form: curves where Quantus returns curves."""
    theirs = np.asarray(theirs, np.float64) if not isinstance(theirs, dict) else np.array(list(theirs.values()))
    if name == "region_perturbation":
        return ours, theirs.mean(axis=1) * theirs.shape[1] / (theirs.shape[1] + 1)
    if name == "road_morf":
        return np.atleast_1d(np.mean(ours)), np.atleast_1d(np.mean(theirs))
    return np.asarray(ours, np.float64), theirs


def metric_markdown(rows: list[MetricRow]) -> str:
    lines = ["| backend | metric | polyviz s | Quantus s | speed-up | max abs diff |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        q = "-" if r.quantus_s is None else f"{r.quantus_s:.3f}"
        s = "-" if r.speedup is None else f"{r.speedup:.1f}x"
        d = "-" if r.max_diff is None else f"{r.max_diff:.1e}"
        lines.append(f"| {r.backend} | {r.metric} | {r.median_s:.3f} | {q} | {s} | {d} |")
    return "\n".join(lines)
