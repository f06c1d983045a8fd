"""DeepLIFT in torch: the rules of :mod:`polyviz.rules.deeplift`, hung on the forward pass.

As Captum's ``DeepLift`` does, the inputs and their references run through the model as one
batch ``cat([x, x'])``. A :class:`DeepLiftMode` (a ``TorchFunctionMode``, active for the forward
pass only) routes, functional or module form alike, each

* element-wise nonlinearity (ReLU, ReLU6/hardtanh, LeakyReLU, ELU, SELU, CELU, SiLU, GELU,
  hardswish, hardsigmoid, mish, sigmoid, tanh, softplus, logsigmoid, softsign, clamp, exp, abs,
  square, erf) through an autograd Function whose backward is the rescale rule;
* 2-D max pooling through Captum's max-pool rule;
* product of two input-dependent tensors (the squeeze-excitation gate ``scale * input``) through
  the two-factor product rule.

Everything else (convolutions, linear layers, average pooling, batch norm in eval mode, additions,
concatenations, reshapes, ...) is linear and differentiated as it is. Nonlinearities with no rule
(softmax, layer/group norm, division or matrix products of two activations, adaptive or 1-D/3-D
max pooling, ...) raise a :class:`CapabilityError` naming them instead of being differentiated
silently. This file holds only the torch plumbing; the maths is in ``polyviz.rules.deeplift``.

Differences from Captum 0.9: the mode reaches functional nonlinearities (``F.relu``,
``torch.sigmoid``, ``x.relu_()``) and modules used twice, which Captum's module hooks miss or
reject; Captum has no rule for SiLU, GELU, hardswish, ReLU6 (it differentiates them, silently
breaking completeness) nor for products; and the max-pool fallback uses each sample's own gradient
where Captum takes ``grad_input[0]`` (the first sample's) for every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from polyviz.errors import CapabilityError
from polyviz.protocol import Gradients, Objective
from polyviz.rules.deeplift import EPS, maxpool_backward, product_backward, rescale_multiplier

__all__ = ["DeepLiftMode", "deeplift_gradient", "EPS", "SUPPORTED", "TorchOps"]

SUPPORTED = ("element-wise nonlinearities (ReLU, ReLU6, LeakyReLU, ELU, SELU, CELU, SiLU, GELU, hardswish, "
             "hardsigmoid, mish, sigmoid, tanh, softplus, ...), 2-D max pooling, products of two activations "
             "and linear operations")


class TorchOps:
    """:class:`polyviz.rules.deeplift.DeepLiftOps` in torch."""

    @staticmethod
    def halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.shape[0] // 2
        return t[:n], t[n:]

    @staticmethod
    def cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b])

    @staticmethod
    def where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(cond, a, b)

    @staticmethod
    def small(t: torch.Tensor, eps: float) -> torch.Tensor:
        return t.abs() < eps

    @staticmethod
    def maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    @staticmethod
    def sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.sum_to_size(like.shape) if t.shape != like.shape else t


OPS = TorchOps()


def _derivative(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """f'(z) of an element-wise ``fn`` (the vjp with ones)."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_()
        (d,) = torch.autograd.grad(fn(zz), zz, torch.ones_like(zz))
    return d


class _Rescale(torch.autograd.Function):
    """``fn(z)`` forward (in place when asked); the rescale rule backward. The multiplier is known
    after the forward pass, so it is computed there (before an in-place forward overwrites ``z``)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], inplace: bool) -> torch.Tensor:
        with torch.no_grad():
            z0 = z.detach()
            out = fn(z0)
            ctx.multiplier = rescale_multiplier(OPS, z0, out, lambda: _derivative(fn, z0))
        if inplace:
            ctx.mark_dirty(z)
            return z.copy_(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        return g * ctx.multiplier, None, None


class _Product(torch.autograd.Function):
    """``a * b`` forward; the two-factor product rule backward."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        a, b = ctx.saved_tensors
        return product_backward(OPS, g, a, b)


