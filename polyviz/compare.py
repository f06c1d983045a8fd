"""Every method on the same images in several frameworks: the explanations, how far the frameworks
agree, how often each map points at the object, and the gallery page that shows them side by side.

Used by ``polyviz demo``, ``polyviz gallery`` and ``polyviz crosscheck``. Agreement is the relative
L2 distance of the raw ``.attribution`` arrays, ``||a - b|| / max(||a||, ||b||)``. :func:`crosscheck`
judges it against each method's float32 noise floor (see :data:`AGREES`, :data:`NOISE_MULTIPLE`). The pointing
game is :func:`polyviz.metrics.pointing_game`'s (Zhang et al. 2016, arXiv:1608.00507), with no
tolerance margin: a hit when the peak of the map's magnitude lies on the ground-truth object mask,
the layer-resolution map for CAMs, ``|attribution|`` summed over channels for input-shaped ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyviz.api import explain
from polyviz.api import methods as all_methods
from polyviz.errors import InputError, PolyvizError, did_you_mean

__all__ = ["Run", "attribution_methods", "parse_methods", "run_methods", "relative_l2", "pointing_hits",
           "summary_rows", "text_table", "html_table", "gallery_rows", "FAST_OPTIONS",
           "AGREES", "NOISE_MULTIPLE", "verdict", "float64_copy", "crosscheck", "crosscheck_rows", "crosscheck_table"]

#: The demo's options (64x64 images): occlusion's default 15-pixel window in 8-pixel steps is
#: sized for 224-pixel images; a 12-pixel window in 6-pixel steps gives a 10x10 grid here. The
#: sampling methods get 8-pixel patches (64 groups) and fewer draws, RISE fewer masks on a 4x4
#: grid (the objects fill a quarter of the image), LRP the composite of Montavon et al. 2019.
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": (12, 12), "stride": (6, 6)},
    "feature_ablation": {"features": "patches", "patch_size": 8},
    "feature_permutation": {"features": "patches", "patch_size": 8},
    "shapley_sampling": {"features": "patches", "patch_size": 8, "n_samples": 5},
    "lime": {"features": "patches", "patch_size": 8, "n_samples": 150},
    "kernel_shap": {"features": "patches", "patch_size": 8, "n_samples": 150},
    "rise": {"n_masks": 500, "grid": 4},
    "lrp": {"rule": "composite", "bounds": (0.0, 1.0)},
}
#: Per-image relative L2 under which two frameworks' attributions count as the same.
SAME = 1e-4


#: Gallery order of the method families: class activation maps, gradients, perturbation, the rest.
FAMILY_ORDER = {"cam": 0, "gradient": 1, "lrp": 2, "perturbation": 3}


def attribution_methods() -> list[str]:
    """The registered methods that explain a class score on the input (input-shaped or maps): CAMs
    first, then gradient methods, LRP, perturbation methods, by name within a family. Layer and
    neuron methods (which explain a layer, or need a neuron= choice) are not among them."""
    found = [(FAMILY_ORDER.get(info["family"], 9), _PREFERRED.get(name, 99), name) for name, info in all_methods().items()
             if info["kind"] in ("input", "map") and info["family"] != "neuron"]
    return [name for *_, name in sorted(found)]


#: Within a family: the original method first, then its refinements (roughly by date).
_PREFERRED = {name: i for i, name in enumerate((
    "cam", "gradcam", "guided_gradcam", "gradcam_plus_plus", "scorecam", "xgradcam", "ablationcam", "eigencam",
    "layercam", "hirescam",
    "saliency", "deconvnet", "guided_backprop", "layer_guided_backprop", "input_x_gradient", "integrated_gradients",
    "smoothgrad", "gradient_shap", "deeplift", "deeplift_shap",
    "lrp",
    "occlusion", "feature_ablation", "feature_permutation", "shapley_sampling", "lime", "kernel_shap", "rise",
))}


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """'all' / None -> every attribution method; else comma-separated names (did-you-mean on typos)."""
    known = attribution_methods()
    if text is None or text == "all" or text == ["all"]:
        return known
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise InputError("methods: expected comma-separated method names (see `polyviz methods`)")
    for m in names:
        if m not in known:
            raise InputError(f"methods: unknown method {m!r}.{did_you_mean(m, known)} See `polyviz methods`.")
    return list(dict.fromkeys(names))


@dataclass
class Run:
    """One method in one framework: its explanation (None if skipped), why it was skipped, seconds.
    ``failed``: it raised an unexpected exception (not a :class:`PolyvizError` saying that the
    method does not apply); ``skipped`` then holds the exception's type and first line."""

    method: str
    backend: str
    explanation: Any = None
    skipped: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    failed: bool = False


