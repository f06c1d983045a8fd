"""Every method on the same images in several frameworks: the explanations, how far the frameworks
agree, how often each map points at the object, and the gallery page that shows them side by side.

Used by ``polyviz demo``, ``polyviz gallery`` and ``polyviz crosscheck``. Agreement is the relative
L2 distance of the raw ``.attribution`` arrays, ``||a - b|| / max(||a||, ||b||)``. The pointing
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
           "summary_rows", "text_table", "html_table", "gallery_rows", "FAST_OPTIONS"]

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
    head = _header(backends, n)
    body = [_cells(r, backends, n) for r in rows]
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
