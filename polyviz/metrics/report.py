"""Every attribution method judged by every metric in several frameworks: the table of
``polyviz metrics``.

Each method explains the true class of each image once per framework; that explanation is scored
by the pointing game (against the object masks), deletion and insertion AUC, infidelity, and the
sanity check (similarity to the same method's map on the fully randomised model); max-sensitivity
recomputes the method at perturbed inputs. Expensive methods run with the cheap settings of
:data:`CHEAP_OPTIONS` (sized for the demo's 64-pixel images), every other method with its defaults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import PolyvizError

__all__ = ["CHEAP_OPTIONS", "Settings", "MetricRun", "judged_methods", "method_options", "run_report", "markdown",
           "to_json", "COLUMNS"]

#: Cheap settings per method for the table (64-pixel images; defaults are sized for 224 px and
#: exact answers): fewer path steps and noise samples, 16-pixel patches as features (16 groups),
#: fewer random masks and samples; LRP with the composite rules, as ``polyviz demo`` runs it.
#: Methods not listed run with their defaults.
CHEAP_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4},
    "gradient_shap": {"n_samples": 4},
    "occlusion": {"window": (16, 16), "stride": (8, 8)},
    "rise": {"n_masks": 100},
    "feature_ablation": {"features": "patches", "patch_size": 16},
    "feature_permutation": {"features": "patches", "patch_size": 16},
    "shapley_sampling": {"features": "patches", "patch_size": 16, "n_samples": 1},
    "kernel_shap": {"features": "patches", "patch_size": 16, "n_samples": 32},
    "lime": {"features": "patches", "patch_size": 16, "n_samples": 32},
    "lrp": {"rule": "composite", "bounds": (0.0, 1.0)},  # as in the demo (box widened: method_options)
}

#: (key, column title): lower is better for deletion, infidelity, max-sensitivity and the sanity
#: similarity; higher for the pointing game and insertion.
COLUMNS = (
    ("pointing", "pointing game ↑"),
    ("deletion", "deletion AUC ↓"),
    ("insertion", "insertion AUC ↑"),
    ("infidelity", "infidelity ↓"),
    ("max_sensitivity", "max-sensitivity ↓"),
    ("sanity", "sanity similarity ↓"),
)


@dataclass
class Settings:
    """The metric settings of a report (printed with it)."""

    step: int = 256
    score: str = "probability"
    insertion_start: str = "blur"
    infidelity_samples: int = 16
    noise_std: float = 0.003
    sensitivity_samples: int = 2
    radius: float = 0.02
    similarity: str = "spearman_abs"
    seed: int = 0
    batch_size: int | None = None

    def lines(self, images: int) -> list[str]:
        return [
            f"images: {images}, each explained for its true class; seed {self.seed}",
            "pointing game: hit when the peak of |map| lies on the object mask (no tolerance); fraction of images",
            f"deletion / insertion: softmax probability of the class as pixels are removed (to 0) / inserted (into "
            f"the image blurred by a Gaussian of sigma 5), {self.step} pixels a step, in order of the signed map "
            "(input-shaped attributions summed over channels); trapezoid AUC over the fraction of pixels",
            f"infidelity: {self.infidelity_samples} perturbations I ~ N(0, {self.noise_std}^2) per image (Captum's "
            "example), x - I, class logit, normalised (Captum's normalize=True: invariant to the attribution's "
            "scale) and relative to E[(S(x) - S(x - I))^2] (0 perfect, 1 no better than a zero map); maps count for "
            "every channel",
            f"max-sensitivity: {self.sensitivity_samples} inputs uniform in the L-inf ball of radius {self.radius}, "
            "||attr(x + d) - attr(x)|| / ||attr(x)||, max over draws",
            f"sanity check: {self.similarity} similarity to the map of the fully randomised model (every conv and "
            "dense kernel ~ N(0, std of the original kernel), biases 0, drawn by numpy from the seed, on a copy)",
        ]


@dataclass
class MetricRun:
    """One method in one framework: per-image values per metric (``errors``: why a metric could not
    be computed), seconds, or why the method was skipped."""

    method: str
    backend: str
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""


def judged_methods(names: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(methods to judge, methods left out): every registered method returning input-shaped
    attributions or maps (:func:`polyviz.compare.attribution_methods`), less those that explain a
    neuron rather than the class (family ``neuron``)."""
    from polyviz.api import methods
    from polyviz.compare import attribution_methods

    info = methods()
    chosen = list(names) if names is not None else attribution_methods()
    kept = [m for m in chosen if info[m]["family"] != "neuron"]
    return kept, [m for m in chosen if m not in kept]


def _reason(exc: Exception) -> str:
    return str(exc).split(". ")[0].rstrip(".")[:160]


def method_options(method: str, settings: Settings) -> dict[str, Any]:
    """The options the table runs ``method`` with: :data:`CHEAP_OPTIONS`, LRP's z^B box widened by
    the max-sensitivity radius (the perturbed inputs leave [0, 1])."""
    options = dict(CHEAP_OPTIONS.get(method, {}))
    if method == "lrp" and "bounds" in options:  # z^B's box must hold the inputs max-sensitivity moves
        low, high = options["bounds"]
        options["bounds"] = (low - settings.radius, high + settings.radius)
    return options


