"""A copy of a torch model with some layers' weights replaced (``Backend.with_weights``)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from polyviz.errors import InputError, ModelError

__all__ = ["reweighted_copy"]


def _set(param: torch.Tensor | None, value: np.ndarray, what: str) -> None:
    if param is None:
        raise InputError(f"weights: {what} has no such parameter")
    tensor = torch.as_tensor(np.ascontiguousarray(value)).to(device=param.device, dtype=param.dtype)
    if tuple(tensor.shape) != tuple(param.shape):
        raise InputError(f"weights: {what} expected shape {tuple(param.shape)}, got {tuple(tensor.shape)}")
    with torch.no_grad():
        param.copy_(tensor)


def reweighted_copy(model: nn.Module, weights: dict[str, dict[str, np.ndarray]], probe: Any) -> nn.Module:
    """``copy.deepcopy(model)`` with the named layers' weights replaced.

    ``weights`` holds canonical arrays, as :func:`polyviz_torch._impl.layer_weights` returns them:
    a Conv2d kernel (kh, kw, in, out) becomes ``weight`` (out, in, kh, kw); a Linear kernel (in,
    out) becomes ``weight`` (out, in), its rows reordered from (H, W, C) to torch's (C, H, W)
    flatten order when a flattened map feeds it; a parameter-free ReLU fused with the conv/linear
    before it stands for that layer. Other modules take their parameters by (nested) name. The
    user's model is only read.
    """
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise ModelError(f"model: cannot copy a {type(model).__qualname__} with copy.deepcopy: {exc}") from exc
    modules = dict(clone.named_modules())
    for name, given in weights.items():
        module = modules[name]
        if not any(True for _ in module.parameters()) and name in probe.fused_with:
            name = probe.fused_with[name]
            module = modules[name]
        for key, value in given.items():
            what = f"{name!r} {key}"
            if isinstance(module, nn.Conv2d | nn.Linear) and key == "kernel":
                arr = np.asarray(value, np.float32)
                if isinstance(module, nn.Conv2d):
                    arr = arr.transpose(3, 2, 0, 1)
                else:
                    arr = arr.T
                    if name in probe.flattened_from:
                        h, w, c = probe.flattened_from[name]
                        arr = arr.reshape(arr.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(arr.shape[0], -1)
                _set(module.weight, arr, what)
            elif isinstance(module, nn.Conv2d | nn.Linear) and key == "bias":
                _set(module.bias, value, what)
            else:
                params = dict(module.named_parameters())
                _set(params.get(key), value, what)
    return clone
