"""Continue a forward pass from given activations of one layer (layer integrated gradients).

:func:`replaced_layer_gradients` runs the model on ``x`` under :func:`guarded`, with a forward hook
on ``layer`` that discards the module's output and hands on a fresh leaf holding the given
activation (converted to the native layout) instead. Everything below the layer runs under
``no_grad``, so nothing there is differentiated; grad mode is switched on at the hook, and the
objective is differentiated with respect to the leaf only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polyviz.errors import LayerError
from polyviz.layout import TOKENS, from_grid_order
from polyviz.protocol import LayerGradients, Objective
from polyviz_torch._impl import Runner, guarded, to_numpy
from polyviz_torch._threads import add_hook

__all__ = ["replaced_layer_gradients"]


def _native(activation: torch.Tensor, info: Any) -> torch.Tensor:
    """Channels-last (N, H, W, C) -> the layer's own layout (NCHW for a conv, NHWC for a torch
    ConvNeXt/Swin block; see :mod:`polyviz_torch._probe`); token grids are flattened back to
    (N, h * w, C) and their prefix tokens spliced in by the hook; anything else as it is."""
    layout = None if info is None else info.layout
    if activation.ndim != 4:
        return activation
    if layout == TOKENS:
        return activation.reshape(activation.shape[0], -1, activation.shape[-1])
    if layout is None:
        raise LayerError(
            f"layer: the layout of {info.name if info else 'this layer'!r}'s 4-D output could not be detected; "
            "declare __polyviz_layout__ on its module class"
        )
    return activation.permute(*from_grid_order(layout))


def _pad(grad: torch.Tensor, prefix: int) -> torch.Tensor:
    """A grid-token gradient with zero rows for the prefix tokens, so :meth:`Runner.grid` reads it."""
    if not prefix:
        return grad
    return torch.cat([grad.new_zeros((grad.shape[0], prefix, *grad.shape[2:])), grad], dim=1)


def replaced_layer_gradients(
    runner: Runner, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
) -> LayerGradients:
    """Objective values, ``{layer: activation}`` and d(objective)/d(activation), channels-last."""
    (module,) = runner._modules([layer]).values()
    model = runner.model
    with guarded(model) as handles:
        torch.set_grad_enabled(False)
        info = runner.probe.info(layer)
        prefix = info.prefix if info is not None and info.layout == TOKENS else 0
        leaf = _native(runner.tensor(activation), info).contiguous().requires_grad_()
        calls = {"n": 0}

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer: {layer!r} returns a {type(output).__name__}, not a tensor; choose a module "
                    "with one tensor output"
                )
            calls["n"] += 1
            if calls["n"] > 1:
                raise LayerError(runner._twice(layer, calls["n"]))
            expected = (output.shape[0], output.shape[1] - prefix, *output.shape[2:])
            if tuple(expected) != tuple(leaf.shape):
                raise LayerError(
                    f"layer: {layer!r} gives {tuple(runner.grid(layer, output).shape)} (channels-last) for this "
                    f"input, the activation has {tuple(activation.shape)}"
                )
            torch.set_grad_enabled(True)
            if prefix:  # the class/register tokens as the model made them, the grid tokens replaced
                return torch.cat([output[:, :prefix].detach(), leaf], dim=1)
            # a copy downstream: an in-place op after the layer must not write into the leaf
            return leaf.clone()

        add_hook(handles, module, hook)
        out = runner.call_model(runner.model_input(runner.tensor(x)))
        if calls["n"] == 0:
            raise LayerError(f"layer: {layer!r} did not run in the forward pass for this input")
        torch.set_grad_enabled(True)
        values = runner.output_objective(objective, out)
        grad = None
        if values.requires_grad:
            (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        return LayerGradients(
            to_numpy(values),
            {layer: np.asarray(activation, np.float32)},
            {layer: to_numpy(runner.grid(layer, _pad(grad, prefix)))},
        )
