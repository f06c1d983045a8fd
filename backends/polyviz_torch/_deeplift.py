"""DeepLIFT multipliers in torch (Shrikumar et al. 2017, arXiv:1704.02685, rescale rule).

As Captum's ``DeepLift`` does, the inputs and their references run through the model as one
batch ``cat([x, x'])`` so that every nonlinearity sees its input ``z`` and reference input ``z'``
side by side. A :class:`DeepLiftMode` (a ``TorchFunctionMode``, active for the forward pass only)
routes each nonlinearity through an autograd Function whose backward is DeepLIFT's:

* element-wise nonlinearities (ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus: Captum's list
  without Softmax) pass back ``g * (f(z) - f(z')) / (z - z')``, the same multiplier for both
  halves, and the true gradient ``g * f'(z)`` where ``|z - z'| < 1e-10``;
* 2-D max pooling follows Captum's rule: with ``o``, ``o'`` the pooled outputs and
  ``m = max(o, o')``, the change ``o - o'`` is split into ``(m - o')`` routed to the input's
  arg-max and ``(o - m)`` routed to the reference's arg-max; both are summed and divided by
  ``z - z'`` (true gradient where ``|z - z'| < 1e-10``).

Everything else (convolutions, linear layers, average pooling, batch norm in eval mode, ...) is
differentiated as it is. The objective is summed over both halves, as Captum's is, so the
reference half's multipliers feed the max-pool rule exactly as in Captum; the gradient is taken
with respect to the input half only.

Differences from Captum 0.9, neither visible on VGG-style networks: the mode reaches functional
nonlinearities (``F.relu``, ``torch.sigmoid``, ``x.relu_()``) and modules used twice, which Captum's
module hooks miss or reject; and the max-pool fallback uses each sample's own gradient where Captum
takes ``grad_input[0]`` (the first sample's) for every sample. Nonlinearities with no rule here
(GELU, SiLU, Softmax, adaptive or 1-D/3-D max pooling, ...) raise a :class:`CapabilityError`
naming them instead of being differentiated silently.
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

__all__ = ["DeepLiftMode", "deeplift_gradient", "EPS", "SUPPORTED"]

#: |z - z'| below which the true gradient replaces the multiplier (Captum's default eps).
EPS = 1e-10
SUPPORTED = "ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus and 2-D max pooling"


def _halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = t.shape[0] // 2
    return t[:n], t[n:]


def _twice(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t])


def _derivative(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """f'(z) of an element-wise ``fn`` (the vjp with ones)."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_()
        (d,) = torch.autograd.grad(fn(zz), zz, torch.ones_like(zz))
    return d


