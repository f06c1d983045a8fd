"""Every attribution method judged by every metric in several frameworks: the table of
``polyviz metrics``.

Each method explains the true class of each image once per framework; that explanation is scored
by every metric registered in :data:`polyviz.metrics.METRICS` (or those chosen), each called with
the arguments its signature names (:func:`call_metric`): localisation metrics get the object masks,
metrics that recompute the method (robustness, randomisation, input invariance) get the method and
its options. Expensive methods run with the cheap settings of :data:`CHEAP_OPTIONS` (sized for the
demo's 64-pixel images), expensive metrics with :func:`metric_options`, everything else with its
defaults. Reports give the mean and the standard deviation over images (:func:`markdown`), every
per-image value (:func:`to_json`), and a picture by category, one panel each (:func:`figure` for a
notebook, :func:`write_report_gallery` for the HTML gallery); direction and category come from
:data:`~polyviz.metrics.METRICS`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import PolyvizError

__all__ = ["CHEAP_OPTIONS", "Settings", "MetricRun", "judged_methods", "method_options", "metric_options",
           "chosen_metrics", "call_metric", "run_report", "spread", "markdown", "to_json", "figure", "category_pictures",
           "write_report_gallery"]

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

@dataclass
class Settings:
    """The metric settings of a report (printed with it). ``metrics``: the registered metrics to run
    (default: every one in :data:`polyviz.metrics.METRICS` that applies); ``options``: extra options
    per metric (``{"top_k_intersection": {"k": 500}}``), over :func:`metric_options`'s."""

    step: int = 256
    score: str = "probability"
    insertion_start: str = "blur"
    infidelity_samples: int = 16
    noise_std: float = 0.003
    sensitivity_samples: int = 2
    radius: float = 0.02
    similarity: str = "spearman_abs"
    pointing_tolerance: float = 0.0
    smooth_samples: int = 4
    patch_size: int = 8
    seed: int = 0
    batch_size: int | None = None
    metrics: tuple[str, ...] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self, images: int, size: int = 64) -> list[str]:
        from polyviz.metrics.pointing import zhang_tolerance

        out = [
            f"images: {images}, each explained for its true class; seed {self.seed}; every value is the mean ± standard "
            "deviation over images (NaN-free images only)",
            f"pointing game: hit when the peak of |map| lies within {self.pointing_tolerance:g} px of the object mask "
            f"(Zhang et al. use 15 px at 224 px, {zhang_tolerance(size):.1f} px at {size} px); fraction of images",
            f"deletion / insertion: softmax probability of the class as pixels are removed (to 0) / inserted (into "
            f"the image blurred by a Gaussian of sigma 5), {self.step} pixels a step, in order of the signed map "
            "(input-shaped attributions summed over channels); trapezoid AUC over the fraction of pixels",
            f"infidelity: {self.infidelity_samples} perturbations I ~ N(0, {self.noise_std}^2) per image (Captum's "
            "example), x - I, class logit, normalised (Captum's normalize=True: invariant to the attribution's "
            "scale) and relative to E[(S(x) - S(x - I))^2] (0 perfect, 1 no better than a zero map); maps count for "
            "every channel",
            f"max-sensitivity (the relative variant of Captum and Quantus): {self.sensitivity_samples} inputs uniform "
            f"in the L-inf ball of radius {self.radius}, ||attr(x + d) - attr(x)|| / ||attr(x)||, max over draws",
            f"sanity check: {self.similarity} similarity to the map of the fully randomised model (every conv and "
            "dense kernel ~ N(0, std of the original kernel), biases 0, drawn by numpy from the seed, on a copy)",
        ]
        shown = ("pointing_game", "deletion_auc", "insertion_auc", "infidelity", "max_sensitivity", "sanity_check")
        rest = [f"{name}: {', '.join(f'{k}={v}' for k, v in metric_options(name, self, (size, size)).items())}"
                for name in chosen_metrics(self) if name not in shown and metric_options(name, self, (size, size))]
        if rest:
            out.append("other metrics at their defaults, except " + "; ".join(rest))
        return out