def _reason(exc: Exception) -> str:
    text = str(exc).split(". ")[0].rstrip(".")
    return text[:160]


def _failure(exc: BaseException) -> str:
    """An unexpected exception in one line: its type and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:160] if first else type(exc).__name__


def run_methods(
    models: dict[str, Any],
    x: np.ndarray,
    method_names: Sequence[str],
    *,
    target: Any = None,
    layers: dict[str, str | None] | None = None,
    preprocess: dict[str, Any] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[tuple[str, str], Run]:
    """Run every method on ``x`` (N, H, W, C in [0, 1]) in every ``models[backend]``; a method that
    does not apply to a model (a missing capability, no GAP head for CAM...) is skipped with its
    reason. Targets default to the first framework's prediction, so every framework explains the
    same class. A method that raises anything else is recorded as failed (``Run.failed``, its
    one-line reason in ``skipped``) and the others still run. Returns {(method, backend): Run}."""
    layers = layers or {}
    preprocess = preprocess or {}
    options = options or {}
    runs: dict[tuple[str, str], Run] = {}
    jobs = [(m, b) for m in method_names for b in models]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="methods", unit="run")
    try:
        for method, backend in jobs:
            if bar is not None:
                bar.set_postfix_str(f"{method} ({backend})")
            run = Run(method, backend)
            start = time.perf_counter()
            try:
                run.explanation = explain(
                    models[backend], x, method, target=target, layer=layers.get(backend),
                    preprocess=preprocess.get(backend), batch_size=batch_size, seed=seed, progress=False,
                    layout="NHWC", **options.get(method, {}),
                )
            except PolyvizError as exc:
                run.skipped = _reason(exc)
            except Exception as exc:  # noqa: BLE001 - one failing method must not lose the others
                run.skipped, run.failed = _failure(exc), True
            run.seconds = time.perf_counter() - start
            if target is None and run.explanation is not None:
                target = run.explanation.target  # the others explain the same class
            runs[(method, backend)] = run
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return runs


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / max(||a||, ||b||)`` in float64 (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def magnitude_maps(explanation: Any) -> np.ndarray:
    """(N, h, w) magnitude maps the pointing game looks at (see :func:`polyviz.metrics.explanation_map`)."""
    from polyviz.metrics.pointing import explanation_map

    return explanation_map(explanation)


def pointing_hits(explanation: Any, masks: np.ndarray) -> np.ndarray:
    """(N,) bool: the peak of each sample's magnitude map lies on its mask
    (:func:`polyviz.metrics.pointing_hits`, no tolerance)."""
    from polyviz.metrics.pointing import pointing_hits as hits

    return hits(magnitude_maps(explanation), masks)


def summary_rows(
    runs: dict[tuple[str, str], Run], method_names: Sequence[str], backends: Sequence[str],
    masks: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per method: agreement between the first two frameworks, pointing hits per framework, seconds."""
    rows = []
    for m in method_names:
        row: dict[str, Any] = {"method": m, "agreement": None, "skipped": {}, "failed": set(), "pointing": {},
                               "seconds": {}}
        done = {b: runs[(m, b)] for b in backends if runs[(m, b)].explanation is not None}
        for b in backends:
            run = runs[(m, b)]
            row["seconds"][b] = run.seconds
            if run.explanation is None:
                row["skipped"][b] = run.skipped
                if run.failed:
                    row["failed"].add(b)
            elif masks is not None:
                row["pointing"][b] = pointing_hits(run.explanation, masks)
        if len(backends) >= 2 and backends[0] in done and backends[1] in done:
            a, b = done[backends[0]].explanation.attribution, done[backends[1]].explanation.attribution
            row["agreement"] = relative_l2(a, b)
            row["per_image"] = np.array([relative_l2(a[i], b[i]) for i in range(len(a))])
        rows.append(row)
    return rows


