"""Modified ReLU backward passes (guided backprop, deconvnet), applied without touching the model.

A :class:`ReluRuleMode` (a ``torch.overrides.TorchFunctionMode``) is active during one backend call.
It intercepts every ReLU the forward pass runs, whether an ``nn.ReLU`` module (which calls
``F.relu``) or a functional one (``F.relu``, ``torch.relu``, ``Tensor.relu``, their in-place
forms ``torch.relu_``, ``Tensor.relu_``, ``F.relu(inplace=True)``), and runs it through a custom
``torch.autograd.Function`` whose forward is the ReLU and whose backward follows the rule:

* guided backprop (Springenberg et al. 2014, "Striving for Simplicity: The All Convolutional
  Net"): pass back the gradient only where the forward input is positive *and* the gradient is
  positive;
* deconvnet (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks"): pass
  back the positive part of the gradient, whatever the forward input.

Captum and pytorch-grad-cam patch ``nn.ReLU`` modules only, so they miss functional ReLUs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["ReluRuleMode"]


def _rule_backward(rule: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The rule's backward through one ReLU; ``out`` is the ReLU's output (> 0 iff input > 0)."""
    positive = grad.clamp(min=0)
    if rule == "guided":
        return positive * (out > 0).to(grad.dtype)
    return positive


def _relu_function(rule: str, inplace: bool) -> type[torch.autograd.Function]:
    """An autograd Function: ReLU forward (in place, marking the input dirty, so that
    ``x.relu_(); return x`` keeps working; or out of place) and the rule's backward."""

    class RuleRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            if inplace:
                ctx.mark_dirty(x)
                out = x.clamp_(min=0)
            else:
                out = x.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            (out,) = ctx.saved_tensors
            return _rule_backward(rule, grad, out)

    RuleRelu.__name__ = RuleRelu.__qualname__ = f"{rule.capitalize()}Relu{'Inplace' if inplace else ''}"
    return RuleRelu


#: rule -> (out-of-place Function, in-place Function)
_FUNCTIONS = {rule: (_relu_function(rule, False), _relu_function(rule, True)) for rule in ("guided", "deconvnet")}

#: Functions whose first argument is the ReLU input and that return a new tensor (unless
#: ``F.relu(..., inplace=True)``).
_OUT_OF_PLACE = (F.relu, torch.relu, torch.Tensor.relu)
#: In-place ReLUs (``F.relu_`` is ``torch.relu_``).
_IN_PLACE = (torch.relu_, torch.Tensor.relu_, F.relu_)


class ReluRuleMode(TorchFunctionMode):
    """Routes every ReLU called while the mode is active through the rule's autograd Function."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in _FUNCTIONS:
            raise ValueError(f"rule: unknown ReLU rule {rule!r}")
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out_of_place, in_place = _FUNCTIONS[self.rule]
        if func in _OUT_OF_PLACE and args and isinstance(args[0], torch.Tensor):
            inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
            self.count += 1
            if func is F.relu and inplace:
                return in_place.apply(args[0])
            return out_of_place.apply(args[0])
        if func in _IN_PLACE and args and isinstance(args[0], torch.Tensor):
            self.count += 1
            return in_place.apply(args[0])
        return func(*args, **kwargs)
