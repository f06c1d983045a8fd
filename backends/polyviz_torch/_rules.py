"""Guided backprop and deconvnet backward passes through rectifiers, applied without touching the
model; the rules themselves are :mod:`polyviz.rules.guided` (definitions and sources there).

A :class:`ReluRuleMode` (a ``torch.overrides.TorchFunctionMode``) is active during one backend call.
It intercepts every rectifier the forward pass runs, module or functional, out of place or in place
(``nn.ReLU``/``F.relu``/``torch.relu``/``Tensor.relu_``, ``nn.ReLU6``/``F.relu6``/``F.hardtanh``
with ``min_val=0``, ``nn.LeakyReLU``/``F.leaky_relu``, ``nn.SiLU``/``F.silu``,
``nn.GELU``/``F.gelu``, ``nn.Hardswish``/``F.hardswish``), and runs it through an autograd
Function whose forward is the activation and whose backward follows the rule. Rectifier-like
activations without a rule (ELU, SELU, CELU, mish, softplus, PReLU, RReLU, hardtanh with a
negative floor) raise a :class:`CapabilityError`, and so does a forward pass that met no rectifier
(the result would be the plain gradient). Captum and pytorch-grad-cam patch ``nn.ReLU`` modules
only, so they miss functional ReLUs and every other rectifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from polyviz.errors import CapabilityError
from polyviz.rules.guided import backward as rule_backward
from polyviz_torch._deeplift import _derivative

__all__ = ["ReluRuleMode", "TorchGuidedOps"]


class TorchGuidedOps:
    """:class:`polyviz.rules.guided.GuidedOps` in torch."""

    @staticmethod
    def positive(t: torch.Tensor) -> torch.Tensor:
        return (t > 0).to(t.dtype)


OPS = TorchGuidedOps()


class _Rectifier(torch.autograd.Function):
    """``fn(z)`` forward (in place when asked, marking the input dirty so that ``x.relu_(); return
    x`` keeps working); the rule's backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], rule: str,
                inplace: bool) -> torch.Tensor:
        ctx.fn, ctx.rule = fn, rule
        with torch.no_grad():
            out = fn(z)
        ctx.z = z.detach().clone() if inplace else z.detach()
        if inplace:
            ctx.mark_dirty(z)
            return z.copy_(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        z, fn = ctx.z, ctx.fn
        return rule_backward(ctx.rule, OPS, g, z, lambda: _derivative(fn, z)), None, None, None


def _bind(args: tuple, kwargs: dict, names: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    out = {name: default for name, default in names}
    for (name, _), value in zip(names, args[1:]):
        out[name] = value
    out.update({k: v for k, v in kwargs.items() if k in out})
    return out


_INPLACE = (("inplace", False),)
#: rectifier -> (out-of-place function, arguments after the input with defaults, always in place)
_RECTIFIERS: dict[Any, tuple[Callable[..., torch.Tensor], tuple[tuple[str, Any], ...], bool]] = {
    F.relu: (torch.relu, _INPLACE, False), torch.relu: (torch.relu, (), False),
    torch.Tensor.relu: (torch.relu, (), False), torch.relu_: (torch.relu, (), True),
    torch.Tensor.relu_: (torch.relu, (), True),
    F.relu6: (F.relu6, _INPLACE, False),
    F.hardtanh: (F.hardtanh, (("min_val", -1.0), ("max_val", 1.0), ("inplace", False)), False),
    F.hardtanh_: (F.hardtanh, (("min_val", -1.0), ("max_val", 1.0)), True),
    F.leaky_relu: (F.leaky_relu, (("negative_slope", 0.01), ("inplace", False)), False),
    F.leaky_relu_: (F.leaky_relu, (("negative_slope", 0.01),), True),
    F.silu: (F.silu, _INPLACE, False), F.gelu: (F.gelu, (("approximate", "none"),), False),
    F.hardswish: (F.hardswish, _INPLACE, False),
}
_REFUSED = {
    F.elu: "ELU", F.elu_: "ELU", F.selu: "SELU", torch.selu: "SELU", torch.selu_: "SELU", F.celu: "CELU",
    F.mish: "mish", F.softplus: "softplus", F.prelu: "PReLU", torch.prelu: "PReLU", F.rrelu: "RReLU",
}


def _refuse(rule: str, what: str) -> CapabilityError:
    name = "guided backprop" if rule == "guided" else "deconvnet"
    return CapabilityError(
        f"{name}: {what}; polyviz defines {name} for ReLU, ReLU6, LeakyReLU, SiLU, GELU and hardswish "
        "(see polyviz.rules.guided) and will not return the plain gradient under another name"
    )


class ReluRuleMode(TorchFunctionMode):
    """Routes every rectifier called while the mode is active through the rule's autograd
    Function; refuses rectifiers without a rule, and a forward pass with no rectifier."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in ("guided", "deconvnet"):
            raise ValueError(f"rule: unknown ReLU rule {rule!r}")
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor):
            try:
                found, refused = _RECTIFIERS.get(func), _REFUSED.get(func)
            except TypeError:  # an unhashable callable
                found = refused = None
            if refused is not None:
                raise _refuse(self.rule, f"the model calls {refused}, a rectifier with no published rule")
            if found is not None:
                fn, names, inplace = found
                params = _bind(args, kwargs, names)
                inplace = inplace or bool(params.pop("inplace", False))
                if fn is F.hardtanh and float(params["min_val"]) != 0.0:
                    raise _refuse(self.rule, f"the model calls hardtanh with min_val={params['min_val']}, not a rectifier")
                self.count += 1
                return _Rectifier.apply(args[0], lambda z: fn(z, **params), self.rule, inplace)
        return func(*args, **kwargs)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        out = super().__exit__(exc_type, exc, tb)
        if exc_type is None and self.count == 0:
            raise _refuse(self.rule, "the forward pass met no rectifier, so the result would be the plain gradient")
        return out