def _judge(be: Any, randomised: Any, x: np.ndarray, labels: np.ndarray, masks: np.ndarray, method: str,
           settings: Settings) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-image values of every metric, and the reason for each metric that could not be computed
    (the explanation itself failing raises)."""
    from polyviz import metrics
    from polyviz.api import explain

    options = method_options(method, settings)
    common = {"layout": "NHWC", "progress": False, "seed": settings.seed, "batch_size": settings.batch_size}
    e = explain(be, x, method, target=labels, **common, **options)
    jobs = {
        "pointing": lambda: metrics.pointing_game(None, None, masks, attribution=e).astype(float),
        "deletion": lambda: metrics.deletion_auc(be, x, labels, attribution=e, step=settings.step,
                                                 score=settings.score, **common),
        "insertion": lambda: metrics.insertion_auc(be, x, labels, attribution=e, step=settings.step,
                                                   score=settings.score, start=settings.insertion_start, **common),
        "infidelity": lambda: metrics.infidelity(be, x, labels, attribution=e,
                                                 n_perturb_samples=settings.infidelity_samples,
                                                 noise_std=settings.noise_std, normalize=True, relative=True, **common),
        "max_sensitivity": lambda: metrics.max_sensitivity(be, x, labels, method=method, attribution=e,
                                                           n_perturb_samples=settings.sensitivity_samples,
                                                           radius=settings.radius, method_options=options, **common),
        "sanity": lambda: metrics.similarity(e.attribution, explain(randomised, x, method, target=labels, **common,
                                                                     **options).attribution, settings.similarity),
    }
    values: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for key, job in jobs.items():
        try:
            values[key] = [float(v) for v in np.asarray(job(), np.float64)]
        except PolyvizError as exc:
            errors[key] = _reason(exc)
    return values, errors


def run_report(
    models: dict[str, Any], x: np.ndarray, labels: np.ndarray, masks: np.ndarray, method_names: Sequence[str],
    settings: Settings, progress: bool = True,
) -> dict[tuple[str, str], MetricRun]:
    """Judge every method in every framework (``models``: {backend name: model}); ``x`` (N, H, W,
    C) in [0, 1] channels-last, ``labels`` the classes to explain, ``masks`` (N, H, W) the objects.
    A method that does not apply to a model is skipped with its reason."""
    from polyviz.metrics.sanity import randomised_backend
    from polyviz.registry import backend_for

    runs: dict[tuple[str, str], MetricRun] = {}
    backends = {name: backend_for(model) for name, model in models.items()}
    randomised = {name: randomised_backend(be, seed=settings.seed)[0] for name, be in backends.items()}
    jobs = [(m, b) for m in method_names for b in models]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="metrics", unit="run")
    try:
        for method, name in jobs:
            if bar is not None:
                bar.set_postfix_str(f"{method} ({name})")
            run = MetricRun(method, name)
            start = time.perf_counter()
            try:
                run.values, run.errors = _judge(backends[name], randomised[name], x, labels, masks, method,
                                                settings)
            except PolyvizError as exc:
                run.skipped = _reason(exc)
            except Exception as exc:  # a broken method must not take the whole table down: say so
                run.skipped = f"failed with {type(exc).__name__}: {_reason(exc) or 'no message'}"
            run.seconds = time.perf_counter() - start
            runs[(method, name)] = run
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return runs


def _fmt(key: str, value: float) -> str:
    if key == "pointing":
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown(runs: dict[tuple[str, str], MetricRun], method_names: Sequence[str], backends: Sequence[str]) -> str:
    """A Markdown table: one row per method, each cell the mean over images per framework
    (``torch / keras``), then the seconds; skipped methods get a line with the reason."""
    head = ["method", *(title for _, title in COLUMNS), "seconds"]
    body = []
    for m in method_names:
        cells = [m]
        for key, _ in COLUMNS:
            parts = []
            for b in backends:
                run = runs[(m, b)]
                if run.skipped:
                    parts.append("skipped")
                elif key in run.errors:
                    parts.append("n/a")
                else:
                    parts.append(_fmt(key, float(np.mean(run.values[key]))))
            cells.append(" / ".join(parts))
        cells.append(" / ".join(f"{runs[(m, b)].seconds:.1f}" for b in backends))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"frameworks per cell: {' / '.join(backends)}", "", line(head),
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body]
    for m in method_names:
        for b in backends:
            if runs[(m, b)].skipped:
                out.append(f"skipped: {m} ({b}): {runs[(m, b)].skipped}")
            for key, why in runs[(m, b)].errors.items():
                out.append(f"n/a: {m} ({b}), {key}: {why}")
    return "\n".join(out)


def to_json(runs: dict[tuple[str, str], MetricRun], settings: Settings, meta: dict[str, Any]) -> str:
    """Settings, metadata and every run's per-image values as JSON."""
    return json.dumps({"settings": asdict(settings), "cheap_options": CHEAP_OPTIONS, **meta,
                       "runs": [asdict(r) for r in runs.values()]}, indent=1, default=str)
