"""The backend protocol: what every framework backend answers, and the plain data it answers about.

Techniques are written once against :class:`Backend`. Everything that crosses this boundary is
plain data: float32 numpy arrays, channels-last (N, H, W, C); objectives (:class:`ClassScore`,
:class:`ChannelMean`, ...), backward rules (:class:`Rule`) and masked-input descriptions
(:class:`LowResMasks`, :class:`FeatureGroups`, :class:`Boxes`). A backend realises them in its
framework, on its device, without changing the user's model.

The public methods of :class:`Backend` validate their arguments once, for every backend (first
party or third party), and then call the framework hooks (``_forward``, ``_input_gradient``, ...)
that a backend implements.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from polyviz.errors import (
    CapabilityError,
    InputError,
    InputRangeWarning,
    LayerError,
    ModelError,
    TargetError,
    did_you_mean,
)
from polyviz.layout import LAYOUTS, Layout, to_channels_last
from polyviz.preprocess import Preprocess

__all__ = [
    "Capability",
    "ClassScore",
    "OutputWeighting",
    "ChannelMean",
    "Neuron",
    "LayerNorm",
    "LayerDistance",
    "NativeCallable",
    "Objective",
    "Rule",
    "LRPRule",
    "GUIDED",
    "DECONVNET",
    "LowResMasks",
    "FeatureGroups",
    "Boxes",
    "MaskSpec",
    "LayerInfo",
    "Gradients",
    "LayerGradients",
    "Backend",
    "OUTPUT",
    "check_output_objective",
]

#: Key under which :meth:`Backend.layer_activations` returns the model output when asked for it.
OUTPUT = "@output"


class Capability:
    """Names of the capabilities a backend may declare in ``Backend.capabilities``."""

    FORWARD = "forward"
    INPUT_GRADIENT = "input_gradient"
    LAYER_ACTIVATIONS = "layer_activations"
    LAYER_GRADIENTS = "layer_gradients"
    RELU_RULES = "relu_rules"
    MASKED_SCORES = "masked_scores"
    LAYER_MASKED_SCORES = "layer_masked_scores"
    CALLABLE_OBJECTIVE = "callable_objective"
    LAYER_WEIGHTS = "layer_weights"
    BUILD = "build"  # build a network from a NetworkSpec and export one (conversion)
    ZOO = "zoo"  # VGG16/VGG19 builders with ImageNet weight loading
    LRP = "lrp"  # Rule(lrp=...) backward rules
    DEEPLIFT = "deeplift"  # deeplift_gradient: rescale-rule multipliers against a reference
    LAYER_REPLACE = "layer_replace"  # replaced_layer_gradients: continue the forward from given activations
    REWEIGHT = "reweight"  # with_weights: a backend over a copy of the model with some layers' weights replaced
    OUTPUT_TARGET = "output_target"  # the ``output=`` option: structured outputs and one-score targets (polyviz.targets)

    ALL = frozenset(
        {
            FORWARD,
            INPUT_GRADIENT,
            LAYER_ACTIVATIONS,
            LAYER_GRADIENTS,
            RELU_RULES,
            MASKED_SCORES,
            LAYER_MASKED_SCORES,
            CALLABLE_OBJECTIVE,
            LAYER_WEIGHTS,
            BUILD,
            ZOO,
            LRP,
            DEEPLIFT,
            LAYER_REPLACE,
            REWEIGHT,
            OUTPUT_TARGET,
        }
    )


# --------------------------------------------------------------------------------------------
# Objectives: what to differentiate. Each gives one score per sample.
# --------------------------------------------------------------------------------------------


def _per_sample(value: Any, n: int, name: str) -> np.ndarray:
    """Broadcast an int or a sequence of ints to one int per sample, checking the length and that
    the values are integers (integral floats pass; None, strings, bools and fractions do not)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise TargetError(f"{name}: expected an int or one int per sample ({n}), got {type(value).__name__}") from None
    if arr.dtype.kind not in "iuf":
        raise TargetError(f"{name}: expected an int or one int per sample ({n}), got {value!r:.60}")
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise TargetError(
            f"{name}: expected an int or one int per sample ({n}), got shape {arr.shape}"
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & np.equal(np.mod(arr, 1), 0)):
        raise TargetError(f"{name}: expected integers, got {arr.dtype} values {arr[:4]}")
    return arr.astype(np.int64)


@dataclass(frozen=True, eq=False)
class ClassScore:
    """The model output (pre-softmax logit by default) of class ``target`` for each sample.

    ``target`` is an int for every sample or a sequence with one int per sample.
    """

    target: int | Sequence[int]
    layers: ClassVar[tuple[str, ...]] = ()

    def targets(self, n: int) -> np.ndarray:
        """One int64 class index per sample."""
        return _per_sample(self.target, n, "target")


@dataclass(frozen=True, eq=False)
class OutputWeighting:
    """``sum(weights * output)`` per sample: one-hot, multi-label, or a segmentation mask.

    ``weights`` is shaped like one sample's output (broadcast over the batch) or like the whole
    output batch. For a channels-last segmentation output (N, H, W, K) the weights are channels-last.
    """

    weights: np.ndarray
    layers: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, eq=False)
class ChannelMean:
    """Mean over spatial positions of channel ``channel`` of ``layer`` (one int or one per sample).

    For a layer without spatial dimensions (dense) it is the unit's activation.
    """

    layer: str
    channel: int | Sequence[int]

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def channels(self, n: int) -> np.ndarray:
        return _per_sample(self.channel, n, "channel")


@dataclass(frozen=True, eq=False)
class Neuron:
    """One activation of ``layer`` at ``index`` (channels-last, without the batch axis)."""

    layer: str
    index: tuple[int, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)


@dataclass(frozen=True, eq=False)
class LayerNorm:
    """Mean of the squared activations of ``layer`` (deep dream), over ``channels`` if given."""

    layer: str
    channels: tuple[int, ...] | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)


@dataclass(frozen=True, eq=False)
class LayerDistance:
    """Squared L2 distance ``sum((A - reference)**2)`` per sample (representation inversion).

    ``reference`` is shaped like one sample's activation (broadcast) or like the batch's.
    """

    layer: str
    reference: np.ndarray

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)