class _MaxPool(torch.autograd.Function):
    """2-D max pooling forward; Captum's DeepLIFT max-pool rule backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            z0 = z.detach()
            out, indices = F.max_pool2d_with_indices(z0, params["kernel_size"], params["stride"], params["padding"],
                                                     params["dilation"], params["ceil_mode"], True)
        ctx.z0, ctx.out, ctx.indices, ctx.params = z0, out, indices, params
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        p = ctx.params

        def unpool(values: torch.Tensor) -> torch.Tensor:
            """``values`` routed to each window's arg-max (the max-pool vjp; overlaps summed)."""
            return torch.ops.aten.max_pool2d_with_indices_backward(
                values, ctx.z0, _pair(p["kernel_size"]), _pair(p["stride"]), _pair(p["padding"]),
                _pair(p["dilation"]), bool(p["ceil_mode"]), ctx.indices)

        return maxpool_backward(OPS, g, ctx.z0, ctx.out, unpool), None


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _bind(args: tuple, kwargs: dict, names: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Arguments after the input, by name, with defaults."""
    out = {name: default for name, default in names}
    for (name, _), value in zip(names, args[1:]):
        out[name] = value
    out.update({k: v for k, v in kwargs.items() if k in out})
    return out


_INPLACE = (("inplace", False),)
#: element-wise function -> (its out-of-place function, its arguments after the input with defaults)
_ELEMENTWISE: dict[Any, tuple[Callable[..., torch.Tensor], tuple[tuple[str, Any], ...]]] = {
    F.relu: (F.relu, _INPLACE), torch.relu: (torch.relu, ()), torch.Tensor.relu: (torch.relu, ()),
    F.relu6: (F.relu6, _INPLACE),
    F.hardtanh: (F.hardtanh, (("min_val", -1.0), ("max_val", 1.0), ("inplace", False))),
    F.elu: (F.elu, (("alpha", 1.0), ("inplace", False))),
    F.leaky_relu: (F.leaky_relu, (("negative_slope", 0.01), ("inplace", False))),
    F.selu: (F.selu, _INPLACE), torch.selu: (torch.selu, ()),
    F.celu: (F.celu, (("alpha", 1.0), ("inplace", False))),
    F.silu: (F.silu, _INPLACE), F.hardswish: (F.hardswish, _INPLACE), F.hardsigmoid: (F.hardsigmoid, _INPLACE),
    F.mish: (F.mish, _INPLACE), F.gelu: (F.gelu, (("approximate", "none"),)),
    F.softplus: (F.softplus, (("beta", 1.0), ("threshold", 20.0))),
    F.logsigmoid: (F.logsigmoid, ()), F.softsign: (F.softsign, ()),
    torch.sigmoid: (torch.sigmoid, ()), torch.Tensor.sigmoid: (torch.sigmoid, ()), F.sigmoid: (torch.sigmoid, ()),
    torch.tanh: (torch.tanh, ()), torch.Tensor.tanh: (torch.tanh, ()), F.tanh: (torch.tanh, ()),
    torch.clamp: (torch.clamp, (("min", None), ("max", None))), torch.Tensor.clamp: (torch.clamp, (("min", None), ("max", None))),
    torch.exp: (torch.exp, ()), torch.Tensor.exp: (torch.exp, ()), torch.abs: (torch.abs, ()),
    torch.Tensor.abs: (torch.abs, ()), torch.square: (torch.square, ()), torch.erf: (torch.erf, ()),
}
#: in-place element-wise function -> its out-of-place function
_ELEMENTWISE_INPLACE: dict[Any, tuple[Callable[..., torch.Tensor], tuple[tuple[str, Any], ...]]] = {
    torch.relu_: (torch.relu, ()), torch.Tensor.relu_: (torch.relu, ()),
    F.hardtanh_: (F.hardtanh, (("min_val", -1.0), ("max_val", 1.0))),
    F.elu_: (F.elu, (("alpha", 1.0),)), F.leaky_relu_: (F.leaky_relu, (("negative_slope", 0.01),)),
    torch.selu_: (torch.selu, ()), torch.sigmoid_: (torch.sigmoid, ()), torch.Tensor.sigmoid_: (torch.sigmoid, ()),
    torch.tanh_: (torch.tanh, ()), torch.Tensor.tanh_: (torch.tanh, ()),
    torch.clamp_: (torch.clamp, (("min", None), ("max", None))),
    torch.Tensor.clamp_: (torch.clamp, (("min", None), ("max", None))),
}
_MULTIPLY = (torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__)
_TWO_ACTIVATIONS = {
    torch.Tensor.mul_: "an in-place product", torch.Tensor.__imul__: "an in-place product",
    torch.div: "a division", torch.Tensor.div: "a division", torch.Tensor.__truediv__: "a division",
    torch.matmul: "a matrix product", torch.Tensor.matmul: "a matrix product", torch.Tensor.__matmul__: "a matrix product",
    torch.bmm: "a matrix product", torch.einsum: "an einsum",
}


def _elementwise(func: Any, args: tuple, kwargs: dict) -> tuple[Callable, bool] | None:
    """(out-of-place fn, in_place) for a supported element-wise call, else None."""
    try:
        found, inplace = _ELEMENTWISE.get(func), False
        if found is None:
            found, inplace = _ELEMENTWISE_INPLACE.get(func), True
    except TypeError:  # an unhashable callable
        return None
    if found is None:
        return None
    fn, names = found
    params = _bind(args, kwargs, names)
    inplace = inplace or bool(params.pop("inplace", False))
    return (lambda z: fn(z, **params)), inplace


def _unsupported() -> dict[Any, str]:
    names = {
        "prelu": (F.prelu, torch.prelu), "rrelu": (F.rrelu,), "glu": (F.glu,), "threshold": (F.threshold,),
        "softmax": (F.softmax, torch.softmax, torch.Tensor.softmax),
        "log_softmax": (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax),
        "layer_norm": (F.layer_norm, torch.layer_norm), "group_norm": (F.group_norm, torch.group_norm),
        "instance_norm": (F.instance_norm,), "normalize": (F.normalize,), "local_response_norm": (F.local_response_norm,),
        "scaled_dot_product_attention": (F.scaled_dot_product_attention,),
        "max_pool1d": (F.max_pool1d, F.max_pool1d_with_indices), "max_pool3d": (F.max_pool3d, F.max_pool3d_with_indices),
        "max_pool2d_with_indices": (F.max_pool2d_with_indices,),
        "adaptive_max_pool1d": (F.adaptive_max_pool1d,), "adaptive_max_pool2d": (F.adaptive_max_pool2d,),
        "adaptive_max_pool3d": (F.adaptive_max_pool3d,),
    }
    return {f: name for name, funcs in names.items() for f in funcs}


_UNSUPPORTED = _unsupported()


def _activation(t: Any) -> bool:
    """Whether ``t`` is a tensor computed from the input (not a constant or a parameter)."""
    return isinstance(t, torch.Tensor) and t.grad_fn is not None


class DeepLiftMode(TorchFunctionMode):
    """Routes the forward pass's nonlinearities through DeepLIFT's backward rules (see the
    module docstring); raises :class:`CapabilityError` at a nonlinearity it has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor):
            found = _elementwise(func, args, kwargs)
            if found is not None:
                fn, inplace = found
                self.count += 1
                return _Rescale.apply(args[0], fn, inplace)
            if func is F.max_pool2d:
                return self._max_pool(args, kwargs)
            if len(args) >= 2 and _activation(args[0]) and _activation(args[1]):
                if func in _MULTIPLY:
                    self.count += 1
                    return _Product.apply(args[0], args[1])
                what = _TWO_ACTIVATIONS.get(func)
                if what is not None:
                    self._refuse(f"{what} of two activations ({getattr(func, '__name__', func)})")
            try:
                name = _UNSUPPORTED.get(func)
            except TypeError:  # an unhashable callable
                name = None
            if name is not None:
                self._refuse(name)
        return func(*args, **kwargs)

    def _max_pool(self, args: tuple, kwargs: dict) -> torch.Tensor:
        params = _bind(args, kwargs, (("kernel_size", None), ("stride", None), ("padding", 0),
                                      ("dilation", 1), ("ceil_mode", False), ("return_indices", False)))
        if params["return_indices"]:
            self._refuse("max_pool2d with return_indices=True")
        if params["stride"] is None or (isinstance(params["stride"], list | tuple) and not params["stride"]):
            params["stride"] = params["kernel_size"]
        self.count += 1
        return _MaxPool.apply(args[0], params)

    @staticmethod
    def _refuse(name: str) -> None:
        raise CapabilityError(
            f"deeplift: the model calls {name}, a nonlinearity polyviz's DeepLIFT has no rule for "
            f"(rules: {SUPPORTED}); differentiating it as it is would give a wrong attribution"
        )