def chosen_metrics(settings: Settings) -> list[str]:
    """The metrics a report runs, in :data:`CATEGORIES` order then registration order: those named
    in ``settings.metrics`` (checked), else every registered one."""
    from polyviz.errors import InputError
    from polyviz.metrics.info import CATEGORIES, METRICS

    names = list(METRICS) if settings.metrics is None else list(settings.metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InputError(f"metrics: expected names from {sorted(METRICS)}, got {unknown}")
    return sorted(names, key=lambda n: (CATEGORIES.index(METRICS[n].category), list(METRICS).index(n)))


def metric_options(name: str, settings: Settings, size: tuple[int, int] = (64, 64)) -> dict[str, Any]:
    """The options the report runs metric ``name`` with: the settings' cheap choices for the
    metrics that have them, else none (the metric's defaults), then ``settings.options[name]``."""
    cheap: dict[str, dict[str, Any]] = {
        "pointing_game": {"tolerance": settings.pointing_tolerance},
        "deletion_auc": {"step": settings.step, "score": settings.score},
        "insertion_auc": {"step": settings.step, "score": settings.score, "start": settings.insertion_start},
        "infidelity": {"n_perturb_samples": settings.infidelity_samples, "noise_std": settings.noise_std,
                       "normalize": True, "relative": True},
        "max_sensitivity": {"n_perturb_samples": settings.sensitivity_samples, "radius": settings.radius},
        "sanity_check": {"mode": "cascading", "similarity_kind": settings.similarity},
        "top_k_intersection": {"k": min(1000, size[0] * size[1] // 4)},
        "faithfulness_correlation": {"subset_size": max(1, min(224, size[0] * size[1] // 4))},
        "non_sensitivity": {"patch_size": settings.patch_size},
        "smooth_mprt": {"n_samples": settings.smooth_samples, "similarity_kind": settings.similarity},
    }
    return {**cheap.get(name, {}), **settings.options.get(name, {})}


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


def call_metric(name: str, be: Any, x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None, method: str,
                explanation: Any, options: dict[str, Any], settings: Settings) -> np.ndarray:
    """Per-image values (N,) float64 of registered metric ``name`` for ``method``'s ``explanation``:
    the metric is called with the arguments its signature names (``masks`` for localisation metrics,
    the precomputed ``attribution``, the method and its options for metrics that recompute it) and
    :func:`metric_options`; a result with a cascade (:func:`~polyviz.metrics.sanity_check`) gives
    its last row, the fully randomised model."""
    import inspect

    from polyviz.errors import InputError
    from polyviz.metrics.info import METRICS

    fn = METRICS[name].fn
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"layout": "NHWC", "progress": False, "seed": settings.seed,
                              "batch_size": settings.batch_size, "method": method, "attribution": explanation,
                              "method_options": options, **metric_options(name, settings, x.shape[1:3])}
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    passed_through = ("layout", "progress", "seed", "batch_size", "method_options")  # a metric's **kwargs takes these
    kwargs = {k: v for k, v in kwargs.items() if k in params or (open_kwargs and k in passed_through)}
    if name == "sanity_check" and "steps" not in kwargs:  # only the fully randomised model: one step
        from polyviz.metrics.sanity import weighted_layers

        kwargs["steps"] = [len(weighted_layers(be))]
    args: list[Any] = [be, x]
    if "masks" in params:
        if masks is None:
            raise InputError("masks: this metric needs object masks")
        args.append(masks)
    result = fn(*args, labels, **kwargs)
    if hasattr(result, "cascading") and result.cascading is not None:
        result = result.cascading[-1]
    values = np.asarray(result, np.float64).reshape(-1)
    if values.shape != (len(x),):
        raise InputError(f"{name}: expected one value per image, got shape {np.shape(result)}")
    return values


def _judge(be: Any, x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None, method: str,
           settings: Settings) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-image values of every chosen metric, and the reason for each metric that could not be
    computed (the explanation itself failing raises)."""
    from polyviz.api import explain

    options = method_options(method, settings)
    e = explain(be, x, method, target=labels, layout="NHWC", progress=False, seed=settings.seed,
                batch_size=settings.batch_size, **options)
    values: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for name in chosen_metrics(settings):
        try:
            values[name] = [float(v) for v in call_metric(name, be, x, labels, masks, method, e, options, settings)]
        except PolyvizError as exc:
            errors[name] = _reason(exc)
        except Exception as exc:  # a broken metric must not take the whole table down: say so
            errors[name] = f"failed with {type(exc).__name__}: {_reason(exc) or 'no message'}"
    return values, errors


def run_report(
    models: dict[str, Any], x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None, method_names: Sequence[str],
    settings: Settings, progress: bool = True,
) -> dict[tuple[str, str], MetricRun]:
    """Judge every method in every framework (``models``: {backend name: model}) by every chosen
    metric (:func:`chosen_metrics`); ``x`` (N, H, W, C) in [0, 1] channels-last, ``labels`` the
    classes to explain, ``masks`` (N, H, W) the objects (None: localisation metrics are n/a). A
    method that does not apply to a model is skipped with its reason."""
    from polyviz.registry import backend_for

    chosen_metrics(settings)  # unknown names fail before any work
    runs: dict[tuple[str, str], MetricRun] = {}
    backends = {name: backend_for(model) for name, model in models.items()}
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
                run.values, run.errors = _judge(backends[name], x, labels, masks, method, settings)
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


def spread(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard deviation, count) over the images with a value (NaN: no value, e.g. an empty
    mask); (NaN, NaN, 0) when none has."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(len(v))


def _number(value: float) -> str:
    """Three significant digits (``0.202``, ``395``, ``1.23e+04``, ``4.76e-08``)."""
    return f"{value:.3g}" if np.isfinite(value) else "nan"


def cell(run: MetricRun, name: str) -> str:
    """One table cell: ``mean ± sd`` over images, ``skipped`` or ``n/a``."""
    if run.skipped:
        return "skipped"
    if name in run.errors or name not in run.values:
        return "n/a"
    mean, sd, count = spread(run.values[name])
    if count == 0:
        return "nan"
    text = f"{_number(mean)} ± {_number(sd)}"
    return text if count == len(run.values[name]) else f"{text} ({count} img)"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body]


def _names(runs: dict[tuple[str, str], MetricRun]) -> list[str]:
    """The metrics present in ``runs``, in :data:`CATEGORIES` order then registration order."""
    from polyviz.metrics.info import CATEGORIES, METRICS

    seen: list[str] = []
    for run in runs.values():
        for name in [*run.values, *run.errors]:
            if name not in seen:
                seen.append(name)
    order = list(METRICS)
    return sorted(seen, key=lambda n: (CATEGORIES.index(METRICS[n].category) if n in METRICS else len(CATEGORIES),
                                       order.index(n) if n in order else len(order)))


def markdown(runs: dict[tuple[str, str], MetricRun], method_names: Sequence[str], backends: Sequence[str]) -> str:
    """Markdown tables, one per category (its direction and category from
    :data:`~polyviz.metrics.METRICS`): one row per method, one column per metric, each cell the
    mean ± standard deviation over images per framework (``torch / keras``); then the seconds per
    method; skipped methods and metrics that could not be computed get a line with the reason."""
    from polyviz.metrics.info import METRICS

    names = _names(runs)
    out = [f"frameworks per cell: {' / '.join(backends)}; mean ± standard deviation over images; "
           "↑ higher is better, ↓ lower is better"]
    categories: dict[str, list[str]] = {}
    for n in names:
        categories.setdefault(METRICS[n].category if n in METRICS else "other", []).append(n)
    for category, members in categories.items():
        head = ["method", *(f"{n} {'↑' if n in METRICS and METRICS[n].higher_is_better else '↓'}" for n in members)]
        body = [[m, *(" / ".join(cell(runs[(m, b)], n) for b in backends) for n in members)] for m in method_names]
        out += ["", f"{category}:", "", *_table(head, body)]
    body = [[m, " / ".join(f"{runs[(m, b)].seconds:.1f}" for b in backends)] for m in method_names]
    out += ["", "time:", "", *_table(["method", "seconds"], body)]
    for m in method_names:
        for b in backends:
            if runs[(m, b)].skipped:
                out.append(f"skipped: {m} ({b}): {runs[(m, b)].skipped}")
            for key, why in runs[(m, b)].errors.items():
                out.append(f"n/a: {m} ({b}), {key}: {why}")
    return "\n".join(out)


def to_json(runs: dict[tuple[str, str], MetricRun], settings: Settings, meta: dict[str, Any]) -> str:
    """Settings, metadata, each metric's category and direction, and every run's per-image values
    (and their mean, standard deviation and count) as JSON."""
    from polyviz.metrics.info import METRICS

    names = _names(runs)
    info = {n: {"category": METRICS[n].category, "higher_is_better": METRICS[n].higher_is_better,
                "reference": METRICS[n].reference} for n in names if n in METRICS}
    out = []
    for r in runs.values():
        row = asdict(r)
        row["summary"] = {k: dict(zip(("mean", "std", "count"), spread(v))) for k, v in r.values.items()}
        out.append(row)
    return json.dumps({"settings": asdict(settings), "cheap_options": CHEAP_OPTIONS, **meta, "metrics": info,
                       "runs": out}, indent=1, default=str)


def _scores(runs: dict[tuple[str, str], MetricRun], rows: list[tuple[str, str]], members: list[str]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, sds, goodness) (rows x metrics): goodness is each metric's means scaled to [0, 1]
    across rows, 1 the best by the metric's direction (NaN where no value)."""
    from polyviz.metrics.info import METRICS

    means = np.full((len(rows), len(members)), np.nan)
    sds = np.full_like(means, np.nan)
    for i, key in enumerate(rows):
        run = runs[key]
        for j, n in enumerate(members):
            if not run.skipped and n in run.values:
                means[i, j], sds[i, j], _ = spread(run.values[n])
    good = np.full_like(means, np.nan)
    for j, n in enumerate(members):
        col = means[:, j]
        ok = np.isfinite(col)
        if ok.any():
            low, high = col[ok].min(), col[ok].max()
            scaled = (col - low) / (high - low) if high > low else np.where(ok, 1.0, np.nan)
            good[:, j] = scaled if (n not in METRICS or METRICS[n].higher_is_better) else 1.0 - scaled
    return means, sds, good


def category_axes(ax: Any, runs: dict[tuple[str, str], MetricRun], rows: list[tuple[str, str]], category: str,
                  members: list[str]) -> None:
    """Draw one category's panel on a matplotlib Axes: rows (method, framework) x its metrics, each
    cell coloured by how good it is among the rows (green best, by the metric's direction), with
    its mean ± sd written in."""
    from polyviz.metrics.info import METRICS

    means, sds, good = _scores(runs, rows, members)
    # a pastel range of the map (vmin/vmax beyond [0, 1]) keeps the black text readable
    ax.imshow(np.ma.masked_invalid(good), cmap="RdYlGn", vmin=-0.6, vmax=1.6, aspect="auto")
    ax.set_facecolor("#dddddd")
    for i in range(len(rows)):
        for j in range(len(members)):
            text = "n/a" if not np.isfinite(means[i, j]) else f"{_number(means[i, j])}\n± {_number(sds[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(members)))
    ax.set_xticklabels([f"{n} {'↑' if n in METRICS and METRICS[n].higher_is_better else '↓'}" for n in members],
                       rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{m} ({b})" for m, b in rows], fontsize=8)
    ax.set_title(category, fontsize=10)


def _grouped(runs: dict[tuple[str, str], MetricRun]) -> dict[str, list[str]]:
    from polyviz.metrics.info import METRICS

    groups: dict[str, list[str]] = {}
    for n in _names(runs):
        groups.setdefault(METRICS[n].category if n in METRICS else "other", []).append(n)
    return groups


def figure(runs: dict[tuple[str, str], MetricRun]) -> Any:
    """A matplotlib Figure comparing methods at a glance, one panel per category (shown inline in a
    notebook; ``fig.savefig(path)`` to keep it). Colours rank the methods within each metric by its
    direction (green best); the text is the mean ± sd over images."""
    from matplotlib.figure import Figure

    rows = list(runs)
    groups = _grouped(runs)
    cols = 1 if len(groups) < 2 else 2
    lines = -(-max(1, len(groups)) // cols)
    width = max(2.0, 1.3 * max((len(m) for m in groups.values()), default=1)) + 2.4
    height = max(2.5, 0.4 * len(rows) + 1.8)
    fig = Figure(figsize=(cols * width, lines * height), layout="constrained")
    axes = fig.subplots(lines, cols, squeeze=False).ravel()
    for ax, (category, members) in zip(axes, groups.items()):
        category_axes(ax, runs, rows, category, members)
    for ax in axes[len(groups):]:
        ax.remove()
    return fig


def category_pictures(runs: dict[tuple[str, str], MetricRun], dpi: int = 110) -> dict[str, np.ndarray]:
    """One RGB uint8 picture per category (its panel alone), for the HTML gallery."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(runs)
    out = {}
    for category, members in _grouped(runs).items():
        fig = Figure(figsize=(max(2.0, 1.3 * len(members)) + 2.4, max(2.5, 0.4 * len(rows) + 1.8)),
                     layout="constrained", dpi=dpi)
        category_axes(fig.add_subplot(), runs, rows, category, members)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        out[category] = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return out


def write_report_gallery(out_dir: Any, runs: dict[tuple[str, str], MetricRun], method_names: Sequence[str],
                         backends: Sequence[str], notes: str = "") -> Any:
    """``out_dir/index.html``: one picture per category (:func:`category_pictures`) and the table of
    :func:`markdown` (as preformatted text); returns the page's path."""
    import html

    from polyviz.render.gallery import write_gallery

    pictures = category_pictures(runs)
    table = "<pre>" + html.escape(markdown(runs, method_names, backends)) + "</pre>"
    return write_gallery(out_dir, title="polyviz metrics", columns=list(pictures),
                         rows=[("methods compared", list(pictures.values()))], table_html=table, notes=notes,
                         image_width=max(p.shape[1] for p in pictures.values()) if pictures else None)