@dataclass(frozen=True, eq=False)
class NativeCallable:
    """Escape hatch for detection and other custom heads: ``fn(output) -> one score per sample``.

    ``fn`` receives the model's output as a framework tensor (torch.Tensor, tf.Tensor) and must
    return a tensor of shape (N,). Requires the ``callable_objective`` capability.
    """

    fn: Callable[[Any], Any]
    layers: ClassVar[tuple[str, ...]] = ()


Objective = ClassScore | OutputWeighting | ChannelMean | Neuron | LayerNorm | LayerDistance | NativeCallable
_OBJECTIVE_TYPES = (ClassScore, OutputWeighting, ChannelMean, Neuron, LayerNorm, LayerDistance, NativeCallable)


# --------------------------------------------------------------------------------------------
# Backward rules
# --------------------------------------------------------------------------------------------


#: LRP rule names (Montavon et al. 2019, "Layer-wise relevance propagation: an overview").
LRP_RULES = ("zero", "epsilon", "gamma", "alpha_beta", "zbox", "flat")


def _finite(name: str, value: Any) -> float:
    """``value`` as a finite float, or an InputError naming ``name``."""
    if isinstance(value, bool | np.bool_ | str | bytes):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a finite number, got {type(value).__name__}") from None
    if not np.isfinite(out):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return out


def _bound(name: str, value: Any) -> float | tuple[float, ...]:
    """A z^B bound: a finite number, or a sequence of finite numbers (one per input channel)."""
    if np.ndim(value) == 0 and not isinstance(value, list | tuple):
        return _finite(name, value)
    try:
        items = list(np.asarray(value, dtype=object).reshape(-1)) if np.ndim(value) <= 1 else None
    except (TypeError, ValueError):
        items = None
    if not items:
        raise InputError(f"{name}: expected a number or one number per input channel, got {value!r}")
    return tuple(_finite(name, v) for v in items)


@dataclass(frozen=True)
class LRPRule:
    """How one weighted layer (conv, dense) redistributes relevance R_out to its input a.

    With z_k = sum_j a_j w_jk + b_k the layer's output:

    * ``zero`` (LRP-0): R_j = a_j sum_k w_jk R_k / z_k;
    * ``epsilon``: R_j = a_j sum_k w_jk R_k / (z_k + epsilon * sign(z_k)) (sign(0) = +1);
    * ``gamma``: as LRP-0 with w + gamma w^+ (and b + gamma b^+) in place of w (and b);
    * ``alpha_beta``: alpha times LRP-0 on the positive contributions (a w)^+ minus beta times LRP-0
      on the negative ones (a w)^-; biases are split the same way (alpha - beta = 1);
    * ``zbox`` (z^B, for the first layer, inputs bounded by ``low`` <= a <= ``high``):
      R_j = sum_k (a_j w_jk - l_j w_jk^+ - h_j w_jk^-) R_k / z^B_k;
    * ``flat`` (Lapuschkin et al. 2019): R_j = sum_k R_k / sum_j' 1, uniform over each output's
      receptive field (inputs and weights replaced by ones, no bias).

    Every stabiliser of a denominator is ``z + epsilon * sign(z)``; ``epsilon`` defaults to 1e-6
    for every rule (zennit's default), a pure stabiliser except for the ``epsilon`` rule, where the
    caller picks a larger one (0.25 in the VGG16 composite). ``low``/``high``: scalars or one value
    per input channel, in the model's input space (after the backend's preprocessing).
    """

    name: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 1.0
    beta: float = 0.0
    low: float | tuple[float, ...] = 0.0
    high: float | tuple[float, ...] = 1.0

    def __post_init__(self) -> None:
        """Every numeric parameter is checked here, whatever the rule (one-line InputError naming
        it): ``epsilon`` > 0 (it stabilises every rule's denominator), ``gamma`` >= 0, ``alpha`` >= 1,
        ``beta`` >= 0 with alpha - beta = 1 (relevance conserved), ``low`` < ``high`` per channel,
        all finite. Values are stored as floats (tuples of floats for per-channel bounds)."""
        if not isinstance(self.name, str) or self.name not in LRP_RULES:
            raise InputError(f"rule: unknown LRP rule {self.name!r} (expected one of {', '.join(LRP_RULES)})")
        epsilon = _finite("epsilon", self.epsilon)
        if not epsilon > 0:
            raise InputError(f"epsilon: expected a number > 0 (the stabiliser of every LRP rule), got {self.epsilon!r}")
        gamma = _finite("gamma", self.gamma)
        if gamma < 0:
            raise InputError(f"gamma: expected a number >= 0, got {self.gamma!r}")
        alpha, beta = _finite("alpha", self.alpha), _finite("beta", self.beta)
        if beta < 0:
            raise InputError(f"beta: expected a number >= 0, got {self.beta!r}")
        if alpha < 1:
            raise InputError(f"alpha: expected a number >= 1, got {self.alpha!r}")
        if abs(alpha - beta - 1.0) > 1e-9 * max(1.0, abs(alpha)):
            raise InputError(f"alpha: alpha_beta needs alpha - beta = 1, got alpha={self.alpha}, beta={self.beta}")
        low, high = _bound("low", self.low), _bound("high", self.high)
        lows, highs = np.atleast_1d(low), np.atleast_1d(high)
        if lows.size > 1 and highs.size > 1 and lows.size != highs.size:
            raise InputError(f"low: {lows.size} per-channel values but high has {highs.size}")
        if not np.all(lows < highs):
            raise InputError(f"low: expected low < high (per channel), got low={self.low!r}, high={self.high!r}")
        for field, value in (("epsilon", epsilon), ("gamma", gamma), ("alpha", alpha), ("beta", beta),
                             ("low", low), ("high", high)):
            object.__setattr__(self, field, value)


