"""One probe forward pass with hooks on every module: execution order, output shapes, call counts.

The probe runs on a zero input of the size the backend is asked about (eval mode, no grad, hooks
removed and training flags restored afterwards, under the model's lock, with hooks that count only
this thread's calls: see :mod:`polyviz_torch._threads`). It feeds ``TorchBackend.layers()``, the
"called twice" check of layer requests, and the layout of ``Linear`` layers fed by a flatten.

**Layouts are detected, not guessed** (issue 14). During the probe a ``TorchFunctionMode``
(:class:`_AxisTracker`) follows the axes of every tensor from the NCHW input: channels-first ops
(conv, pooling, batch norm, interpolation) give NCHW; ``permute``/``transpose``/``movedim`` permute
the axis letters (torchvision ConvNeXt's and Swin's ``Permute([0, 2, 3, 1])`` gives NHWC); every
other op keeps the letters of its first 4-D input (``linear`` and ``layer_norm`` on an NHWC tensor
stay NHWC); a tensor reshaped into or out of 4-D keeps the letters of the 4-D tensor it came from
(Swin's window partition and reverse). A module may also declare its output's layout with a class
attribute ``__polyviz_layout__ = "NHWC"``. A 4-D output whose axes cannot be followed has layout
None and is refused by layer methods rather than read as NCHW.

**Token sequences** (ViT): a 3-D output (N, T, C) produced after the last 4-D map (the patch
embedding, grid h x w) with T = prefix + h * w (0 <= prefix <= 16) is a token map: layer methods
see its last h * w tokens as an (h, w, C) grid, the prefix (class, register, distillation tokens)
dropped (see :func:`polyviz.layout.mark_tokens`, shared with the Keras backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from polyviz.layout import axes_order, mark_tokens
from polyviz.protocol import LayerInfo
from polyviz_torch._threads import add_hook, model_lock

__all__ = ["Probe", "probe", "leaf_trace"]


@dataclass
class Probe:
    """What one probe forward learnt about a model at one input size."""

    infos: list[LayerInfo]
    #: Times each module ran in the probe forward (absent: it did not run, or the probe failed).
    calls: dict[str, int] = field(default_factory=dict)
    #: For a ``Linear`` fed by a flattened (C, H, W) map: that map's (H, W, C).
    flattened_from: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: For an activation module run right after a Conv2d/Linear: that layer's path (fused layer).
    fused_with: dict[str, str] = field(default_factory=dict)
    #: True when the probe forward ran to the end.
    ok: bool = True

    def info(self, name: str) -> LayerInfo | None:
        """The :class:`LayerInfo` of module ``name`` (None when unknown)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = {info.name: info for info in self.infos}
        return index.get(name)


def _shape(output: object, layout: str | None = "NCHW") -> tuple[int, ...] | None:
    """Channels-last shape without the batch axis, for a tensor output; None otherwise (and for a
    4-D output whose layout is unknown)."""
    if not isinstance(output, torch.Tensor) or output.ndim < 1:
        return None
    shape = tuple(int(d) for d in output.shape[1:])
    if output.ndim == 4:
        if layout is None or len(layout) != 4:
            return None
        _, h, w, c = axes_order(layout)
        return (shape[h - 1], shape[w - 1], shape[c - 1])
    return shape


