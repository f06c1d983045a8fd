"""The public entry point: ``polyviz.explain(model, x, method, ...)`` and one function per method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polyviz.errors import InputError, TargetError, did_you_mean
from polyviz.explanation import Explanation
from polyviz.layers_default import CONTAINER_TYPES as CONTAINER_TYPES  # re-exported: polyviz.cli uses it
from polyviz.layers_default import pick_default_layer
from polyviz.layout import from_channels_last
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, Capability
from polyviz.registry import backend_for
from polyviz.targets import SelectOutput
from polyviz.targets import describe as describe_target
from polyviz.techniques import METHODS, Context, MethodInfo, load_all

__all__ = ["explain", "methods", "default_layer", "method_function", "predict", "resolve_targets", "check_seed"]


def methods() -> dict[str, dict[str, Any]]:
    """Every method: a one-line description and what it needs (layer, baseline, capabilities)."""
    load_all()
    return {
        name: {
            "description": info.description,
            "kind": info.kind,
            "needs_layer": info.needs_layer,
            "needs_baseline": info.needs_baseline,
            "capabilities": list(info.capabilities),
            "options": info.options,
            "family": info.family,
        }
        for name, info in sorted(METHODS.items())
    }


def _method_info(name: str) -> MethodInfo:
    load_all()
    if not isinstance(name, str) or name not in METHODS:
        raise InputError(f"method: unknown method {name!r}.{did_you_mean(str(name), METHODS)} See polyviz.methods().")
    return METHODS[name]


def default_layer(backend: Backend) -> str:
    """The usual CAM layer: the outermost block whose output is the network's last spatial map,
    after its residual add and activation (the rule is written down in :mod:`polyviz.layers_default`)."""
    return pick_default_layer(backend.layers())


def predict(backend: Backend, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Model outputs for a channels-last batch, in batches."""
    size = max(1, int(batch_size or 32))
    return np.concatenate([backend.forward(x[i : i + size]) for i in range(0, len(x), size)])


def check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0 (what ``numpy.random.default_rng`` takes), or an InputError."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed: expected an int >= 0, got {seed!r}")
    return int(seed)


