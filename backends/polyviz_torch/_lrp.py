"""Layer-wise relevance propagation in torch: classify each call, hang the shared rule on it.

The rule maths lives once in :mod:`polyviz.rules.lrp`; this module supplies its tensor table
(:class:`TorchOps`) and, for one backend call, routes each operation's backward through it:

* forward hooks on ``Conv1d/2d/3d`` and ``Linear`` modules (their :class:`~polyviz.protocol.LRPRule`)
  and on BatchNorm modules; the hooks are removed in :func:`polyviz_torch._impl.guarded`'s
  ``finally``. A BatchNorm whose input is the output of a hooked linear layer is merged into it
  (zennit's ``SequentialMergeBatchNorm``, decided by data flow, not module order), on numpy copies
  of the parameters; any other BatchNorm is a diagonal affine layer (LRP-epsilon, 1e-6).
* a ``TorchFunctionMode`` (:class:`LRPMode`) sees every tensor operation, modules and functional
  code alike: element-wise activations (ReLU, ReLU6, SiLU, GELU, hardswish, sigmoid, ...) pass
  relevance through; average pools (module or functional) use LRP-0; the addition of two
  same-shape activations (a residual add, ``+``, ``+=``, ``torch.add``) splits relevance in
  proportion to each term; the product of an activation with a broadcast gate (squeeze-excitation)
  gives all relevance to the activation. Max pooling, concatenation, flatten and reshapes are
  differentiated as usual.

Layers with parameters and no rule (LayerNorm, GroupNorm, attention, layer scale: ConvNeXt and
transformers) are refused with a :class:`CapabilityError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from polyviz.errors import CapabilityError
from polyviz.protocol import LRPRule
from polyviz.rules import lrp as rules
from polyviz_torch._threads import add_hook

__all__ = ["install_lrp", "LRPMode", "PassReluMode", "relevance", "TorchOps"]

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Parameter-free modules that need nothing from LRP (their ops are classified by LRPMode).
_CONV_INPUT_GRAD = {nn.Conv1d: torch.nn.grad.conv1d_input, nn.Conv2d: torch.nn.grad.conv2d_input,
                    nn.Conv3d: torch.nn.grad.conv3d_input}


def _call(module: nn.Module, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The module's affine map with the given weight and bias, bypassing its hooks (ours among them)."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    return module._conv_forward(a, weight, bias)


class TorchOps:
    """:class:`polyviz.rules.ops.LRPOps` for torch tensors (channels on axis 1)."""

    def pos(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(min=0)

    def neg(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(max=0)

    def sign0(self, t: torch.Tensor) -> torch.Tensor:
        return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)

    def gt0(self, t: torch.Tensor) -> torch.Tensor:
        return (t > 0).to(t.dtype)

    def lt0(self, t: torch.Tensor) -> torch.Tensor:
        return (t < 0).to(t.dtype)

    def ones_like(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def per_channel(self, value: float | tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if t.ndim == 1:
            t = t.reshape(1, -1, *([1] * (like.ndim - 2)))
        return t.expand_as(like)

    def linear(self, op: nn.Module, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return _call(op, a, w, b)

    def linear_t(self, op: nn.Module, a: torch.Tensor, w: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        """A matrix product or a transposed convolution (no forward pass); autograd through the map
        where the padding is not plain zeros."""
        if isinstance(op, nn.Linear):
            return seed @ w
        grad_input = _CONV_INPUT_GRAD.get(type(op))
        if grad_input is not None and op.padding_mode == "zeros" and not isinstance(op.padding, str):
            return grad_input(a.shape, w, seed, op.stride, op.padding, op.dilation, op.groups)
        return self.vjp(lambda t: _call(op, t, w, None), torch.zeros_like(a), seed)

    def vjp(self, fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            a = a.detach().requires_grad_()
            (grad,) = torch.autograd.grad(fn(a), a, seed)
        return grad


OPS = TorchOps()


class _Backward(torch.autograd.Function):
    """Forward: ``out`` (computed elsewhere). Backward: ``fn(relevance)`` -> one relevance per input."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., tuple], out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.fn = fn
        return out.clone()

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple:
        with torch.no_grad():
            return (None, None, *ctx.fn(relevance))