def deeplift_gradient(runner: Any, x: np.ndarray, reference: np.ndarray, objective: Objective) -> Gradients:
    """Objective values at ``x`` (N,) and DeepLIFT multipliers (N, H, W, C) against ``reference``
    (N, H, W, C), for a :class:`polyviz_torch._impl.Runner`. One forward and one backward pass of
    the 2N batch; the model is left as it was (``guarded``), also when this raises."""
    from polyviz_torch._impl import guarded, to_numpy

    n = len(x)
    layers = list(objective.layers)
    with guarded(runner.model) as handles, torch.enable_grad():
        leaf = runner.tensor(x).requires_grad_()
        both = runner.model_input(torch.cat([leaf, runner.tensor(reference)]))
        acts: dict[str, torch.Tensor] = {}
        if layers:
            runner._install(handles, layers, acts, stop=True)
        with DeepLiftMode():
            out = runner._run(both, stop=bool(layers))
        if layers:
            runner._check_ran(layers, acts)
            a = acts[layers[0]]
            values, ref_values = runner.layer_objective(objective, a[:n]), runner.layer_objective(objective, a[n:])
        else:
            values, ref_values = runner.output_objective(objective, out[:n]), runner.output_objective(objective, out[n:])
        total = values.sum() + ref_values.sum()
        if not total.requires_grad:
            grad = torch.zeros_like(leaf)
        else:
            (grad,) = torch.autograd.grad(total, leaf, allow_unused=True)
            grad = torch.zeros_like(leaf) if grad is None else grad
        return Gradients(to_numpy(values), to_numpy(grad))