def _cells(row: dict[str, Any], backends: Sequence[str], n: int | None) -> list[str]:
    cells = [row["method"]]
    if len(backends) >= 2:
        cells.append("-" if row["agreement"] is None else f"{row['agreement']:.1e}")
        same = row.get("per_image")
        cells.append("-" if same is None else f"{int((same < SAME).sum())}/{len(same)}")
    if n is not None:
        for b in backends:
            hits = row["pointing"].get(b)
            cells.append("-" if hits is None else f"{int(hits.sum())}/{n} ({hits.mean():.0%})")
    for b in backends:
        cells.append(("failed" if b in row.get("failed", ()) else "skipped") if b in row["skipped"]
                     else f"{row['seconds'][b]:.2f}")
    return cells


def _header(backends: Sequence[str], n: int | None) -> list[str]:
    head = ["method"]
    if len(backends) >= 2:
        head += [f"{backends[0]} vs {backends[1]} (rel. L2)", f"images < {SAME:g}"]
    if n is not None:
        head += [f"pointing {b}" for b in backends]
    head += [f"time {b} (s)" for b in backends]
    return head


def text_table(rows: list[dict[str, Any]], backends: Sequence[str], n: int | None = None) -> str:
    """A Markdown table of :func:`summary_rows` (``n``: images in the pointing game, None: no
    pointing columns), with a line per skipped method giving the reason."""
    return _markdown(_header(backends, n), [_cells(r, backends, n) for r in rows], rows)


def _markdown(head: list[str], body: list[list[str]], rows: list[dict[str, Any]]) -> str:
    """A Markdown table with padded columns, then a line per method a backend skipped or failed."""
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body]
    for r in rows:
        for b, why in r["skipped"].items():
            out.append(f"{'failed' if b in r.get('failed', ()) else 'skipped'}: {r['method']} ({b}): {why}")
    return "\n".join(out)


def html_table(rows: list[dict[str, Any]], backends: Sequence[str], n: int | None = None) -> str:
    """The same table as HTML for the gallery page."""
    from polyviz.render import html_table as table

    caption = "agreement between frameworks" + (", pointing game against the object masks" if n else "") + ", time"
    return table(_header(backends, n), [_cells(r, backends, n) for r in rows], caption=caption)


def gallery_rows(
    runs: dict[tuple[str, str], Run], method_names: Sequence[str], backends: Sequence[str], n: int,
    images: np.ndarray, masks: np.ndarray | None = None, style: dict[str, Any] | None = None,
) -> list[tuple[str, list[Any]]]:
    """Rows for :func:`polyviz.render.write_gallery`: the images (and masks), then one row per method
    with a {backend: picture, 'skipped: reason' or 'failed: reason'} cell per image."""
    from polyviz.render import original

    style = style or {}
    rows: list[tuple[str, list[Any]]] = [("input", [original(images[i], value_range=(0, 1)) for i in range(n)])]
    if masks is not None:
        rows.append(("object mask", [original(np.repeat(masks[i][..., None], 3, -1).astype(np.float32),
                                              value_range=(0, 1)) for i in range(n)]))
    for m in method_names:
        cells = []
        for i in range(n):
            cell = {}
            for b in backends:
                run = runs[(m, b)]
                cell[b] = f"{'failed' if run.failed else 'skipped'}: {run.skipped}"
                if run.explanation is not None:
                    try:
                        cell[b] = run.explanation.render(i, **style)
                    except PolyvizError as exc:
                        cell[b] = f"skipped: {_reason(exc)}"
                    except Exception as exc:  # noqa: BLE001 - the page is written whatever one picture does
                        cell[b] = f"failed: {_failure(exc)}"
            if len(backends) == 1 or (all(isinstance(v, str) for v in cell.values()) and len(set(cell.values())) == 1):
                cell = next(iter(cell.values()))  # one framework, or the same reason in all: one cell
            cells.append(cell)
        rows.append((m, cells))
    return rows


# ---- crosscheck: the cross-framework difference against the float32 noise floor ------------------
#: Relative L2 at or under which two frameworks' attributions *agree* outright, whatever the floor:
#: 1e-3 is invisible in any rendering (a heat map has 256 levels) and far above what the same
#: function computed twice in float32 differs by when no ReLU or max-pool sits near a tie (~1e-6).
AGREES = 1e-3