class _Rescale(torch.autograd.Function):
    """``fn(z)`` forward (in place when asked); DeepLIFT's rescale rule backward. The multiplier
    of every element is known after the forward pass, so it is computed there (before an in-place
    forward overwrites ``z``) and the backward is one product."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], relu: bool,
                inplace: bool) -> torch.Tensor:
        with torch.no_grad():
            z0 = z.detach()
            out = fn(z0)
            zx, zr = _halves(z0)
            ox, orf = _halves(out)
            delta_in = zx - zr
            small = _twice(delta_in.abs() < EPS)
            true = (z0 > 0).to(z0.dtype) if relu else _derivative(fn, z0)
            ctx.multiplier = torch.where(small, true, _twice((ox - orf) / delta_in))
        if inplace:
            ctx.mark_dirty(z)
            return z.copy_(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        return g * ctx.multiplier, None, None, None


class _MaxPool(torch.autograd.Function):
    """2-D max pooling forward; Captum's DeepLIFT max-pool rule backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            z0 = z.detach()
            out, indices = F.max_pool2d_with_indices(z0, params["kernel_size"], params["stride"], params["padding"],
                                                     params["dilation"], params["ceil_mode"], True)
            zx, zr = _halves(z0)
            ctx.delta_in = zx - zr
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

        o, o_ref = _halves(ctx.out)
        top = torch.max(o, o_ref)
        routed = unpool(g * torch.cat([top - o_ref, o - top]))
        a, b = _halves(routed)
        delta_in = ctx.delta_in
        grad = _twice((a + b) / delta_in)
        small = delta_in.abs() < EPS
        if bool(small.any()):
            grad = torch.where(_twice(small), unpool(g), grad)
        return grad, None


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _bind(args: tuple, kwargs: dict, names: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Arguments after the input, by name, with defaults."""
    out = {name: default for name, default in names}
    for (name, _), value in zip(names, args[1:]):
        out[name] = value
    out.update({k: v for k, v in kwargs.items() if k in out})
    return out


def _elementwise(func: Any, args: tuple, kwargs: dict) -> tuple[Callable, bool, bool] | None:
    """(out-of-place fn, is_relu, in_place) for a supported element-wise call, else None."""
    if func is F.relu:
        return torch.relu, True, bool(_bind(args, kwargs, (("inplace", False),))["inplace"])
    if func in (torch.relu, torch.Tensor.relu):
        return torch.relu, True, False
    if func in (torch.relu_, torch.Tensor.relu_, F.relu_):
        return torch.relu, True, True
    if func in (torch.sigmoid, torch.Tensor.sigmoid):
        return torch.sigmoid, False, False
    if func in (torch.sigmoid_, torch.Tensor.sigmoid_):
        return torch.sigmoid, False, True
    if func in (torch.tanh, torch.Tensor.tanh):
        return torch.tanh, False, False
    if func in (torch.tanh_, torch.Tensor.tanh_):
        return torch.tanh, False, True
    if func in (F.elu, F.elu_):
        p = _bind(args, kwargs, (("alpha", 1.0), ("inplace", False)))
        alpha = p["alpha"]
        return (lambda z: F.elu(z, alpha)), False, func is F.elu_ or bool(p["inplace"])
    if func in (F.leaky_relu, F.leaky_relu_):
        p = _bind(args, kwargs, (("negative_slope", 0.01), ("inplace", False)))
        slope = p["negative_slope"]
        return (lambda z: F.leaky_relu(z, slope)), False, func is F.leaky_relu_ or bool(p["inplace"])
    if func is F.softplus:
        p = _bind(args, kwargs, (("beta", 1.0), ("threshold", 20.0)))
        beta, threshold = p["beta"], p["threshold"]
        return (lambda z: F.softplus(z, beta, threshold)), False, False
    return None


def _unsupported() -> dict[Any, str]:
    names = {
        "gelu": (F.gelu,), "silu": (F.silu,), "mish": (F.mish,), "hardswish": (F.hardswish,),
        "hardsigmoid": (F.hardsigmoid,), "relu6": (F.relu6,), "hardtanh": (F.hardtanh, F.hardtanh_),
        "selu": (F.selu, torch.selu, torch.selu_), "celu": (F.celu, torch.celu), "prelu": (F.prelu, torch.prelu),
        "rrelu": (F.rrelu,), "glu": (F.glu,), "logsigmoid": (F.logsigmoid,), "softsign": (F.softsign,),
        "threshold": (F.threshold,),
        "softmax": (F.softmax, torch.softmax, torch.Tensor.softmax),
        "log_softmax": (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax),
        "max_pool1d": (F.max_pool1d, F.max_pool1d_with_indices), "max_pool3d": (F.max_pool3d, F.max_pool3d_with_indices),
        "max_pool2d_with_indices": (F.max_pool2d_with_indices,),
        "adaptive_max_pool1d": (F.adaptive_max_pool1d,), "adaptive_max_pool2d": (F.adaptive_max_pool2d,),
        "adaptive_max_pool3d": (F.adaptive_max_pool3d,),
    }
    return {f: name for name, funcs in names.items() for f in funcs}


_UNSUPPORTED = _unsupported()


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
                fn, relu, inplace = found
                self.count += 1
                return _Rescale.apply(args[0], fn, relu, inplace)
            if func is F.max_pool2d:
                params = _bind(args, kwargs, (("kernel_size", None), ("stride", None), ("padding", 0),
                                              ("dilation", 1), ("ceil_mode", False), ("return_indices", False)))
                if params["return_indices"]:
                    self._refuse("max_pool2d with return_indices=True")
                if params["stride"] is None or (isinstance(params["stride"], list | tuple) and not params["stride"]):
                    params["stride"] = params["kernel_size"]
                self.count += 1
                return _MaxPool.apply(args[0], params)
            try:
                name = _UNSUPPORTED.get(func)
            except TypeError:  # an unhashable callable
                name = None
            if name is not None:
                self._refuse(name)
        return func(*args, **kwargs)

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
