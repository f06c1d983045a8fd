"""One probe forward pass with hooks on every module: execution order, output shapes, call counts.

The probe runs on a zero input of the size the backend is asked about (eval mode, no grad, hooks
removed and training flags restored afterwards, under the model's lock, with hooks that count only
this thread's calls: see :mod:`polyviz_torch._threads`). It feeds ``TorchBackend.layers()``, the
"called twice" check of layer requests, and the layout of ``Linear`` layers fed by a flatten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

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


def _shape(output: object) -> tuple[int, ...] | None:
    """Channels-last shape without the batch axis, for a tensor output; None otherwise."""
    if not isinstance(output, torch.Tensor) or output.ndim < 1:
        return None
    shape = tuple(int(d) for d in output.shape[1:])
    if output.ndim == 4:
        c, h, w = shape
        return (h, w, c)
    return shape


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def leaf_trace(model: nn.Module, size: tuple[int, int, int]) -> tuple[list[tuple[str, nn.Module, tuple, tuple]], Exception | None]:
    """Run a zero batch of (H, W, C) ``size`` and list the modules as they start, with the NCHW
    input and output shapes of their first call: [(path, module, in_shape, out_shape)]."""
    records, error = _run(model, size)
    return [(name, module, ins, outs) for name, module, ins, outs, _, _ in records], error


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

        return hook

    error: Exception | None = None
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            for name, module in modules:
                add_hook(handles, module, pre_hook(name), pre=True)
                add_hook(handles, module, post_hook(name))
            with torch.no_grad():
                model(torch.zeros((1, c, h, w), device=device, dtype=dtype))
        except Exception as exc:  # the probe is best effort: shapes become unknown
            error = exc
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in flags:
                module.training = flag
    records = []
    for name in order:
        module, ins, outs, output, *number = first[name]
        tensor = number[0] if number and counts[name] == 1 else None  # a module run twice: ambiguous
        records.append((name, module, ins, outs, (_shape(output), counts[name]), tensor))
    return records, error


def probe(model: nn.Module, size: tuple[int, int, int]) -> Probe:
    """Probe ``model`` at channels-last ``size`` (H, W, C)."""
    records, error = _run(model, size)
    infos: list[LayerInfo] = []
    calls: dict[str, int] = {}
    seen = set()
    for name, module, _, _, (shape, count), tensor in records:
        seen.add(name)
        calls[name] = count
        infos.append(_info(name, module, shape, tensor))
    for name, module in model.named_modules():
        if name and name not in seen:
            infos.append(_info(name, module, None))
    flattened: dict[str, tuple[int, int, int]] = {}
    fused: dict[str, str] = {}
    previous: tuple | None = None
    previous_leaf: tuple[str, nn.Module] | None = None
    for name, module, _ins, outs, _, _ in records:
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
    return Probe(infos, calls, flattened, fused, error is None)


def _info(name: str, module: nn.Module, shape: tuple[int, ...] | None, tensor: int | None = None) -> LayerInfo:
    params = list(module.parameters())
    return LayerInfo(
        name=name,
        type=type(module).__name__,
        output_shape=shape,
        params=int(sum(p.numel() for p in params)),
        trainable=any(p.requires_grad for p in params),
        tensor=tensor,
    )