def _resolve_targets(target: Any, n: int) -> np.ndarray | None:
    """The form of ``target``: None, or one int64 class index >= 0 per sample (range unchecked)."""
    if target is None:
        return None
    if isinstance(target, str | bytes):
        raise TargetError(f"target: expected an int, one int per sample ({n}) or None, got {target!r}")
    try:
        arr = np.asarray(target)
    except (TypeError, ValueError):
        raise TargetError(
            f"target: expected an int, one int per sample ({n}) or None, got {type(target).__name__}"
        ) from None
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or len(arr) != n:
        raise TargetError(f"target: expected an int, one int per sample ({n}) or None, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TargetError(f"target: expected integer class indices, got {arr.dtype}")
    if (arr < 0).any():
        raise TargetError(f"target: class indices must be >= 0, got {int(arr.min())}")
    if arr.dtype == np.uint64 and (arr > np.iinfo(np.int64).max).any():
        raise TargetError(f"target: class index {int(arr.max())} is out of range")
    return arr.astype(np.int64)


def resolve_targets(
    backend: Backend, xs: np.ndarray, target: Any, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One valid class index per sample of the channels-last batch ``xs``, checked once for every
    method: ``target`` (an int, one int per sample) must be integral and in [0, K) for a model
    with K outputs; None means the predicted class. Returns (targets, predicted scores or None)."""
    targets = _resolve_targets(target, len(xs))
    if targets is None:
        backend.require(Capability.FORWARD)
        logits = predict(backend, xs, batch_size)
        if logits.ndim != 2:
            raise TargetError(
                f"target: the model output has shape {logits.shape}, not (N, classes), so there is no "
                "predicted class; pass target= explicitly"
            )
        targets = logits.argmax(axis=-1).astype(np.int64)
        return targets, logits[np.arange(len(xs)), targets]
    k = backend.class_count(xs)
    if (targets >= k).any():
        bad = int(targets[targets >= k][0])
        raise TargetError(
            f"target: class index {bad} is out of range for a model with {k} outputs (expected 0 <= target < {k})"
        )
    return targets, None


#: Options that hold images (one, or a batch / distribution): given in the caller's layout.
IMAGE_OPTIONS = ("baseline", "baselines")


def _image_options(backend: Backend, options: dict[str, Any], layout: str) -> dict[str, Any]:
    """Image-valued options (baselines) arrive in the caller's layout, as numbers, arrays or
    framework tensors; techniques get a float or a float32 channels-last array. Checked here once
    for every method: strings, bools and integer or non-numeric arrays are refused by name."""
    out = dict(options)
    for name in IMAGE_OPTIONS:
        value = out.get(name)
        if value is None:
            continue
        expected = "a number or a float image array"
        if isinstance(value, bool | np.bool_ | str | bytes):
            raise InputError(f"{name}: expected {expected}, got {value!r:.60}")
        try:
            arr = backend.as_numpy(value)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{name}: expected {expected}, got a {type(value).__name__}") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf" or (arr.ndim and arr.dtype.kind != "f"):
            what = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(value).__name__
            raise InputError(f"{name}: expected {expected}, got {what}; convert it to float in x's range")
        if arr.ndim == 0:
            out[name] = float(arr)
            continue
        arr = arr.astype(np.float32, copy=False)
        if layout == "NCHW" and arr.ndim >= 3:
            arr = np.moveaxis(arr, -3, -1)  # (..., C, H, W) -> (..., H, W, C)
        out[name] = arr
    return out


def explain(
    model: Any,
    x: Any,
    method: str,
    /,
    *,
    target: int | list[int] | np.ndarray | None = None,
    layer: str | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    layout: str | None = None,
    output: Any = None,
    **options: Any,
) -> Explanation:
    """Explain the model's decision on ``x`` with ``method`` (see :func:`methods`).

    ``x``: a float numpy array or framework tensor, one image or a batch, in the model's native
    layout (NCHW for torch, NHWC for Keras) unless ``layout=`` says otherwise. Integer (e.g. uint8)
    and bool arrays are refused rather than guessed at: convert them, e.g. ``x.astype("float32") /
    255`` for a model that expects [0, 1]. When the preprocessing declares its input range
    (``preprocess="torchvision"`` is [0, 1]) and x lies far outside it, one
    :class:`~polyviz.errors.InputRangeWarning` is given. ``target``: an int or one int per sample,
    each in [0, number of outputs), or None for the predicted class; checked once, before any
    method work. ``layer``: a layer name, or None for the last layer with a spatial map. Returns
    raw, signed float32 values in an :class:`Explanation`. Every bad argument raises a
    :class:`~polyviz.errors.PolyvizError` whose one-line message names it.

    Models whose output is not one (N, K) tensor (:mod:`polyviz.targets`): ``output=`` names the
    part to explain (a dict key or attribute name, a tuple index), then ``target=`` picks its class;
    or ``target=`` is a one-score target: :class:`~polyviz.targets.SegmentationTarget` (a region's
    summed logit), :class:`~polyviz.targets.DetectionTarget` (a box's score) or a
    :class:`~polyviz.protocol.NativeCallable` on the raw output. Same API in every framework.
    """
    info = _method_info(method)
    output_target, target = _output_target(output, target)
    extra = {} if output_target is None else {"output": output_target}
    be = backend_for(model, backend, preprocess=preprocess, **extra)
    for capability in info.capabilities:
        be.require(capability)
    if layout is None:
        layout = be.native_layout
    xs, caller_layout = be.check_input(x, layout)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1
    ):
        raise InputError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    seed = check_seed(seed)
    options = _image_options(be, options, layout)
    known = info.options
    unknown = [k for k in options if k not in known]
    if unknown:
        raise InputError(
            f"{unknown[0]}: not an option of method {method!r}.{did_you_mean(unknown[0], known)} "
            f"Its options: {', '.join(known) or 'none'}"
        )
    targets, scores = resolve_targets(be, xs, target, batch_size)
    if info.needs_layer:
        layer = default_layer(be) if layer is None else be.check_layers([layer])[0]
    elif layer is not None:
        layer = be.check_layers([layer])[0]
    ctx = Context(be, xs, targets, layer, batch_size, seed, bool(progress))
    result = info.fn(ctx, **options)
    attribution = np.asarray(result.attribution, dtype=np.float32)
    if info.kind == "input":
        attribution = from_channels_last(attribution, caller_layout)
    if result.scores is not None:
        scores = np.asarray(result.scores, np.float32)
    return Explanation(
        attribution=attribution,
        target=targets,
        method=method,
        backend=be.name,
        layer=layer,
        layer_attribution=None if result.layer_attribution is None else np.asarray(result.layer_attribution, np.float32),
        scores=scores,
        options={**info.options, **options, **result.metadata,
                 **({} if output_target is None else {"output": describe_target(output_target)})},
        layout=caller_layout.name,
        inputs=xs,
        kind=info.kind,
    )


def _output_target(output: Any, target: Any) -> tuple[Any, Any]:
    """(the backend's output target or None, the class target) from ``explain``'s arguments."""
    from polyviz.protocol import NativeCallable
    from polyviz.targets import DetectionTarget, SegmentationTarget, as_output_target, check_output_target

    selected = as_output_target(output)
    if isinstance(target, SegmentationTarget | DetectionTarget | NativeCallable):
        if selected is not None and not isinstance(selected, SelectOutput):
            raise InputError("output: give a one-score target either as target= or as output=, not both")
        if isinstance(selected, SelectOutput) and isinstance(target, SegmentationTarget) and target.key is None:
            target = SegmentationTarget(target.category, target.mask, selected.key)
        return check_output_target(target), 0
    if selected is not None and not isinstance(selected, SelectOutput):
        if target not in (None, 0):
            raise TargetError(f"target: a one-score output target explains score 0, got target={target!r}")
        return selected, 0
    return selected, target


def method_function(name: str) -> Callable[..., Explanation]:
    """``polyviz.<name>(model, x, **kwargs)``: :func:`explain` with the method fixed."""

    def run(model: Any, x: Any, **kwargs: Any) -> Explanation:
        return explain(model, x, name, **kwargs)

    run.__name__ = name
    run.__qualname__ = name
    info = METHODS.get(name)
    run.__doc__ = f"{info.description if info else name}\n\nSame arguments as polyviz.explain(model, x, {name!r}, ...)."
    return run