#: A difference within this multiple of the float32 noise floor is *at noise floor*. The reasoning:
#: with ``f_a``, ``f_b`` each framework's own float32-vs-float64 difference and ``d64`` the
#: frameworks' difference in float64, the triangle inequality gives
#: ``difference <= f_a + f_b + d64 <= 2 * floor + d64`` (``floor = max(f_a, f_b)``). Two frameworks
#: that compute the same function (``d64`` ~ 0) therefore stay within 2x the floor however their
#: round-off falls; 3x leaves a margin for the floor being one sample of round-off. A difference
#: beyond 3x the floor implies ``d64 > floor``: the frameworks differ even without round-off.
NOISE_MULTIPLE = 3.0

VERDICTS = ("agrees", "at noise floor", "DISAGREES")


def verdict(difference: float, floor: float | None, agrees: float = AGREES) -> str:
    """'agrees' (``difference <= agrees``), 'at noise floor' (``<= NOISE_MULTIPLE * floor``) or
    'DISAGREES'. ``floor`` None (no float64 run): judged against ``agrees`` alone."""
    if difference <= agrees:
        return "agrees"
    if floor is not None and difference <= NOISE_MULTIPLE * floor:
        return "at noise floor"
    return "DISAGREES"


def float64_copy(model: Any, backend: str | None = None) -> Any:
    """A float64 copy of ``model`` made by its backend's ``float64_copy`` (torch: a deep copy,
    ``.double()``; Keras: rebuilt from its config in float64); the model itself is not modified."""
    from polyviz.registry import backend_class, detect

    cls = backend_class(backend) if backend is not None else detect(model)
    make = getattr(cls, "float64_copy", None)
    if make is None:
        raise InputError(f"model: backend {cls.name!r} cannot make a float64 copy (no float64_copy), so crosscheck "
                         "has no noise floor for it")
    return make(model)


def crosscheck_rows(
    runs: dict[tuple[str, str], Run], runs64: dict[tuple[str, str], Run], method_names: Sequence[str],
    backends: Sequence[str], agrees: float = AGREES,
) -> list[dict[str, Any]]:
    """Per method: ``difference`` (relative L2 of the float32 attributions of ``backends[0]`` and
    ``backends[1]``), ``floors`` {backend: its float32 vs float64 difference}, ``floor`` (the larger),
    ``floor_backend`` (whose it is), ``difference64`` (the two frameworks in float64) and ``verdict``
    (:func:`verdict`; 'skipped' or 'failed' when neither framework ran the method, 'DISAGREES' when
    only one did). Plus ``skipped``, ``failed`` and ``seconds`` (float32 runs) as :func:`summary_rows`."""
    a, b = backends[0], backends[1]
    rows = summary_rows(runs, method_names, backends)
    for row in rows:
        m = row["method"]
        row["difference"] = row["agreement"]
        row["floors"] = {}
        for be in (a, b):
            r32, r64 = runs[(m, be)], runs64.get((m, be))
            if r32.explanation is not None and r64 is not None and r64.explanation is not None:
                row["floors"][be] = relative_l2(r32.explanation.attribution, r64.explanation.attribution)
            elif r32.explanation is not None and r64 is not None:
                row["skipped"].setdefault(f"{be} float64", r64.skipped)
                if r64.failed:
                    row["failed"].add(f"{be} float64")
        row["floor"] = max(row["floors"].values()) if row["floors"] else None
        row["floor_backend"] = max(row["floors"], key=row["floors"].get) if row["floors"] else None
        e64 = [runs64.get((m, be)) for be in (a, b)]
        row["difference64"] = (relative_l2(e64[0].explanation.attribution, e64[1].explanation.attribution)
                               if all(r is not None and r.explanation is not None for r in e64) else None)
        ran = [be for be in (a, b) if runs[(m, be)].explanation is not None]
        if len(ran) == 2:
            row["verdict"] = verdict(row["difference"], row["floor"], agrees)
        elif len(ran) == 1:
            row["verdict"] = "DISAGREES"  # one framework explains, the other refuses or fails
        else:
            row["verdict"] = "failed" if row["failed"] else "skipped"
    return rows


