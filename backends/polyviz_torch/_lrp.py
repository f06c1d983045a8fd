"""Layer-wise relevance propagation in torch, as backward rules given as data (never editing the model).

For one backend call, forward hooks on the model's modules route each layer's output through an
autograd Function whose backward turns the relevance arriving at the output into the relevance at
the input (the hooks are removed in :func:`polyviz_torch._impl.guarded`'s ``finally``):

* weighted layers (``Conv2d``, ``Linear``) by their :class:`polyviz.protocol.LRPRule` (zero,
  epsilon, gamma, alpha-beta, z^B), computed from modified copies of the weights
  (the module's own affine map with those weights, bypassing hooks; the parameters themselves are never touched);
* average pools (``AvgPool2d``, ``AdaptiveAvgPool2d``): LRP-0 with a 1e-6 stabiliser (zennit's
  ``Norm``);
* ReLUs (modules and functional, through a ``TorchFunctionMode``) and other element-wise
  activations pass relevance through unchanged (zennit's ``Pass``);
* max pooling, dropout, flatten and reshapes are differentiated as usual (relevance goes to the
  maximum, or moves along).

The formulas follow Montavon et al. 2019 ("Layer-wise relevance propagation: an overview") in the
generalised forms of zennit (Anders et al. 2021), whose rules they reproduce to float round-off:
gamma and alpha-beta treat positive and negative inputs and outputs separately, and every
denominator is stabilised as ``z + eps * sign(z)`` with sign(0) = +1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from polyviz.errors import CapabilityError
from polyviz.protocol import LRPRule
from polyviz_torch._threads import add_hook

__all__ = ["install_lrp", "PassReluMode", "relevance"]

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
#: Element-wise activation modules that pass relevance through (ReLU is handled by PassReluMode).
PASS_THROUGH = (nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ReLU6, nn.Hardtanh)
# Every other parameter-free module (max pooling, dropout, flatten, reshapes) is differentiated as
# usual, which is what LRP does there; ReLUs are handled by PassReluMode.
STABILISER = 1e-6


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _call(module: nn.Module, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The module's affine map with the given weight and bias (None: none), bypassing its hooks
    (ours among them)."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    return module._conv_forward(a, weight, bias)


_CONV_INPUT_GRAD = {nn.Conv1d: torch.nn.grad.conv1d_input, nn.Conv2d: torch.nn.grad.conv2d_input,
                    nn.Conv3d: torch.nn.grad.conv3d_input}


def _transpose(module: nn.Module, weight: torch.Tensor, seed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """W^T seed: the gradient of the layer's (bias-free, linear) map for the output gradient
    ``seed``, shaped like the layer's input ``like``. A transposed convolution, no forward pass;
    autograd through the map where the padding is not plain zeros."""
    if isinstance(module, nn.Linear):
        return seed @ weight
    grad_input = _CONV_INPUT_GRAD.get(type(module))
    if grad_input is not None and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return grad_input(like.shape, weight, seed, module.stride, module.padding, module.dilation, module.groups)
    a = torch.zeros_like(like).requires_grad_()
    (grad,) = torch.autograd.grad(_call(module, a, weight, None), a, seed)
    return grad


def _outputs(module: nn.Module, terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [_call(module, a, w, b) for a, w, b in terms]


def _expand(value: float | tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A scalar or one value per channel (axis 1, NCHW) broadcast to ``like``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 1:
        t = t.reshape(1, -1, *([1] * (like.ndim - 2)))
    return t.expand_as(like)


def relevance_rule(module: nn.Module, rule: LRPRule) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(a, R_out, z) -> R_in`` for a weighted module under ``rule`` (``z`` its output)."""
    w = module.weight.detach()
    b = module.bias.detach() if module.bias is not None else None
    eps = rule.epsilon

    def pos(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clamp(min=0)

    def neg(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clamp(max=0)

    def fn(a: torch.Tensor, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """R_in from the input ``a``, the relevance ``r`` at the output and the output ``z``."""

        def t(weight: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
            return _transpose(module, weight, seed, a)

        if rule.name in ("zero", "epsilon"):
            return a * t(w, r / stabilize(z, eps))
        if rule.name == "zbox":
            low, high = _expand(rule.low, a), _expand(rule.high, a)
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            zl, zh = _outputs(module, [(low, wp, pos(b)), (high, wn, neg(b))])
            s = r / stabilize(z - zl - zh, eps)
            return a * t(w, s) - low * t(wp, s) - high * t(wn, s)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        if rule.name == "gamma":
            g = rule.gamma
            wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
            bp = None if b is None else b + g * b.clamp(min=0)
            bn = None if b is None else b + g * b.clamp(max=0)
            o0, o1, o2, o3 = _outputs(module, [(ap, wp, bp), (an, wn, None), (ap, wn, bn), (an, wp, None)])
            s_pos = (z > 0).to(r.dtype) * r / stabilize(o0 + o1, eps)
            s_neg = (z < 0).to(r.dtype) * r / stabilize(o2 + o3, eps)
            return ap * (t(wp, s_pos) + t(wn, s_neg)) + an * (t(wn, s_pos) + t(wp, s_neg))
        # alpha_beta
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        o0, o1 = _outputs(module, [(ap, wp, pos(b)), (an, wn, None)])
        s_pos = r / stabilize(o0 + o1, eps)
        positive = ap * t(wp, s_pos) + an * t(wn, s_pos)
        if rule.beta == 0:
            return rule.alpha * positive
        o2, o3 = _outputs(module, [(ap, wn, neg(b)), (an, wp, None)])
        s_neg = r / stabilize(o2 + o3, eps)
        return rule.alpha * positive - rule.beta * (ap * t(wn, s_neg) + an * t(wp, s_neg))

    return fn


def average_rule(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """LRP-0 (stabiliser 1e-6) through an average pool."""

    def fn(a: torch.Tensor, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a = a.detach().requires_grad_()
        pooled = module.forward(a)  # not module(a): that would run our hook again
        (g,) = torch.autograd.grad(pooled, a, r / stabilize(z, STABILISER))
        return a.detach() * g

    return fn


class _Relevance(torch.autograd.Function):
    """Forward: the layer's (detached) output. Backward: ``fn(input, relevance at the output)``."""

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, out: torch.Tensor, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        ctx.fn = fn
        ctx.save_for_backward(inp, out)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        inp, out = ctx.saved_tensors
        with torch.enable_grad():
            return ctx.fn(inp.detach(), relevance, out), None, None


class _PassThrough(torch.autograd.Function):
    """Forward: the activation's output. Backward: the relevance, unchanged, to the input."""

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None]:
        return relevance, None


class _PassRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> torch.Tensor:
        return relevance


class _PassReluInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        return x.clamp_(min=0)

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> torch.Tensor:
        return relevance


class PassReluMode(TorchFunctionMode):
    """Every ReLU run while active (module or functional, in place or not) passes relevance through."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (F.relu, torch.relu, torch.Tensor.relu) and args and isinstance(args[0], torch.Tensor):
            inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
            return (_PassReluInplace if (func is F.relu and inplace) else _PassRelu).apply(args[0])
        if func in (torch.relu_, torch.Tensor.relu_, F.relu_) and args and isinstance(args[0], torch.Tensor):
            return _PassReluInplace.apply(args[0])
        return func(*args, **kwargs)


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def install_lrp(model: nn.Module, rules: dict[str, LRPRule], handles: list[Any]) -> None:
    """Register the relevance hooks for one call (handles are removed by the caller's ``guarded``).

    Raises :class:`CapabilityError` for a rule on a layer that is not a conv/linear, and for a
    layer with parameters that has no rule (BatchNorm: fold it into the conv first)."""
    for name, module in model.named_modules():
        if name in rules:
            if not isinstance(module, WEIGHTED):
                raise CapabilityError(
                    f"rule: LRP rules apply to Conv/Linear layers; {name!r} is a {type(module).__name__}"
                )
            fn = relevance_rule(module, rules[name])
        elif isinstance(module, AVERAGE_POOLS):
            fn = average_rule(module)
        elif isinstance(module, PASS_THROUGH):
            add_hook(handles, module, _pass_hook)
            continue
        elif _has_own_parameters(module):
            raise CapabilityError(
                f"rule: layer {name!r} ({type(module).__name__}) has parameters but no LRP rule; LRP "
                "covers Conv and Linear layers (fold BatchNorm into the preceding conv first)"
            )
        else:
            continue
        add_hook(handles, module, _relevance_hook(fn))


def _relevance_hook(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return _Relevance.apply(inputs[0], output.detach(), fn)

    return hook


def _pass_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return _PassThrough.apply(inputs[0], output.detach())


def relevance(runner: Any, x: Any, objective: Any, rule: Any) -> Any:
    """Objective values and the relevance at the input (channels-last, the caller's channel order)
    for one batch under ``rule.lrp``; the seed at the output is the objective's gradient.

    Relevance lives on the model's input (after preprocessing): it is not chained through the
    preprocessing's scale, which would turn it back into a gradient."""
    from polyviz.protocol import Gradients
    from polyviz_torch._impl import guarded, to_numpy

    with guarded(runner.model) as handles, torch.enable_grad():
        with torch.no_grad():
            model_input = runner.model_input(runner.tensor(x))
        leaf = model_input.detach().requires_grad_()
        install_lrp(runner.model, rule.lrp_rules(), handles)
        with PassReluMode():
            out = runner.call_model(leaf)
        values = runner.output_objective(objective, out)
        if values.requires_grad:
            (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
        else:
            grad = None
        grad = torch.zeros_like(leaf) if grad is None else grad
        grad = grad.permute(0, 2, 3, 1)
        if runner.preprocess is not None and runner.preprocess.channel_order == "BGR":
            grad = grad.flip(-1)
        return Gradients(to_numpy(values), to_numpy(grad))
