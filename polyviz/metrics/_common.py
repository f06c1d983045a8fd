"""What every metric shares: the backend and channels-last batch, the targets, the attributions
(computed with any registered method, or given), maps, scores and batched forwards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.layout import to_channels_last
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, range_already_checked

__all__ = ["Setup", "prepare", "attributions", "explain_fn", "as_map", "softmax", "batched_forward", "chunks",
           "check_positive_int", "check_aspect", "raw_layout", "given_attributions", "check_masks"]


@dataclass
class Setup:
    """A validated metric call: the backend, x channels-last (N, H, W, C), one target per sample
    and how the explanations are produced."""

    backend: Backend
    x: np.ndarray
    targets: np.ndarray
    layout: str
    method: str | None
    options: dict[str, Any]
    layer: str | None
    batch_size: int | None
    seed: int
    progress: bool


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def prepare(
    model: Any,
    x: Any,
    target: Any,
    *,
    method: str | None,
    attribution: Any,
    options: dict[str, Any],
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    layout: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Setup:
    """Resolve the backend (a :class:`Backend` instance is used as it is), bring ``x`` to
    channels-last and fix one target per sample: ``target``, else the explanation's, else the
    predicted class."""
    from polyviz.api import check_seed, resolve_targets
    from polyviz.registry import backend_for

    be = backend_for(model, backend, preprocess=preprocess)
    layout = layout or be.native_layout
    xs, _ = be.check_input(x, layout)
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    if method is None and attribution is None:
        raise InputError("method: give a method name (method='saliency', ...) or precomputed attributions")
    if method is not None and not isinstance(method, str):
        raise InputError(f"method: expected a method name, got {type(method).__name__}")
    if target is None and attribution is not None and getattr(attribution, "target", None) is not None:
        target = attribution.target
    targets, _ = resolve_targets(be, xs, target, batch_size)
    return Setup(be, xs, targets, layout, method, dict(options), layer, batch_size, check_seed(seed), bool(progress))


def explain_fn(setup: Setup) -> Any:
    """``f(x channels-last, targets) -> attributions channels-last`` with the setup's method."""
    from polyviz.api import explain

    if setup.method is None:
        raise InputError("method: this metric recomputes explanations at new inputs; give a method name")

    def run(x: np.ndarray, targets: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        with range_already_checked():  # prepare() warned once about the caller's x
            e = explain(backend or setup.backend, x, setup.method, target=targets, layer=setup.layer,
                        batch_size=setup.batch_size, seed=setup.seed, progress=False, layout="NHWC", **setup.options)
        return np.asarray(e.attribution, np.float32)

    return run


def attributions(setup: Setup, attribution: Any) -> np.ndarray:
    """The attributions of ``setup.x`` channels-last: (N, H, W, C) or maps (N, H, W). ``attribution``
    is an :class:`~polyviz.Explanation`, an array (input-shaped in the caller's layout, or maps), or
    None to run the setup's method."""
    n, h, w, c = setup.x.shape
    if attribution is None:
        return explain_fn(setup)(setup.x, setup.targets)
    if hasattr(attribution, "attribution") and hasattr(attribution, "layout"):
        a = np.asarray(attribution.attribution, np.float32)
        layout = attribution.layout
    else:
        a = np.asarray(attribution, np.float32)
        layout = setup.layout
    given = a.shape
    if a.ndim == 4:
        a, _ = to_channels_last(a, layout)
    if a.shape not in ((n, h, w, c), (n, h, w)):
        other = "NHWC" if layout == "NCHW" else "NCHW"
        hint = ""
        if len(given) == 4 and to_channels_last(np.empty(given, np.float32), other)[0].shape == (n, h, w, c):
            hint = f" (it looks {other}: pass layout={other!r} or an Explanation)"
        raise InputError(
            f"attribution: expected one attribution per sample, input-shaped ({n}, {h}, {w}, {c} channels-last) "
            f"or maps ({n}, {h}, {w}), got shape {given} read as {layout}{hint}"
        )
    if not np.all(np.isfinite(a)):
        raise InputError("attribution: contains NaN or infinite values")
    return np.ascontiguousarray(a, np.float32)


def _aspect_fits(map_hw: tuple[int, int], big_hw: tuple[int, int]) -> bool:
    """Whether an (h, w) map can be a (H, W) image seen through some stride: H / W within the
    aspect ratios that one cell of rounding allows, (h - 1) / (w + 1) .. (h + 1) / (w - 1)."""
    h, w = map_hw
    big_h, big_w = big_hw
    low = max(h - 1, 0.5) / (w + 1)
    high = (h + 1) / max(w - 1, 0.5)
    return low - 1e-12 <= big_h / big_w <= high + 1e-12


def check_aspect(map_hw: tuple[int, ...], big_hw: tuple[int, ...], what: str = "attribution") -> None:
    """A one-line error when maps of spatial shape ``map_hw`` cannot belong to images or masks of
    ``big_hw`` (their aspect ratios differ by more than one cell of rounding): the mark of a map read
    in the wrong layout, e.g. an NCHW attribution summed over W as if it were channels-last."""
    if len(map_hw) != 2 or not _aspect_fits((int(map_hw[0]), int(map_hw[1])), (int(big_hw[0]), int(big_hw[1]))):
        raise InputError(f"{what}: expected maps with the aspect ratio of the masks {tuple(big_hw)}, got spatial "
                         f"shape {tuple(map_hw)} (an attribution read in the wrong layout? pass layout=)")


def raw_layout(shape: tuple[int, ...], spatial: tuple[int, int], layout: str | None, what: str = "attribution") -> str:
    """The layout of a raw input-shaped array of ``shape`` (N, ., ., .) that must belong to images
    (or masks) of spatial shape ``spatial``: ``layout`` when given (checked), else the one of NCHW /
    NHWC whose spatial axes fit ``spatial``'s aspect ratio; refused (one line) when both fit and
    the channel count cannot tell them apart, or neither does."""
    candidates = {"NHWC": tuple(shape[1:3]), "NCHW": tuple(shape[2:4])}
    if layout is not None:
        if layout not in candidates:
            raise InputError(f"layout: expected 'NCHW' or 'NHWC', got {layout!r}")
        check_aspect(candidates[layout], spatial, what)
        return layout
    exact = [k for k, hw in candidates.items() if hw == tuple(spatial)]
    fits = exact or [k for k, hw in candidates.items() if _aspect_fits(hw, spatial)]  # type: ignore[arg-type]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise InputError(f"{what}: expected an input-shaped array whose spatial axes match {tuple(spatial)} "
                         f"(NCHW or NHWC), got shape {tuple(shape)}")
    raise InputError(f"{what}: shape {tuple(shape)} reads as NCHW and as NHWC; pass layout='NCHW' or 'NHWC' "
                     "(or an Explanation, which knows its layout)")