def crosscheck_table(rows: list[dict[str, Any]], backends: Sequence[str]) -> str:
    """A Markdown table of :func:`crosscheck_rows` (method, difference, float64 difference, floor
    and whose, verdict, seconds), with a line per skipped or failed run giving the reason."""
    a, b = backends[0], backends[1]
    head = ["method", f"{a} vs {b} (rel. L2)", "in float64", "float32 floor", "verdict", f"time {a} (s)", f"time {b} (s)"]
    fmt = lambda v: "-" if v is None else f"{v:.1e}"  # noqa: E731
    body = []
    for r in rows:
        floor = "-" if r["floor"] is None else f"{r['floor']:.1e} ({r['floor_backend']})"
        times = [("failed" if be in r["failed"] else "skipped") if be in r["skipped"] else f"{r['seconds'][be]:.2f}"
                 for be in (a, b)]
        body.append([r["method"], fmt(r["difference"]), fmt(r["difference64"]), floor, r["verdict"], *times])
    return _markdown(head, body, rows)


def crosscheck(
    model: Any,
    x: np.ndarray,
    methods: str | Sequence[str] | None = None,
    *,
    to: str | None = None,
    converted: Any = None,
    layer: str | None = None,
    preprocess: Any = None,
    target: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    agrees: float = AGREES,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Explain ``x`` (N, H, W, C in [0, 1]) with every method in ``model``'s framework and in its
    conversion to ``to`` (default: the other installed framework), and judge each difference
    against the float32 noise floor. Returns :func:`crosscheck_rows`' rows (``method``,
    ``difference``, ``floor``, ``verdict``, ...), each with ``backends`` = (source, converted).

    The floor of a method is the larger of the two frameworks' own float32-vs-float64 differences
    for that method, model and input (each model's float64 copy: torch ``deepcopy(m).double()``,
    Keras rebuilt in float64; ``model`` is never modified). Both sides are measured because
    float32 round-off flips a near-tie in a ReLU or max-pool in one framework and not in the other.
    Seeded VGG16's deconvnet (224 px): two of block3_pool's 200 704 windows hold two inputs within
    1.1e-6 and 3.8e-7 (relative) of each other; NHWC float32 convolutions (Keras', and torch's own
    given a channels-last tensor) swap their order, torch's NCHW ones do not, so the max-pool switch
    moves and deconvnet differs by 4.6e-3 while torch's one-sided floor is 8e-7. Both float64
    models agree exactly, and Keras' floor (4.6e-3) shows the difference is round-off.

    ``converted``: an already converted model, or a ``Converted`` (model, layer map), instead of
    converting here. ``layer``: the CAM layer in ``model`` (default: each backend's default).
    ``target``: classes (default: the source model's prediction, used in every run).
    """
    from polyviz.models.convert import Converted, convert
    from polyviz.registry import available_backends, detect

    source = detect(model).name
    if converted is None:
        if to is None:
            others = [b for b in available_backends() if b != source]
            if not others:
                raise InputError(f"to: crosscheck needs a second framework; only {source} is installed")
            to = others[0]
        converted = convert(model, to, input_shape=tuple(np.shape(x)[1:]))
    if isinstance(converted, Converted):
        other_model, layer_map = converted.model, converted.layer_map
    else:
        other_model, layer_map = converted, {}
    other = detect(other_model).name
    if other == source:
        raise InputError(f"converted: the converted model is a {other} model too; crosscheck compares two frameworks")
    names = parse_methods(methods)
    layers = {source: layer, other: layer_map.get(layer, layer) if layer is not None else None}
    models = {source: model, other: other_model}
    pre = dict.fromkeys(models, preprocess)
    kw = dict(layers=layers, preprocess=pre, options=options, batch_size=batch_size, seed=seed, progress=progress)
    runs = run_methods(models, x, names, target=target, **kw)
    if target is None:
        target = next((r.explanation.target for r in runs.values() if r.explanation is not None), None)
    models64 = {be: float64_copy(m, be) for be, m in models.items()}
    runs64 = run_methods(models64, x, names, target=target, **kw)
    rows = crosscheck_rows(runs, runs64, names, [source, other], agrees)
    for row in rows:
        row["backends"] = (source, other)
    return rows
