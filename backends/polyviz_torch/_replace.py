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
from polyviz.protocol import LayerGradients, Objective
from polyviz_torch._impl import Runner, channels_last, guarded, to_numpy
from polyviz_torch._threads import add_hook

__all__ = ["replaced_layer_gradients"]


def _native(activation: torch.Tensor) -> torch.Tensor:
    """Channels-last (N, H, W, C) -> NCHW for 4-D activations; anything else as it is."""
    return activation.permute(0, 3, 1, 2) if activation.ndim == 4 else activation


def replaced_layer_gradients(
    runner: Runner, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
) -> LayerGradients:
    """Objective values, ``{layer: activation}`` and d(objective)/d(activation), channels-last."""
    (module,) = runner._modules([layer]).values()
    model = runner.model
    with guarded(model) as handles:
        torch.set_grad_enabled(False)
        leaf = _native(runner.tensor(activation)).contiguous().requires_grad_()
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
            if tuple(output.shape) != tuple(leaf.shape):
                raise LayerError(
                    f"layer: {layer!r} gives {tuple(channels_last(output).shape)} (channels-last) for this "
                    f"input, the activation has {tuple(activation.shape)}"
                )
            torch.set_grad_enabled(True)
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
            {layer: to_numpy(channels_last(grad))},
        )
