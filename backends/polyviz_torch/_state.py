"""Everything a backend call must leave unchanged on a torch model, as comparable plain data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["state_fingerprint", "HOOK_DICTS"]

#: Per-module hook registries of ``nn.Module`` (those present in the installed torch are read).
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)

#: Global registries in ``torch.nn.modules.module``.
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def _array(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.cpu().numpy().copy()


def state_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Parameters and buffers (numpy copies), their ``requires_grad`` and ``.grad`` presence, every
    module's ``training`` flag and full-backward-hook flag, the ids of every hook registry per
    module and globally, and tensor hooks on parameters. Equal fingerprints: unchanged model."""
    fp: dict[str, Any] = {}
    for name, module in model.named_modules():
        fp[f"training:{name}"] = bool(module.training)
        fp[f"full_backward_hook:{name}"] = getattr(module, "_is_full_backward_hook", None)
        for attr in HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks is not None:
                fp[f"hooks:{name}:{attr}"] = tuple(hooks.keys())
    for name, param in model.named_parameters(remove_duplicate=False):
        fp[f"param:{name}"] = _array(param)
        fp[f"requires_grad:{name}"] = bool(param.requires_grad)
        fp[f"grad:{name}"] = None if param.grad is None else _array(param.grad)
        tensor_hooks = getattr(param, "_backward_hooks", None)
        fp[f"tensor_hooks:{name}"] = None if tensor_hooks is None else tuple(tensor_hooks.keys())
    for name, buffer in model.named_buffers(remove_duplicate=False):
        fp[f"buffer:{name}"] = _array(buffer)
    registry = torch.nn.modules.module
    for attr in GLOBAL_HOOK_DICTS:
        hooks = getattr(registry, attr, None)
        if hooks is not None:
            fp[f"global:{attr}"] = tuple(hooks.keys())
    return fp