class _Pass(torch.autograd.Function):
    """An element-wise activation (in place or not) whose backward passes relevance through."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = fn(x)
        if out is x:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None]:
        return relevance, None


class _SumInplace(torch.autograd.Function):
    """``x += y`` on two activations, relevance split in proportion (rules.sum_relevance)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.terms = (x.detach().clone(), y.detach())
        x.add_(y)
        ctx.mark_dirty(x)
        ctx.z = x.detach().clone()
        return x

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple:
        return tuple(rules.sum_relevance(OPS, list(ctx.terms), relevance, ctx.z))


def _names(*names: str, where: Any = F) -> tuple:
    return tuple(getattr(where, n) for n in names if hasattr(where, n))


#: Element-wise activations: relevance passes through (zennit's ``Pass``).
ACTIVATIONS = frozenset(
    _names("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "gelu", "hardswish", "hardsigmoid", "mish",
           "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "softplus", "sigmoid", "tanh", "logsigmoid")
    + _names("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "selu", "celu", where=torch)
    + _names("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", where=torch.Tensor)
)
AVERAGE_POOLS = frozenset(_names("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                                 "adaptive_avg_pool3d"))
ADDS = frozenset((torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__))
ADDS_INPLACE = frozenset((torch.Tensor.add_, torch.Tensor.__iadd__))
#: Activations whose output, multiplied with an activation, is a gate (squeeze-excitation).
GATES = frozenset(_names("sigmoid", "hardsigmoid") + _names("sigmoid", where=torch) + _names("sigmoid", where=torch.Tensor))
MULS = frozenset((torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul_,
                  torch.Tensor.__imul__))


def _activation(t: Any) -> bool:
    """A tensor that carries relevance: it depends on the input, and is not a parameter."""
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, nn.Parameter) and t.is_floating_point()


def _gate(big: torch.Tensor, gate: torch.Tensor) -> bool:
    """``gate`` broadcasts to ``big`` with a smaller shape (a squeeze-excitation scale)."""
    if gate.ndim != big.ndim or gate.shape == big.shape:
        return False
    return all(g in (1, b) for g, b in zip(gate.shape, big.shape, strict=True))


class LRPMode(TorchFunctionMode):
    """Classifies every tensor operation run while active (see the module docstring). A product is
    a gate when one factor is the output of a sigmoid or hardsigmoid, or broadcasts to the other."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[int, torch.Tensor] = {}

    def _is_gate(self, t: torch.Tensor, other: torch.Tensor) -> bool:
        return (id(t) in self.gates and self.gates[id(t)] is t) or _gate(other, t)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else None
        if func in ACTIVATIONS and isinstance(first, torch.Tensor):
            out = _Pass.apply(first, lambda t: func(t, *args[1:], **kwargs))
            if func in GATES:
                self.gates[id(out)] = out
            return out
        if func in AVERAGE_POOLS and _activation(first):
            out = func(*args, **kwargs)
            pool = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
            a = first.detach()
            return _Backward.apply(lambda r: (rules.average_relevance(OPS, pool, a, r, out.detach()),), out.detach(), first)
        two = len(args) == 2 and not kwargs and _activation(first) and _activation(args[1])
        if two and first.shape == args[1].shape and (func in ADDS or func in ADDS_INPLACE):
            if func in ADDS_INPLACE:
                return _SumInplace.apply(first, args[1])
            out = func(*args)
            terms = [first.detach(), args[1].detach()]
            z = out.detach()
            return _Backward.apply(lambda r: tuple(rules.sum_relevance(OPS, terms, r, z)), z, first, args[1])
        if two and func in MULS:
            x, y = args
            if self._is_gate(y, x) or self._is_gate(x, y):
                big_first = self._is_gate(y, x)
                out = func(*args)
                zero = torch.zeros_like(y if big_first else x)
                grads = (lambda r: (r, zero)) if big_first else (lambda r: (zero, r))
                if out is x:  # x *= gate: the result must stay x's storage; relevance as computed
                    return out
                return _Backward.apply(grads, out.detach(), x, y)
        return func(*args, **kwargs)


#: Kept for callers of the former name: the mode now classifies more than ReLUs.
PassReluMode = LRPMode


class _Call:
    """One LRP call's state: which linear module each BatchNorm merges into, and the folded weights."""

    def __init__(self, rules_by_name: dict[str, LRPRule]) -> None:
        self.rules = rules_by_name
        self.produced: dict[int, tuple[torch.Tensor, nn.Module]] = {}
        self.merged: dict[nn.Module, nn.Module] = {}
        self.folded: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def params(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(weight, bias, merged) of a linear module, BatchNorm folded in when one follows it."""
        w = module.weight.detach()
        b = module.bias.detach() if module.bias is not None else None
        bn = self.merged.get(module)
        if bn is None:
            return w, b, False
        if module not in self.folded:
            scale, shift = _bn_affine(bn)
            w64 = w.cpu().double().numpy()
            w2, b2 = rules.fold_batchnorm(w64, None if b is None else b.cpu().double().numpy(), scale, shift,
                                          scale.reshape(-1, *([1] * (w64.ndim - 1))))
            self.folded[module] = tuple(torch.as_tensor(v, dtype=w.dtype, device=w.device) for v in (w2, b2))
        return (*self.folded[module], True)

    def linear_hook(self, name: str, module: nn.Module) -> Callable[..., torch.Tensor]:
        rule = self.rules[name]

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            a = inputs[0].detach()
            z0 = output.detach()

            def backward(r: torch.Tensor) -> tuple[torch.Tensor]:
                w, b, merged = self.params(module)
                z = OPS.linear(module, a, w, b) if merged else z0
                return (rules.linear_relevance(OPS, module, rule, w, b, a, r, z),)

            out = _Backward.apply(backward, z0, inputs[0])
            self.produced[id(out)] = (out, module)
            return out

        return hook

    def batchnorm_hook(self, mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        source = self.produced.pop(id(inputs[0]), None)
        if source is not None and source[0] is inputs[0] and source[1] not in self.merged:
            self.merged[source[1]] = mod  # relevance passes through; the linear layer's rule sees BN folded in
            return _Backward.apply(lambda r: (r,), output.detach(), inputs[0])
        scale, _ = _bn_affine(mod)
        s = torch.as_tensor(scale, dtype=output.dtype, device=output.device).reshape(1, -1, *([1] * (output.ndim - 2)))
        a, z = inputs[0].detach(), output.detach()
        return _Backward.apply(lambda r: (rules.affine_relevance(OPS, s, a, r, z),), z, inputs[0])


def _bn_affine(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    if bn.running_mean is None:
        raise CapabilityError(f"rule: LRP needs BatchNorm running statistics; {type(bn).__name__} tracks none")

    def arr(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().double().numpy()

    return rules.batchnorm_affine(arr(bn.running_mean), arr(bn.running_var), arr(bn.weight), arr(bn.bias), bn.eps)


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def install_lrp(model: nn.Module, rules_by_name: dict[str, LRPRule], handles: list[Any]) -> _Call:
    """Register the relevance hooks for one call (handles are removed by the caller's ``guarded``).

    Raises :class:`CapabilityError` for a rule on a layer that is not a conv/linear, and for a
    layer with parameters that LRP has no rule for (LayerNorm, attention, layer scale)."""
    call = _Call(rules_by_name)
    for name, module in model.named_modules():
        if name in rules_by_name:
            if not isinstance(module, WEIGHTED):
                raise CapabilityError(
                    f"rule: LRP rules apply to Conv/Linear layers; {name!r} is a {type(module).__name__}"
                )
            add_hook(handles, module, call.linear_hook(name, module))
        elif isinstance(module, BATCHNORMS):
            add_hook(handles, module, call.batchnorm_hook)
        elif _has_own_parameters(module):
            raise CapabilityError(
                f"rule: layer {name!r} ({type(module).__name__}) has parameters but no LRP rule; polyviz's LRP "
                "covers conv, linear and BatchNorm layers (LayerNorm, attention and layer scale, as in ConvNeXt "
                "and transformers, would need AttnLRP's rules, which polyviz does not implement)"
            )
    return call


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
        with LRPMode():
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