@dataclass(frozen=True)
class Rule:
    """A modified backward pass, given as data.

    ``relu="guided"``: every ReLU passes back only positive gradient at positive input
    (Springenberg et al. 2014). ``relu="deconvnet"``: every ReLU passes back only positive
    gradient, whatever its forward input (Zeiler & Fergus 2013). ``None``: the true gradient.

    ``lrp``: layer-wise relevance propagation, ((layer name, :class:`LRPRule`), ...) for every
    weighted layer (conv, dense) of the model. The backward pass then carries relevance: each
    weighted layer redistributes by its rule, ReLUs and other element-wise activations pass
    relevance through unchanged, max pooling passes it to the maximum (its gradient), average
    pooling redistributes in proportion to the contributions (LRP-0), and flatten, reshape and
    dropout move it along. The seed at the output is the objective's gradient (1 at the target),
    so the relevance at the input sums to about 1 for a class score; multiply by the score for
    relevance in the score's units. The forward pass is unchanged in every case.
    """

    relu: str | None = None
    lrp: tuple[tuple[str, LRPRule], ...] = ()

    def __post_init__(self) -> None:
        if self.relu not in (None, "guided", "deconvnet"):
            raise InputError(f"rule: relu must be None, 'guided' or 'deconvnet', got {self.relu!r}")
        if self.lrp and self.relu is not None:
            raise InputError("rule: an LRP rule cannot be combined with a ReLU rule")
        for item in self.lrp:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], LRPRule)):
                raise InputError(f"rule: lrp expects (layer name, LRPRule) pairs, got {item!r}")

    @property
    def is_identity(self) -> bool:
        return self.relu is None and not self.lrp

    def lrp_rules(self) -> dict[str, LRPRule]:
        """The LRP rule per layer name."""
        return dict(self.lrp)


GUIDED = Rule(relu="guided")
DECONVNET = Rule(relu="deconvnet")


# --------------------------------------------------------------------------------------------
# Masked inputs: small descriptions the backend expands on its own device
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LowResMasks:
    """M low-resolution masks (M, h, w), upsampled to the input with :mod:`polyviz.interpolation`.

    ``normalize``: min-max normalise each upsampled mask to [0, 1] (Score-CAM; a constant mask
    becomes all zeros). ``upsampled_size``: upsample to this (H', W') instead of the input size and
    crop an input-sized window at ``offsets`` (M, 2) (RISE's random shifts).
    """

    masks: np.ndarray
    mode: str = "bilinear"
    normalize: bool = False
    upsampled_size: tuple[int, int] | None = None
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.asarray(self.masks).shape[0])


@dataclass(frozen=True, eq=False)
class FeatureGroups:
    """Masks given by feature groups: ``groups`` (H, W) holds a group id in [0, G) per pixel,
    ``keep`` (M, G) says for each mask how much of each group is kept (1) or replaced (0)."""

    groups: np.ndarray
    keep: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.keep).shape[0])


@dataclass(frozen=True, eq=False)
class Boxes:
    """M boxes (M, 4) as (y0, x0, y1, x1), end-exclusive; the mask is 0 inside a box, 1 outside."""

    boxes: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.boxes).shape[0])


MaskSpec = LowResMasks | FeatureGroups | Boxes