def explanation_layout(attribution: Any) -> tuple[np.ndarray, str] | None:
    """(array, layout) of an Explanation-like object, or None for a raw array."""
    if hasattr(attribution, "attribution") and hasattr(attribution, "layout"):
        return np.asarray(attribution.attribution, np.float32), str(attribution.layout)
    return None


def given_attributions(
    model: Any, x: Any, target: Any, *, method: str | None, attribution: Any, options: dict[str, Any],
    spatial: tuple[int, int] | None, layer: str | None = None, backend: str | None = None,
    preprocess: Preprocess | str | None = None, layout: str | None = None, batch_size: int | None = None,
    seed: int = 0, progress: bool = True,
) -> np.ndarray:
    """Channels-last attributions (N, H, W, C) or maps (N, H, W) for metrics that look only at the
    map. With a model: :func:`prepare` and :func:`attributions`. Without (``model=None``): the
    given ``attribution``; an Explanation knows its layout, a raw 4-D array is read in ``layout``
    or, if not given, in the one layout whose spatial axes fit ``spatial`` (:func:`raw_layout`;
    refused when ambiguous). ``spatial=None``: the metric does not depend on the layout (values
    only), so a raw array is taken as it is."""
    if model is not None:
        setup = prepare(model, x, target, method=method, attribution=attribution, options=options, layer=layer,
                        backend=backend, preprocess=preprocess, layout=layout, batch_size=batch_size, seed=seed,
                        progress=progress)
        return attributions(setup, attribution)
    if attribution is None:
        raise InputError("model: needed to compute the attributions; or pass attribution= (an Explanation or array)")
    known = explanation_layout(attribution)
    a, given = known if known is not None else (np.asarray(attribution, np.float32), layout)
    if a.ndim not in (3, 4):
        raise InputError(f"attribution: expected maps (N, H, W) or an input-shaped batch, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("attribution: contains NaN or infinite values")
    if a.ndim == 4:
        if spatial is not None:
            given = raw_layout(a.shape, spatial, given) if known is None else given
        if given is not None:
            a, _ = to_channels_last(a, given)
    if spatial is not None:
        check_aspect(a.shape[1:3], spatial)
    return np.ascontiguousarray(a, np.float32)


def check_masks(masks: Any, n: int, spatial: tuple[int, ...]) -> np.ndarray:
    """(N, H, W) bool object masks, one per sample, at the attributions' resolution."""
    m = np.asarray(masks)
    if m.ndim == 4 and 1 in (m.shape[1], m.shape[3]):  # (N, 1, H, W) or (N, H, W, 1)
        m = m[:, 0] if m.shape[1] == 1 else m[..., 0]
    if m.shape != (n, *spatial):
        raise InputError(f"masks: expected one (H, W) mask per sample, shape {(n, *spatial)}, got {np.shape(masks)}")
    return m.astype(bool)


def as_map(a: np.ndarray, absolute: bool = False) -> np.ndarray:
    """(N, H, W) from channels-last attributions: maps as they are, input-shaped ones summed over
    channels (of ``|a|`` when ``absolute``)."""
    a = np.asarray(a, np.float64)
    if absolute:
        a = np.abs(a)
    return a.sum(axis=-1) if a.ndim == 4 else a


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def chunks(n: int, size: int, desc: str, progress: bool) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` (a progress bar when asked and worth it)."""
    starts: Any = range(0, n, max(1, size))
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        yield slice(start, min(start + size, n))


def batched_forward(setup: Setup, x: np.ndarray, desc: str, default: int = 64) -> np.ndarray:
    """Model outputs (M, K) for a channels-last batch, ``batch_size`` (default ``default``) at a time."""
    size = setup.batch_size or default
    outs = [setup.backend.forward(x[s]) for s in chunks(len(x), size, desc, setup.progress)]
    return np.concatenate(outs).astype(np.float64)
