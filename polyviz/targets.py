"""Models whose output is not one tensor, and targets that are not one class (issue 14, item 4).

A model may return a dict, a tuple or a dataclass (detection heads, multi-task models, Hugging Face
style ``ModelOutput``), and a user may want to explain a region of a segmentation or one box of a
detector. The user gives an **output target**, plain data like every objective
(:mod:`polyviz.protocol`); the backend applies it to the model's raw output right after the forward
pass, so every method (gradients, CAMs, perturbations, metrics) sees an ordinary (N, K) score
tensor and needs no change:

* :class:`SelectOutput` ``(key)``: the part ``key`` of the output (a dict key, a tuple/list index or
  an attribute name), then ``target=`` picks a class as usual;
* :class:`SegmentationTarget` ``(category, mask, key=None)``: the summed logit of ``category`` over
  the pixels of ``mask``, pytorch-grad-cam's ``SemanticSegmentationTarget``; one score per sample;
* :class:`DetectionTarget` ``(box, category, boxes=..., scores=...)``: the score of the predicted
  box that best matches ``box``: max over predictions p of IoU(box, box_p) * score_p[category], as
  Xplique's object-detection operator (Fel et al. 2022, without its objectness factor unless
  ``objectness`` names one); one score per sample;
* :class:`polyviz.protocol.NativeCallable` ``(fn)``: ``fn(output)`` on the raw framework output, one
  score per sample. Being a framework callable it is the one target that is not plain data; it
  runs inside the backend's own autograd (a torch function for torch, a TensorFlow function for
  Keras, traced into its ``tf.function``).

The one-score targets make the output (N, 1): ``explain`` then explains "class" 0. The arithmetic
is written once (:func:`apply_target`) over a tiny array namespace (:class:`ArrayOps`) that each
backend supplies for its tensors; numpy's (:data:`NUMPY_OPS`) is the reference the tests use.
Output layout: a torch map output (N, K, H, W) is read channels-first and a Keras one
channels-last, like every image array at the protocol boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from polyviz.errors import InputError, TargetError

__all__ = [
    "SelectOutput",
    "SegmentationTarget",
    "DetectionTarget",
    "OutputTarget",
    "ArrayOps",
    "NUMPY_OPS",
    "check_output_target",
    "select",
    "apply_target",
    "scores_only",
]


@dataclass(frozen=True, eq=False)
class SelectOutput:
    """The part ``key`` of a structured output: a dict key or attribute name (str), or a tuple or
    list index (int). The selected tensor must be the (N, K) scores."""

    key: str | int


@dataclass(frozen=True, eq=False)
class SegmentationTarget:
    """Sum of the logit of ``category`` over the pixels where ``mask`` (H, W) is nonzero, per
    sample (pytorch-grad-cam's ``SemanticSegmentationTarget``). ``mask`` may be weights (floats).
    ``key`` selects the segmentation map in a structured output (torchvision's ``"out"``)."""

    category: int
    mask: np.ndarray
    key: str | int | None = None


@dataclass(frozen=True, eq=False)
class DetectionTarget:
    """The detector's score for a reference ``box`` (x0, y0, x1, y1) and ``category``: max over the
    predictions p of IoU(box, boxes[p]) * scores[p, category] (* objectness[p] when ``objectness``
    is given), after Xplique's object-detection operator. ``boxes`` (N, P, 4), ``scores`` (N, P, K)
    and ``objectness`` (N, P) are keys/indices of the output."""

    box: tuple[float, float, float, float]
    category: int
    boxes: str | int = "boxes"
    scores: str | int = "scores"
    objectness: str | int | None = None


OutputTarget = SelectOutput | SegmentationTarget | DetectionTarget


class ArrayOps(NamedTuple):
    """The few tensor operations :func:`apply_target` needs, supplied by each backend."""

    const: Callable[[Any, Any], Any]  # (numpy array, like tensor) -> tensor on its device/dtype
    sum: Callable[[Any, tuple[int, ...]], Any]
    max: Callable[[Any, int], Any]
    minimum: Callable[[Any, Any], Any]
    maximum: Callable[[Any, Any], Any]
    map_channels_last: Callable[[Any], Any]  # a 4-D output map -> (N, H, W, K)


NUMPY_OPS = ArrayOps(
    const=lambda a, like: np.asarray(a, dtype=like.dtype),
    sum=lambda t, axis: np.sum(t, axis=axis),
    max=lambda t, axis: np.max(t, axis=axis),
    minimum=np.minimum,
    maximum=np.maximum,
    map_channels_last=lambda t: t,
)


def _key(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, str | int | np.integer):
        raise InputError(f"{name}: expected an output key (str) or index (int), got {value!r:.60}")


def check_output_target(target: Any) -> Any:
    """``target`` checked (one-line errors naming the field): an :data:`OutputTarget`, a
    :class:`~polyviz.protocol.NativeCallable`, or None."""
    from polyviz.protocol import NativeCallable

    if target is None:
        return None
    if isinstance(target, NativeCallable):
        if not callable(target.fn):
            raise InputError("output: NativeCallable.fn must be callable")
        return target
    if isinstance(target, SelectOutput):
        _key("output", target.key)
    elif isinstance(target, SegmentationTarget):
        _key("key", target.key, optional=True)
        if isinstance(target.category, bool) or not isinstance(target.category, int | np.integer) or target.category < 0:
            raise TargetError(f"category: expected a class index >= 0, got {target.category!r}")
        mask = np.asarray(target.mask)
        if mask.ndim != 2 or mask.dtype.kind not in "biuf" or not np.isfinite(mask.astype(np.float64)).all():
            raise InputError(f"mask: expected a finite (H, W) array, got shape {mask.shape} dtype {mask.dtype}")
    elif isinstance(target, DetectionTarget):
        for name in ("boxes", "scores"):
            _key(name, getattr(target, name))
        _key("objectness", target.objectness, optional=True)
        box = np.asarray(target.box, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"box: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {target.box!r}")
        if isinstance(target.category, bool) or not isinstance(target.category, int | np.integer) or target.category < 0:
            raise TargetError(f"category: expected a class index >= 0, got {target.category!r}")
    else:
        raise InputError(
            "output: expected SelectOutput, SegmentationTarget, DetectionTarget or NativeCallable, "
            f"got {type(target).__name__}"
        )
    return target


def select(output: Any, key: str | int | None) -> Any:
    """``output[key]`` for a dict or a tuple/list, ``getattr(output, key)`` for a dataclass or an
    object with attributes; ``output`` itself for key None. A one-line TargetError otherwise."""
    if key is None:
        return output
    try:
        if isinstance(output, dict) or (hasattr(output, "keys") and hasattr(output, "__getitem__")):
            return output[key]
        if isinstance(output, list | tuple):
            return output[int(key)]
        if isinstance(key, str):
            return getattr(output, key)
    except (KeyError, IndexError, AttributeError, TypeError):
        pass
    keys = list(output.keys()) if hasattr(output, "keys") else (
        f"indices 0..{len(output) - 1}" if isinstance(output, list | tuple) else type(output).__name__)
    raise TargetError(f"output: the model output has no part {key!r} (it has {keys})")


def scores_only(output: Any) -> bool:
    """True when ``output`` is one tensor-like value (not a dict, tuple, list or dataclass)."""
    return hasattr(output, "shape") and not isinstance(output, dict | list | tuple)


def apply_target(target: Any, output: Any, ops: ArrayOps) -> Any:
    """The scores the methods see: the selected part of the output, or (N, 1) for a one-score
    target. ``output`` is the model's raw output in the backend's tensors."""
    if isinstance(target, SelectOutput):
        return select(output, target.key)
    if isinstance(target, SegmentationTarget):
        seg = select(output, target.key)
        if len(seg.shape) != 4:
            raise TargetError(f"output: a segmentation target needs an (N, H, W, K) map, got shape {tuple(seg.shape)}")
        seg = ops.map_channels_last(seg)
        mask = np.asarray(target.mask, dtype=np.float64)
        if tuple(seg.shape[1:3]) != mask.shape:
            raise TargetError(f"mask: shape {mask.shape} does not match the output map {tuple(seg.shape[1:3])}")
        if not 0 <= int(target.category) < int(seg.shape[3]):
            raise TargetError(f"category: {target.category} is out of range for {int(seg.shape[3])} classes")
        score = ops.sum(seg[..., int(target.category)] * ops.const(mask, seg), (1, 2))
        return score[:, None]
    if isinstance(target, DetectionTarget):
        boxes, scores = select(output, target.boxes), select(output, target.scores)
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4 or len(scores.shape) != 3:
            raise TargetError(
                f"output: a detection target needs boxes (N, P, 4) and scores (N, P, K), got "
                f"{tuple(boxes.shape)} and {tuple(scores.shape)}"
            )
        if not 0 <= int(target.category) < int(scores.shape[-1]):
            raise TargetError(f"category: {target.category} is out of range for {int(scores.shape[-1])} classes")
        x0, y0, x1, y1 = (float(v) for v in target.box)
        bx0, by0, bx1, by1 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
        iw = ops.maximum(ops.minimum(bx1, x1) - ops.maximum(bx0, x0), 0.0)
        ih = ops.maximum(ops.minimum(by1, y1) - ops.maximum(by0, y0), 0.0)
        inter = iw * ih
        union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - inter
        score = inter / ops.maximum(union, 1e-12) * scores[..., int(target.category)]
        if target.objectness is not None:
            score = score * select(output, target.objectness)
        return ops.max(score, 1)[:, None]
    from polyviz.protocol import NativeCallable

    if isinstance(target, NativeCallable):
        values = target.fn(output)
        n = _batch(output)
        if not hasattr(values, "shape") or len(values.shape) != 1 or (
                n is not None and values.shape[0] is not None and int(values.shape[0]) != n):
            got = tuple(values.shape) if hasattr(values, "shape") else type(values).__name__
            raise InputError(f"output: NativeCallable.fn must return one score per sample, shape ({n},), got {got}")
        return values[:, None]
    raise InputError(f"output: {type(target).__name__} is not an output target")


def _batch(output: Any) -> int | None:
    """The batch size of a (structured) output: the first axis of its first tensor."""
    if hasattr(output, "shape") and not isinstance(output, dict | list | tuple):
        n = output.shape[0]
        return None if n is None else int(n)
    values = list(output.values()) if hasattr(output, "values") else (
        list(output) if isinstance(output, list | tuple) else list(vars(output).values()))
    for value in values:
        if value is not None and not isinstance(value, str | int | float):
            return _batch(value)
    return None


def as_output_target(output: Any) -> Any:
    """``explain(output=...)``: a key or index becomes :class:`SelectOutput`; targets pass."""
    if output is None or isinstance(output, str | int) and not isinstance(output, bool):
        return None if output is None else SelectOutput(output)
    return check_output_target(output)


def one_score(target: Any) -> bool:
    """True for targets that reduce the output to one score per sample (class 0 is explained)."""
    return not isinstance(target, SelectOutput) and target is not None


def describe(target: Any) -> str:
    """A short description for an explanation's metadata."""
    if isinstance(target, SelectOutput):
        return f"output[{target.key!r}]"
    if isinstance(target, SegmentationTarget):
        return f"segmentation(category={target.category}, pixels={int(np.count_nonzero(target.mask))})"
    if isinstance(target, DetectionTarget):
        return f"detection(box={tuple(target.box)}, category={target.category})"
    return f"callable({getattr(target.fn, '__name__', 'fn')})"