def materialize_masks(spec: MaskSpec, height: int, width: int) -> np.ndarray:
    """The reference expansion of a mask description to full-size masks (M, H, W), float32.

    Backends build the same masks on their device; this numpy version is the definition they are
    tested against.
    """
    from polyviz import interpolation

    if isinstance(spec, Boxes):
        boxes = np.asarray(spec.boxes, dtype=np.int64)
        masks = np.ones((len(boxes), height, width), dtype=np.float32)
        for i, (y0, x0, y1, x1) in enumerate(boxes):
            masks[i, max(y0, 0) : y1, max(x0, 0) : x1] = 0.0
        return masks
    if isinstance(spec, FeatureGroups):
        keep = np.asarray(spec.keep, dtype=np.float32)
        return keep[:, np.asarray(spec.groups, dtype=np.int64)]
    if isinstance(spec, LowResMasks):
        size = spec.upsampled_size or (height, width)
        up = interpolation.resize(np.asarray(spec.masks, dtype=np.float32), size, spec.mode)
        if spec.offsets is not None:
            offsets = np.asarray(spec.offsets, dtype=np.int64)
            up = np.stack([m[oy : oy + height, ox : ox + width] for m, (oy, ox) in zip(up, offsets)])
        if spec.normalize:
            lo = up.min(axis=(1, 2), keepdims=True)
            hi = up.max(axis=(1, 2), keepdims=True)
            span = hi - lo
            up = np.where(span > 0, (up - lo) / np.where(span > 0, span, 1.0), 0.0)
        return up.astype(np.float32)
    raise InputError(f"masks: expected LowResMasks, FeatureGroups or Boxes, got {type(spec).__name__}")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """One layer: name, framework type, output shape (channels-last, no batch axis; None when
    unknown), parameter count and trainable flag.

    ``tensor`` numbers the layer's output tensor in the order the forward pass produced it; layers
    that return the same tensor share the number (a container and its last child, a nested model
    and its output layer), and a tensor changed in place counts as a new one. None when unknown
    (the backend cannot tell, or the layer runs more than once). :func:`polyviz.default_layer`
    reads it.

    ``layout`` says how the framework holds the output, declared or detected by the backend, never
    guessed (:mod:`polyviz.layout`): a permutation of "NCHW" for a 4-D map ("NCHW" for a torch conv,
    "NHWC" for Keras and for torch ConvNeXt/Swin blocks that work channels-last), ``"NTC"`` for a
    token sequence (N, tokens, C) that the backend shows as its patch grid, dropping the first
    ``prefix`` tokens (class, registers), or None (not a map, or unknown). ``output_shape`` is
    always the channels-last view that layer methods receive: (h, w, C) for maps and token grids.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable: bool
    tensor: int | None = None
    layout: str | None = None
    prefix: int = 0

    @property
    def spatial(self) -> bool:
        """True when the output is a (H, W, C) map, as CAM methods need."""
        return self.output_shape is not None and len(self.output_shape) == 3


class Gradients(NamedTuple):
    """``values`` (N,) objective per sample; ``gradient`` d(objective)/dx, shaped like x."""

    values: np.ndarray
    gradient: np.ndarray


class LayerGradients(NamedTuple):
    """``values`` (N,); ``activations`` and ``gradients`` per layer name, channels-last."""

    values: np.ndarray
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Validation shared by every backend
# --------------------------------------------------------------------------------------------


def check_output_objective(objective: Any, output_shape: Sequence[int]) -> None:
    """Check an output-based objective against the model's output shape (N, K, ...).

    Backends call this once the output shape is known, before indexing.
    """
    if isinstance(objective, ClassScore):
        if len(output_shape) < 2:
            raise TargetError(f"target: the model output has shape {tuple(output_shape)}, no class axis")
        k = int(output_shape[-1])
        targets = objective.targets(int(output_shape[0]))
        bad = targets[(targets < 0) | (targets >= k)]
        if bad.size:
            raise TargetError(
                f"target: class index {int(bad[0])} is out of range for a model with {k} outputs "
                f"(expected 0 <= target < {k})"
            )
    elif isinstance(objective, OutputWeighting):
        w = np.asarray(objective.weights)
        sample = tuple(output_shape[1:])
        if w.shape != sample and w.shape != tuple(output_shape):
            raise TargetError(
                f"target: output weights of shape {w.shape} do not match the model output "
                f"{tuple(output_shape)} (expected {sample} or {tuple(output_shape)})"
            )


def _fits(shape: Sequence[int], declared: Sequence[int | None]) -> bool:
    """True when ``shape`` matches ``declared``, where a None dimension (dynamic) matches any size."""
    return len(shape) == len(declared) and all(d is None or int(s) == int(d) for s, d in zip(shape, declared))


def _check_layer_objective(objective: Any, shape: tuple[int, ...], n: int) -> None:
    """Check a layer objective's channel / index against that layer's output shape."""
    if isinstance(objective, ChannelMean):
        channels = objective.channels(n)
        c = shape[-1]
        bad = channels[(channels < 0) | (channels >= c)]
        if bad.size:
            raise TargetError(
                f"channel: {int(bad[0])} is out of range for layer {objective.layer!r} "
                f"with {c} channels"
            )
    elif isinstance(objective, Neuron):
        index = tuple(objective.index)
        if len(index) != len(shape) or any(not 0 <= i < (s if s is not None else i + 1) for i, s in zip(index, shape)):
            raise TargetError(
                f"neuron: index {index} does not fit layer {objective.layer!r} of shape {shape}"
            )
    elif isinstance(objective, LayerNorm) and objective.channels is not None:
        if any(not 0 <= c < shape[-1] for c in objective.channels):
            raise TargetError(
                f"channels: {objective.channels} out of range for layer {objective.layer!r} "
                f"with {shape[-1]} channels"
            )
    elif isinstance(objective, LayerDistance):
        ref = np.asarray(objective.reference)
        if not _fits(ref.shape, shape) and not _fits(ref.shape, (n, *shape)):
            raise InputError(
                f"reference: shape {ref.shape} does not match layer {objective.layer!r} "
                f"output {shape}"
            )


#: True while a public call that has already checked (and warned about) the caller's x runs
#: further public calls on copies of it (a metric re-explaining perturbed inputs).
_RANGE_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("polyviz_range_checked", default=False)


@contextlib.contextmanager
def range_already_checked() -> Iterator[None]:
    """Within this block :meth:`Backend.check_input` gives no :class:`InputRangeWarning`: the
    caller has checked the range once already, so that one public call warns at most once.
    Thread- and task-local (a context variable)."""
    token = _RANGE_CHECKED.set(True)
    try:
        yield
    finally:
        _RANGE_CHECKED.reset(token)


# --------------------------------------------------------------------------------------------
# The backend base class
# --------------------------------------------------------------------------------------------


class Backend(ABC):
    """What a framework backend answers. Subclass it, declare ``name`` and ``capabilities``,
    implement ``claims`` and the ``_`` hooks; register the class under the entry-point group
    ``polyviz.backends``.

    Every public method takes and returns float32 numpy arrays, channels-last, validated here.
    Hooks, tapes and sub-models live inside one call; the model is left exactly as it was.
    """

    #: Registry name ("torch", "keras", ...).
    name: ClassVar[str] = ""
    #: Capability names (see :class:`Capability`).
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: The framework's native image layout, "NCHW" or "NHWC".
    native_layout: ClassVar[str] = "NHWC"
    #: The pip extra that installs this backend's framework (for error messages).
    extra: ClassVar[str] = ""

    def __init__(self, model: Any, *, preprocess: Preprocess | None = None, **options: Any) -> None:
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise InputError(
                f"preprocess: expected a polyviz.Preprocess or None, got {type(preprocess).__name__}"
            )
        try:  # weak, so that caches keyed on the model (registry, compiled functions) die with it
            self._model_ref: Any = weakref.ref(model)
        except TypeError:
            self._model_ref = lambda: model
        self.preprocess = preprocess
        self.options = options
        from polyviz.targets import check_output_target

        #: What to explain when the model's output is not one (N, K) tensor (:mod:`polyviz.targets`):
        #: the backend applies it to the raw output right after the forward pass.
        self.output_target: Any = check_output_target(options.get("output"))
        if self.output_target is not None:
            self.require(Capability.OUTPUT_TARGET)
        self._layer_info: dict[Any, list[LayerInfo]] = {}
        #: Shape of the last validated input batch; backends that need a probe forward to learn
        #: layer output shapes (torch) use it.
        self.last_input_shape: tuple[int, ...] | None = None
        #: Output class count per input size (H, W, C), see :meth:`class_count`.
        self._class_counts: dict[tuple[int, ...], int] = {}

    @property
    def model(self) -> Any:
        """The model this backend drives."""
        model = self._model_ref()
        if model is None:
            raise ModelError("model: the model this backend drove has been garbage collected")
        return model

    # ---- identity -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def claims(cls, model: Any) -> bool:
        """True if this backend drives ``model``. Must not import a framework that is not loaded."""

    @classmethod
    def framework_version(cls) -> str | None:
        """Version of the framework this backend drives, or None if it is not installed."""
        return None

    def require(self, capability: str) -> None:
        """Raise :class:`CapabilityError` unless this backend declares ``capability``."""
        if capability not in self.capabilities:
            raise CapabilityError(
                f"backend {self.name!r} does not provide the {capability!r} capability "
                f"(it provides: {', '.join(sorted(self.capabilities))})"
            )

    # ---- public, validated API -------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Model output for ``x`` (N, H, W, C): (N, K) scores (pre-softmax where the backend can)."""
        self.require(Capability.FORWARD)
        return self._forward(self.check_x(x))

    def input_gradient(self, x: np.ndarray, objective: Objective, rule: Rule | None = None) -> Gradients:
        """Objective values (N,) and d(objective)/dx (N, H, W, C), without parameter gradients."""
        self.require(Capability.INPUT_GRADIENT)
        x = self.check_x(x)
        self._check_objective(objective, len(x))
        rule = self._check_rule(rule)
        if rule.lrp and objective.layers:
            raise InputError("objective: LRP explains an output objective (ClassScore, OutputWeighting, NativeCallable)")
        return self._input_gradient(x, objective, rule)

    def layer_activations(
        self, x: np.ndarray, layers: Sequence[str], *, include_output: bool = False
    ) -> dict[str, np.ndarray]:
        """Activations of ``layers`` (channels-last); the output too under :data:`OUTPUT` if asked."""
        self.require(Capability.LAYER_ACTIVATIONS)
        x = self.check_x(x)
        layers = self.check_layers(layers)
        return self._layer_activations(x, layers, include_output)

    def layer_gradients(
        self, x: np.ndarray, layers: Sequence[str], objective: Objective, rule: Rule | None = None
    ) -> LayerGradients:
        """Objective values, activations of ``layers`` and d(objective)/d(activation), with the
        backward pass stopped at the layers (nothing below them is differentiated)."""
        self.require(Capability.LAYER_GRADIENTS)
        x = self.check_x(x)
        layers = self.check_layers(layers)
        self._check_objective(objective, len(x))
        rule = self._check_rule(rule)
        if rule.lrp:
            raise InputError("rule: LRP rules give relevance at the input (input_gradient), not at layers")
        return self._layer_gradients(x, layers, objective, rule)

    def masked_scores(
        self,
        x: np.ndarray,
        masks: MaskSpec,
        baseline: float | np.ndarray = 0.0,
        *,
        sample_index: np.ndarray | None = None,
        objective: ClassScore | None = None,
    ) -> np.ndarray:
        """Outputs for the masked inputs ``x[s] * m + b * (1 - m)``, built on the backend's device.

        ``masks`` describes M masks; ``sample_index`` (M,) says which sample of ``x`` each mask
        applies to (all to sample 0 when x holds one image). ``baseline`` is a scalar, one image
        (H, W, C) or one per sample (N, H, W, C). Returns (M, K) outputs, or (M,) objective
        values when ``objective`` (a per-mask :class:`ClassScore`) is given.
        """
        self.require(Capability.MASKED_SCORES)
        x = self.check_x(x)
        if not isinstance(masks, LowResMasks | FeatureGroups | Boxes):
            raise InputError(
                f"masks: expected LowResMasks, FeatureGroups or Boxes, got {type(masks).__name__}"
            )
        m = len(masks)
        if sample_index is None:
            if len(x) != 1:
                raise InputError(
                    f"sample_index: required when x holds {len(x)} samples (one index per mask)"
                )
            sample_index = np.zeros(m, dtype=np.int64)
        sample_index = np.asarray(sample_index, dtype=np.int64)
        if sample_index.shape != (m,) or (m and (sample_index.min() < 0 or sample_index.max() >= len(x))):
            raise InputError(f"sample_index: expected {m} indices in [0, {len(x)}), got {sample_index}")
        baseline = self._check_baseline(baseline, x)
        if objective is not None:
            if not isinstance(objective, ClassScore):
                raise InputError("objective: masked_scores takes a ClassScore objective or None")
            objective.targets(m)
        return self._masked_scores(x, masks, baseline, sample_index, objective)

    def layer_masked_scores(
        self,
        x: np.ndarray,
        layer: str,
        keep: np.ndarray,
        *,
        sample_index: np.ndarray | None = None,
        objective: ClassScore | None = None,
    ) -> np.ndarray:
        """Outputs when the activation of ``layer`` for sample ``sample_index[m]`` is multiplied
        channel-wise by ``keep[m]`` (M, C) and the forward pass continues (Ablation-CAM).

        Returns (M, K) outputs, or (M,) objective values for a per-mask :class:`ClassScore`.
        """
        self.require(Capability.LAYER_MASKED_SCORES)
        x = self.check_x(x)
        (layer,) = self.check_layers([layer])
        keep = np.asarray(keep, dtype=np.float32)
        shape = self.layer_info(layer).output_shape
        if keep.ndim != 2 or (shape is not None and keep.shape[1] != shape[-1]):
            raise InputError(
                f"keep: expected (M, channels) = (M, {shape[-1] if shape else 'C'}) for layer "
                f"{layer!r}, got shape {keep.shape}"
            )
        m = len(keep)
        if sample_index is None:
            if len(x) != 1:
                raise InputError(f"sample_index: required when x holds {len(x)} samples")
            sample_index = np.zeros(m, dtype=np.int64)
        sample_index = np.asarray(sample_index, dtype=np.int64)
        if sample_index.shape != (m,) or (m and (sample_index.min() < 0 or sample_index.max() >= len(x))):
            raise InputError(f"sample_index: expected {m} indices in [0, {len(x)}), got {sample_index}")
        if objective is not None:
            if not isinstance(objective, ClassScore):
                raise InputError("objective: layer_masked_scores takes a ClassScore objective or None")
            objective.targets(m)
        return self._layer_masked_scores(x, layer, keep, sample_index, objective)

    def deeplift_gradient(self, x: np.ndarray, reference: np.ndarray, objective: Objective) -> Gradients:
        """DeepLIFT multipliers (Shrikumar et al. 2017, arXiv:1704.02685, rescale rule) of the
        objective with respect to x against ``reference``: ``values`` (N,) the objective at x and
        ``gradient`` m (N, H, W, C) such that ``(x - reference) * m`` is the DeepLIFT attribution.

        The backward pass replaces every ReLU's (and other element-wise nonlinearity's) local
        gradient by (f(z) - f(z')) / (z - z'), z' from the reference pass (the true gradient where
        |z - z'| < 1e-10), and max pooling by Captum's rule; linear layers are differentiated as
        they are. ``reference``: one image (H, W, C) for every sample or one per sample.
        """
        self.require(Capability.DEEPLIFT)
        x = self.check_x(x)
        reference = self._check_baseline(reference, x, "reference")
        if reference.ndim == 0:
            reference = np.full_like(x, float(reference))
        reference = np.ascontiguousarray(np.broadcast_to(reference, x.shape), dtype=np.float32)
        self._check_objective(objective, len(x))
        return self._deeplift_gradient(x, reference, objective)

    def replaced_layer_gradients(
        self, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
    ) -> LayerGradients:
        """Run the model on ``x`` with the output of ``layer`` replaced by ``activation`` (shaped
        like that output, channels-last, one per sample) and the forward pass continued from it;
        return the objective values, ``{layer: activation}`` and d(objective)/d(activation).
        Layer integrated gradients interpolates a layer's activations this way (Captum's
        ``LayerIntegratedGradients``)."""
        self.require(Capability.LAYER_REPLACE)
        x = self.check_x(x)
        (layer,) = self.check_layers([layer])
        activation = np.asarray(activation, dtype=np.float32)
        shape = self.layer_info(layer).output_shape
        if activation.ndim < 1 or activation.shape[0] != len(x) or (
            shape is not None and not _fits(activation.shape[1:], shape)
        ):
            raise InputError(
                f"activation: expected one activation of layer {layer!r} per sample, shape "
                f"({len(x)}, {', '.join(map(str, shape)) if shape else '...'}), got {activation.shape}"
            )
        if not np.all(np.isfinite(activation)):
            raise InputError("activation: contains NaN or infinite values")
        self._check_objective(objective, len(x))
        if objective.layers:
            raise InputError("objective: replaced_layer_gradients takes an output objective (ClassScore, ...)")
        return self._replaced_layer_gradients(x, layer, np.ascontiguousarray(activation), objective)

    def with_weights(self, weights: dict[str, dict[str, np.ndarray]]) -> Backend:
        """A backend of the same kind over a *copy* of the model in which the named layers'
        weights are replaced (``{layer: {"kernel": ..., "bias": ...}}``, canonical layout as
        :meth:`layer_weights` returns them, same shapes). The user's model is not touched. Used by
        the model-randomisation sanity check (Adebayo et al. 2018)."""
        self.require(Capability.REWEIGHT)
        names = self.check_layers(list(weights))
        checked: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            current = self.layer_weights(name)
            given = weights[name]
            if set(given) - set(current):
                raise InputError(
                    f"weights: layer {name!r} has weights {sorted(current)}, got {sorted(given)}"
                )
            checked[name] = {}
            for key, value in given.items():
                arr = np.asarray(value, dtype=np.float32)
                if arr.shape != current[key].shape:
                    raise InputError(
                        f"weights: {name!r} {key} expected shape {current[key].shape}, got {arr.shape}"
                    )
                checked[name][key] = arr
        return self._with_weights(checked)

    def layers(self) -> list[LayerInfo]:
        """Every named layer in execution order: name, type, output shape, parameters, trainable."""
        key = self.last_input_shape[1:] if self.last_input_shape is not None else None
        if key not in self._layer_info:
            self._layer_info[key] = self._layers()
        return list(self._layer_info[key])

    def layer_names(self) -> list[str]:
        """Names that layer arguments accept."""
        return [info.name for info in self.layers()]

    def layer_info(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of one layer (clear error for an unknown name)."""
        self.check_layers([name])
        return next(info for info in self.layers() if info.name == name)

    def layer_weights(self, name: str) -> dict[str, np.ndarray]:
        """A layer's weights, canonical layout: conv kernel (kh, kw, in, out), dense (in, out).

        For a parameter-free ReLU that directly follows a conv or dense layer (the layer a fused
        Keras ``Conv2D(activation="relu")`` maps to in torch), backends return that layer's weights.
        """
        self.require(Capability.LAYER_WEIGHTS)
        (name,) = self.check_layers([name])
        return self._layer_weights(name)

    def layer_config(self, name: str) -> dict[str, Any]:
        """A layer's configuration in the framework-neutral vocabulary of
        :mod:`polyviz.models.spec`: ``{"kind": "conv2d", "filters", "kernel_size", "strides",
        "padding", "dilation", "activation", "use_bias"}``, ``{"kind": "dense", "units",
        "activation", "use_bias"}``, pools, dropout, ...; ``{"kind": "other", "type": ...}`` for
        anything else. A ReLU that directly follows a conv or dense layer answers that layer with
        ``activation="relu"``, as :meth:`layer_weights` does."""
        (name,) = self.check_layers([name])
        return self._layer_config(name)

    def as_numpy(self, x: Any) -> np.ndarray:
        """A framework tensor or array-like as a numpy array (same layout). Floating values come
        back as float32; other dtypes (integers, bool, complex) are kept as they are, so that
        :meth:`check_input` can refuse them instead of converting them silently."""
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        return arr

    def check_input(
        self, x: Any, layout: str | None = None, name: str = "x", *, range_warning: bool = True
    ) -> tuple[np.ndarray, Layout]:
        """The caller's image or batch, validated once, as a float32 channels-last batch and the
        caller's :class:`~polyviz.layout.Layout` (to return results in).

        This is the one entry check of every public function that takes images (``explain``,
        the metrics, ``activations``, the optimisation methods). ``x`` must be a real floating
        array or framework tensor, one image or a batch, in ``layout`` (default: the backend's
        native layout). Integer and bool arrays are refused: a uint8 image is in [0, 255] and most
        models expect [0, 1], so converting it is the caller's decision (``x.astype("float32") /
        255``), not a guess made here. Values far outside the declared preprocessing's
        ``input_range`` give one :class:`~polyviz.errors.InputRangeWarning` (unless
        ``range_warning`` is False: callers that enforce a range themselves).
        """
        if layout is None:
            layout = self.native_layout
        if layout not in LAYOUTS:
            raise InputError(f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        arr = self._raw_input(x, name)
        if arr.ndim not in (3, 4):
            raise InputError(
                f"{name}: expected one image ({layout[1:]}) or a batch ({layout}), got rank {arr.ndim} "
                f"with shape {arr.shape}"
            )
        self._check_channels(arr.shape, layout, name)
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(np.float32, copy=False)
        xs, caller = to_channels_last(arr, layout)
        xs = self.check_x(xs, name)
        if range_warning and not _RANGE_CHECKED.get():
            self._check_range(xs, name)
        return xs, caller

    def _raw_input(self, x: Any, name: str) -> np.ndarray:
        """``x`` as a real floating numpy array (any float precision), or a one-line InputError."""
        expected = "a float image array (numpy array or framework tensor)"
        if x is None or isinstance(x, str | bytes | os.PathLike):
            what = "None" if x is None else f"a {type(x).__name__} ({str(x)[:60]!r})"
            hint = " Load image files with polyviz.loading.load_images(paths)." if x is not None else ""
            raise InputError(f"{name}: expected {expected}, got {what}.{hint}")
        try:
            arr = self.as_numpy(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).split("\n")[0][:120]
            raise InputError(
                f"{name}: expected {expected}, got a {type(x).__name__} that is not a rectangular numeric array ({reason})"
            ) from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{name}: expected {expected}, got {type(x).__name__}")
        kind = arr.dtype.kind
        if kind in "iu":
            raise InputError(
                f"{name}: integer images ({arr.dtype}) are not accepted; convert to float in the "
                "range the model expects, e.g. x.astype('float32') / 255 for [0, 1]"
            )
        if kind == "b":
            raise InputError(f"{name}: expected {expected}, got a bool array; convert it to float")
        if kind == "c":
            raise InputError(f"{name}: expected real values, got a complex array ({arr.dtype})")
        if kind != "f":
            raise InputError(f"{name}: expected {expected}, got an array of dtype {arr.dtype}")
        return arr

    def _check_channels(self, shape: tuple[int, ...], layout: str, name: str) -> None:
        """The channel axis of the caller's array in the caller's layout, with a layout hint that
        names the shape the caller passed."""
        expected = self.input_shape
        if expected is None or expected[-1] is None:
            return
        c = int(expected[-1])
        batched = len(shape) == 4
        axis = (1 if batched else 0) if layout == "NCHW" else len(shape) - 1
        if shape[axis] == c:
            return
        dims = layout if batched else layout[1:]
        want = ", ".join(str(c) if d == "C" else d for d in dims)
        hint = ""
        other = "NHWC" if layout == "NCHW" else "NCHW"
        other_axis = (1 if batched else 0) if other == "NCHW" else len(shape) - 1
        if shape[other_axis] == c:
            kind = "channels-last" if other == "NHWC" else "channels-first"
            hint = f" It looks {kind} ({other if batched else other[1:]}): pass layout={other!r}."
        raise InputError(
            f"{name}: expected {layout if batched else layout[1:]} ({want}) for this {self.name} model, "
            f"got shape {tuple(shape)}.{hint}"
        )

    def _check_range(self, xs: np.ndarray, name: str) -> None:
        """One :class:`InputRangeWarning` when ``xs`` lies far outside [0, input_range] of the
        declared preprocessing (by more than half the range)."""
        pre = self.preprocess
        top = None if pre is None else getattr(pre, "input_range", None)
        if top is None:
            return
        lo, hi = float(xs.min()), float(xs.max())
        margin = 0.5 * top
        if lo < -margin or hi > top + margin:
            warnings.warn(
                f"{name}: values in [{lo:.4g}, {hi:.4g}], far outside the range [0, {top:g}] that the "
                f"preprocessing expects; rescale x (e.g. x / 255 for 8-bit images into [0, 1]) or "
                "declare its range (Preprocess.torchvision(input_range=...))",
                InputRangeWarning,
                stacklevel=3,
            )

    def class_count(self, x: np.ndarray) -> int:
        """The size of the model output's class axis (its last axis) for inputs shaped like the
        channels-last batch ``x``: :meth:`_static_class_count` where the backend knows it without
        running the model, else one forward pass of one sample, cached per input size."""
        static = self._static_class_count()
        if static is not None:
            return int(static)
        key = tuple(x.shape[1:])
        cache = self._class_counts
        if key not in cache:
            self.require(Capability.FORWARD)
            out = np.asarray(self.forward(np.ascontiguousarray(x[:1])))
            if out.ndim < 2:
                raise TargetError(f"target: the model output has shape {out.shape}, no class axis")
            cache[key] = int(out.shape[-1])
        return cache[key]

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) the model expects, channels-last, where the backend knows it."""
        return None

    # ---- validation ------------------------------------------------------------------------
    def check_x(self, x: Any, name: str = "x") -> np.ndarray:
        """Validate a channels-last batch: rank 4, channel count, finite values; float32 out."""
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
        expected = self.input_shape
        if arr.ndim != 4:
            raise InputError(
                f"{name}: expected a channels-last batch of rank 4 (N, H, W, C), got rank "
                f"{arr.ndim} with shape {arr.shape}"
            )
        if arr.shape[0] == 0:
            raise InputError(f"{name}: the batch is empty")
        if 0 in arr.shape[1:]:
            raise InputError(
                f"{name}: expected non-empty images, got (height, width, channels) = {tuple(arr.shape[1:])}"
            )
        if expected is not None:
            c = expected[-1]
            if arr.shape[-1] != c:
                hint = ""
                if arr.shape[1] == c:
                    hint = " It looks channels-first (N, C, H, W): convert it or pass layout='NCHW'."
                raise InputError(
                    f"{name}: expected channels-last (N, H, W, {c}), got shape {arr.shape}.{hint}"
                )
            h, w = expected[0], expected[1]
            if (h is not None and arr.shape[1] != h) or (w is not None and arr.shape[2] != w):
                raise InputError(
                    f"{name}: expected spatial size {h}x{w} for this model, got {arr.shape[1]}x{arr.shape[2]}"
                )
        if not np.all(np.isfinite(arr)):
            bad = "NaN" if np.isnan(arr).any() else "infinite"
            raise InputError(f"{name}: contains {bad} values")
        self.last_input_shape = tuple(arr.shape)
        return np.ascontiguousarray(arr)

    def check_layers(self, layers: Sequence[str] | str) -> list[str]:
        """Validate layer names (a name or a list of names); unknown names get a did-you-mean."""
        if isinstance(layers, str):
            layers = [layers]
        known = self.layer_names()
        known_set = set(known)
        out = []
        for layer in layers:
            if not isinstance(layer, str):
                raise LayerError(f"layer: expected a layer name (str), got {type(layer).__name__}")
            if layer not in known_set:
                raise LayerError(
                    f"layer: no layer named {layer!r} in this {self.name} model."
                    f"{did_you_mean(layer, known)} See polyviz.summary(model) for the names."
                )
            out.append(layer)
        if not out:
            raise LayerError("layer: expected at least one layer name")
        return out

    def _check_rule(self, rule: Rule | None) -> Rule:
        if rule is None:
            return Rule()
        if not isinstance(rule, Rule):
            raise InputError(f"rule: expected a polyviz.protocol.Rule, got {type(rule).__name__}")
        if rule.relu is not None:
            self.require(Capability.RELU_RULES)
        if rule.lrp:
            self.require(Capability.LRP)
            self.check_layers([name for name, _ in rule.lrp])
        return rule

    def _check_objective(self, objective: Any, n: int) -> None:
        if not isinstance(objective, _OBJECTIVE_TYPES):
            raise InputError(
                f"objective: expected one of {', '.join(t.__name__ for t in _OBJECTIVE_TYPES)}, "
                f"got {type(objective).__name__}"
            )
        if isinstance(objective, NativeCallable):
            self.require(Capability.CALLABLE_OBJECTIVE)
            if not callable(objective.fn):
                raise InputError("objective: NativeCallable.fn must be callable")
        if isinstance(objective, ClassScore):
            objective.targets(n)
        if objective.layers:
            (layer,) = self.check_layers(objective.layers)
            shape = self.layer_info(layer).output_shape
            if shape is not None:
                _check_layer_objective(objective, tuple(shape), n)

    def _check_baseline(self, baseline: Any, x: np.ndarray, name: str = "baseline") -> np.ndarray:
        try:
            b = np.asarray(baseline, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a number or an array, got {type(baseline).__name__}") from None
        if b.ndim == 0:
            if not np.isfinite(b):
                raise InputError(f"{name}: is NaN or infinite")
            return b
        if b.shape == x.shape[1:] or b.shape == x.shape:
            if not np.all(np.isfinite(b)):
                raise InputError(f"{name}: contains NaN or infinite values")
            return b
        raise InputError(
            f"{name}: expected a scalar, one image {x.shape[1:]} or one per sample {x.shape}, "
            f"got shape {b.shape}"
        )

    # ---- framework hooks -------------------------------------------------------------------
    @abstractmethod
    def _forward(self, x: np.ndarray) -> np.ndarray: ...

    def _static_class_count(self) -> int | None:
        """The output's class count when the model declares it (a static output shape), else
        None (then :meth:`class_count` runs one sample)."""
        return None

    def _input_gradient(self, x: np.ndarray, objective: Objective, rule: Rule) -> Gradients:
        raise NotImplementedError

    def _layer_activations(
        self, x: np.ndarray, layers: list[str], include_output: bool
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _layer_gradients(
        self, x: np.ndarray, layers: list[str], objective: Objective, rule: Rule
    ) -> LayerGradients:
        raise NotImplementedError

    def _masked_scores(
        self,
        x: np.ndarray,
        masks: MaskSpec,
        baseline: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
    ) -> np.ndarray:
        """Default: expand the masks in numpy and call :meth:`_forward` (backends override this
        to build the batch on their device)."""
        n, h, w, _ = x.shape
        full = materialize_masks(masks, h, w)[..., None]
        base = baseline if baseline.ndim < 4 else baseline[sample_index]
        batch = x[sample_index] * full + base * (1.0 - full)
        out = self._forward(batch.astype(np.float32))
        if objective is None:
            return out
        return out[np.arange(len(out)), objective.targets(len(out))]

    def _layer_masked_scores(
        self,
        x: np.ndarray,
        layer: str,
        keep: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
    ) -> np.ndarray:
        raise NotImplementedError

    def _deeplift_gradient(self, x: np.ndarray, reference: np.ndarray, objective: Objective) -> Gradients:
        raise NotImplementedError

    def _replaced_layer_gradients(
        self, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
    ) -> LayerGradients:
        raise NotImplementedError

    def _with_weights(self, weights: dict[str, dict[str, np.ndarray]]) -> Backend:
        raise NotImplementedError

    @abstractmethod
    def _layers(self) -> list[LayerInfo]:
        """Every layer in execution order. Backends that must run a probe forward to learn output
        shapes use ``self.last_input_shape`` (or their own default) for its size."""

    # ---- model building, conversion and safety (optional) ----------------------------------
    @classmethod
    def build(cls, spec: Any, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, str]]:
        """Build a model of this framework from a :class:`polyviz.models.spec.NetworkSpec` and
        canonical weights. Returns the model and a map {spec layer name: native layer name whose
        output equals that spec layer's output}; spec layers with no equal native layer (torch's
        flatten of a (C, H, W) map is ordered differently) are left out. Capability ``build``."""
        raise CapabilityError(f"backend {cls.name!r} does not provide the 'build' capability")

    @classmethod
    def export(cls, model: Any, **options: Any) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, str]]:
        """Read a VGG-style model back as (NetworkSpec, canonical weights, {spec layer name:
        native layer name whose output equals it}). Capability ``build``."""
        raise CapabilityError(f"backend {cls.name!r} does not provide the 'build' capability")

    @classmethod
    def vgg(cls, name: str, weights: Any = None) -> Any:
        """VGG16/VGG19 of this framework, ``weights`` None | "imagenet" | a file path. Capability ``zoo``."""
        raise CapabilityError(f"backend {cls.name!r} does not provide the 'zoo' capability")

    @classmethod
    def state_fingerprint(cls, model: Any) -> dict[str, Any]:
        """Everything a call must leave unchanged (weights, hooks, training flags, requires_grad,
        layer activations), as a dict of plain values and numpy arrays, for the safety tests."""
        raise NotImplementedError

    def _layer_weights(self, name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _layer_config(self, name: str) -> dict[str, Any]:
        raise CapabilityError(f"backend {self.name!r} does not describe layer configurations")