#: torch functions whose 4-D output is channels-first whatever their input's letters.
_CHANNELS_FIRST_OPS = frozenset({
    "conv2d", "conv_transpose2d", "_convolution", "convolution", "max_pool2d", "max_pool2d_with_indices",
    "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "lp_pool2d", "batch_norm", "instance_norm",
    "group_norm", "interpolate", "upsample", "upsample_bilinear", "upsample_nearest", "pixel_shuffle",
    "pixel_unshuffle", "fractional_max_pool2d", "local_response_norm", "channel_shuffle",
})
#: Reshapes: a 4-D tensor made by one of these from a 3-, 5- or 6-D tensor keeps the letters of the
#: map that tensor came from (Swin's window reverse, ShuffleNet's channel shuffle).
_RESHAPES = frozenset({"view", "reshape", "unflatten", "view_as", "reshape_as", "contiguous", "clone", "flatten"})
_PERMUTES = frozenset({"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "transpose_"})


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


class _AxisTracker(TorchFunctionMode):
    """Follows the axis letters of every tensor of one forward pass (see the module docstring).

    ``letters[id(t)]`` is a permutation of "NCHW" for a 4-D tensor whose axes are known; for other
    ranks it is the letters of the 4-D tensor it descends from (so a reshape back to 4-D recovers
    them). Every tagged tensor is kept alive in ``keep`` for the probe, so no id is reused."""

    def __init__(self) -> None:
        super().__init__()
        self.letters: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []

    def tag(self, t: torch.Tensor, letters: str) -> None:
        self.letters[id(t)] = letters
        self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._follow(getattr(func, "__name__", ""), args, kwargs, out)
        except Exception:  # noqa: BLE001 - tracking is best effort: an untracked tensor has layout None
            pass
        return out

    def _follow(self, name: str, args: tuple, kwargs: dict, out: object) -> None:
        outs = _tensors(out)
        if not outs:
            return
        ins = [t for t in _tensors(args) + _tensors(kwargs) if id(t) in self.letters]
        if name.endswith("_") and name != "transpose_":
            name = name[:-1]
        first4 = next((t for t in ins if t.ndim == 4), None)
        source = first4 if first4 is not None else (ins[0] if ins else None)
        letters = self.letters.get(id(source)) if source is not None else None
        for t in outs:
            if t.ndim == 4 and name in _CHANNELS_FIRST_OPS:
                self.tag(t, "NCHW")
            elif letters is None:
                continue
            elif t.ndim == 4 and first4 is not None:
                self.tag(t, _permuted(letters, name, args, kwargs) if name in _PERMUTES else letters)
            elif t.ndim == 4 and name not in _RESHAPES:
                continue  # a map made from no map (a factory times a scalar): unknown, not guessed
            else:
                self.tag(t, letters)


def _permuted(letters: str, name: str, args: tuple, kwargs: dict) -> str:
    """The axis letters after ``name`` (permute / transpose / movedim) of a 4-D tensor."""
    rest = [a for a in args[1:]]
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
        dims = kwargs.get("dims", dims)
        return "".join(letters[int(d) % 4] for d in dims)
    if name in ("movedim", "moveaxis"):
        src, dst = (rest + [kwargs.get("source"), kwargs.get("destination")])[:2]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        order: list[int | None] = [None] * 4
        for s_, d_ in zip(src, dst):
            order[int(d_) % 4] = int(s_) % 4
        remaining = iter(i for i in range(4) if i not in {int(s_) % 4 for s_ in src})
        return "".join(letters[o if o is not None else next(remaining)] for o in order)
    a, b = (rest + [kwargs.get("dim0"), kwargs.get("dim1")])[:2]
    chars = list(letters)
    chars[int(a) % 4], chars[int(b) % 4] = chars[int(b) % 4], chars[int(a) % 4]
    return "".join(chars)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def leaf_trace(model: nn.Module, size: tuple[int, int, int]) -> tuple[list[tuple[str, nn.Module, tuple, tuple]], Exception | None]:
    """Run a zero batch of (H, W, C) ``size`` and list the modules as they start, with the NCHW
    input and output shapes of their first call: [(path, module, in_shape, out_shape)]."""
    records, error = _run(model, size)
    return [(name, module, ins, outs) for name, module, ins, outs, *_ in records], error


def _run(model: nn.Module, size: tuple[int, int, int]) -> tuple[list, Exception | None]:
    device, dtype = _device_dtype(model)
    h, w, c = size
    order: list[str] = []
    first: dict[str, list] = {}
    counts: dict[str, int] = {}
    #: (id, version) of each output tensor -> its number in production order; the tensors are kept
    #: alive by ``first`` so no id is reused. An in-place op bumps the version: a new tensor.
    numbers: dict[tuple[int, int], int] = {}
    handles = []
    modules = [(name, m) for name, m in model.named_modules() if name]
    tracker = _AxisTracker()

    def pre_hook(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            counts[name] = counts.get(name, 0) + 1
            if name not in first:
                order.append(name)
                x = inputs[0] if inputs else None
                first[name] = [module, tuple(x.shape) if isinstance(x, torch.Tensor) else None, None, None]

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            record = first.get(name)
            if record is not None and record[3] is None:
                record[2] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                record[3] = output
                if isinstance(output, torch.Tensor):
                    record.append(numbers.setdefault((id(output), output._version), len(numbers)))
                    declared = getattr(type(module), "__polyviz_layout__", None)
                    if declared is not None and output.ndim == 4:
                        tracker.tag(output, str(declared))
                    record.append(tracker.letters.get(id(output)))

        return hook

    error: Exception | None = None
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            for name, module in modules:
                add_hook(handles, module, pre_hook(name), pre=True)
                add_hook(handles, module, post_hook(name))
            with torch.no_grad(), tracker:
                x = torch.zeros((1, c, h, w), device=device, dtype=dtype)
                tracker.tag(x, "NCHW")
                model(x)
        except Exception as exc:  # the probe is best effort: shapes become unknown
            error = exc
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in flags:
                module.training = flag
    records = []
    for name in order:
        module, ins, outs, output, *extra = first[name]
        number, letters = (extra + [None, None])[:2]
        tensor = number if counts[name] == 1 else None  # a module run twice: ambiguous
        records.append((name, module, ins, outs, (_shape(output, letters), counts[name]), tensor, letters))
    tracker.keep.clear()
    return records, error


def probe(model: nn.Module, size: tuple[int, int, int]) -> Probe:
    """Probe ``model`` at channels-last ``size`` (H, W, C)."""
    records, error = _run(model, size)
    infos: list[LayerInfo] = []
    calls: dict[str, int] = {}
    seen = set()
    for name, module, _, _, (shape, count), tensor, letters in records:
        seen.add(name)
        calls[name] = count
        infos.append(_info(name, module, shape, tensor, letters))
    for name, module in model.named_modules():
        if name and name not in seen:
            infos.append(_info(name, module, None))
    flattened: dict[str, tuple[int, int, int]] = {}
    fused: dict[str, str] = {}
    previous: tuple | None = None
    previous_leaf: tuple[str, nn.Module] | None = None
    for name, module, _ins, outs, *_ in records:
        if next(module.children(), None) is not None:
            continue  # containers: only leaves carry the data flow
        if isinstance(module, nn.ReLU) and previous_leaf is not None:
            if isinstance(previous_leaf[1], nn.Conv2d | nn.Linear):
                fused[name] = previous_leaf[0]
        previous_leaf = (name, module)
        if isinstance(module, nn.Linear) and previous is not None and len(previous) == 4:
            _, c, h, w = previous
            if c * h * w == module.in_features and h * w > 1:
                flattened[name] = (h, w, c)
        if not isinstance(module, nn.Flatten | nn.Dropout | nn.Identity) and outs is not None:
            previous = outs
    return Probe(mark_tokens(infos), calls, flattened, fused, error is None)


def _info(
    name: str, module: nn.Module, shape: tuple[int, ...] | None, tensor: int | None = None, letters: Any = None
) -> LayerInfo:
    params = list(module.parameters())
    layout = letters if shape is not None and len(shape) == 3 else None
    return LayerInfo(
        name=name,
        type=type(module).__name__,
        output_shape=shape,
        params=int(sum(p.numel() for p in params)),
        trainable=any(p.requires_grad for p in params),
        tensor=tensor,
        layout=layout,
    )
