"""The torch side of :class:`polyviz_torch.TorchBackend`: one :class:`Runner` per backend call.

Arrays arrive as float32 channels-last numpy batches; they become tensors on the model's device
and dtype, go through the declared preprocessing (differentiably, so gradients are with respect to
the caller's image) and are permuted to NCHW. Hooks live for one call: they are registered inside
:func:`guarded` and removed in its ``finally``, which also restores every module's ``training``
flag and the grad mode. Nothing touches parameters' ``requires_grad`` or ``.grad``: gradients are
taken with ``torch.autograd.grad`` with respect to the input or to hooked layer outputs only.

Threads: :func:`guarded` holds the model's lock (:func:`polyviz_torch._threads.model_lock`) from its
snapshot to its restoration, so polyviz calls on one model run one at a time, and every hook is
registered through :func:`polyviz_torch._threads.add_hook`, so it acts only in the calling thread
(see :mod:`polyviz_torch._threads` for what that guarantees and what it does not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from polyviz.errors import InputError, LayerError, PolyvizError, TargetError
from polyviz.layout import to_grid
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    OUTPUT,
    ChannelMean,
    ClassScore,
    Gradients,
    LayerDistance,
    LayerGradients,
    LayerNorm,
    MaskSpec,
    NativeCallable,
    Neuron,
    Objective,
    OutputWeighting,
    Rule,
    check_output_objective,
)
from polyviz_torch._threads import add_hook, model_lock

__all__ = ["Runner", "first_conv_channels", "layer_weights", "guarded", "channels_last"]


def _torch_ops() -> Any:
    from polyviz.targets import ArrayOps

    return ArrayOps(
        const=lambda a, like: torch.as_tensor(np.asarray(a), device=like.device, dtype=like.dtype),
        sum=lambda t, axis: t.sum(dim=axis),
        max=lambda t, axis: t.amax(dim=axis),
        minimum=lambda t, c: torch.clamp(t, max=c) if isinstance(c, float | int) else torch.minimum(t, c),
        maximum=lambda t, c: torch.clamp(t, min=c) if isinstance(c, float | int) else torch.maximum(t, c),
        map_channels_last=lambda t: t.permute(0, 2, 3, 1),  # torch maps are (N, K, H, W)
    )


#: :class:`polyviz.targets.ArrayOps` for torch tensors.
TORCH_OPS = _torch_ops()


class _StopForward(Exception):
    """Raised by a hook once every requested activation is captured and the output is not needed."""


def first_conv_channels(model: nn.Module) -> int | None:
    """in_channels of the first ``Conv2d`` in ``model.modules()`` order, or None."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (or buffer); CPU float32 if none."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """NCHW -> NHWC for 4-D tensors; anything else unchanged."""
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


def _permute(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    return t.permute(*order)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


@contextlib.contextmanager
def guarded(model: nn.Module) -> Iterator[list[Any]]:
    """Eval mode for the duration; yields a list for hook handles, all removed on exit; training
    flags and grad mode restored exactly, also when the call raises. The model's lock is held
    throughout, snapshot and restoration included: another thread's polyviz call on the same model
    waits for this one to finish (the lock is re-entrant, so nested use in one thread is fine)."""
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        grad_mode = torch.is_grad_enabled()
        handles: list[Any] = []
        try:
            model.eval()
            yield handles
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in flags:
                module.training = flag
            torch.set_grad_enabled(grad_mode)


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


class Runner:
    """One backend call's worth of torch work on ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess | None, probe: Any, output_target: Any = None) -> None:
        self.model = model
        #: applied to the raw output after the forward pass (see :mod:`polyviz.targets`)
        self.output_target = output_target
        self.preprocess = preprocess
        self.probe = probe
        self.device, self.dtype = device_dtype(model)

    # ---- tensors in ------------------------------------------------------------------------
    def tensor(self, x: np.ndarray | float, dtype: torch.dtype | None = None) -> torch.Tensor:
        arr = np.asarray(x)
        if not arr.flags.writeable:  # a broadcast view: torch wants memory it may write
            arr = arr.copy()
        return torch.as_tensor(arr, device=self.device).to(dtype or self.dtype)

    def model_input(self, x_cl: torch.Tensor) -> torch.Tensor:
        """Preprocess a channels-last batch in torch and permute it to a fresh NCHW tensor."""
        pre = self.preprocess
        if pre is not None:
            x_cl = x_cl * pre.scale
            if pre.channel_order == "BGR":
                x_cl = x_cl.flip(-1)
            mean, std = pre.arrays(int(x_cl.shape[-1]))
            x_cl = (x_cl - self.tensor(mean)) / self.tensor(std)
        # a fresh contiguous tensor: an in-place first layer must not write into the caller's leaf
        return x_cl.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)

    def call_model(self, x_nchw: torch.Tensor) -> torch.Tensor:
        """Run the model; its own exceptions become InputError naming x (chained)."""
        try:
            out = self.model(x_nchw)
        except (_StopForward, PolyvizError):
            raise
        except Exception as exc:
            n, c, h, w = x_nchw.shape
            raise InputError(
                f"x: the model failed on input of shape {(n, h, w, c)} (channels-last; "
                f"{tuple(x_nchw.shape)} as NCHW): {type(exc).__name__}: {exc}"
            ) from exc
        if self.output_target is not None:
            from polyviz.targets import apply_target

            out = apply_target(self.output_target, out, TORCH_OPS)
        if not isinstance(out, torch.Tensor):
            raise InputError(
                f"x: the model returned a {type(out).__name__}, not a tensor; say which part to explain: "
                "explain(..., output='key' or index), or a target from polyviz.targets (SegmentationTarget, "
                "DetectionTarget) or a NativeCallable"
            )
        return out

    def rule_mode(self, rule: Rule) -> contextlib.AbstractContextManager:
        if rule.relu is None:
            return contextlib.nullcontext()
        from polyviz_torch._rules import ReluRuleMode

        return ReluRuleMode(rule.relu)

    # ---- objectives -------------------------------------------------------------------------
    def output_objective(self, objective: Objective, out: torch.Tensor) -> torch.Tensor:
        """One score per sample from the model output (native layout for NativeCallable)."""
        n = int(out.shape[0])
        if isinstance(objective, NativeCallable):
            return self._check_values(objective.fn(out), n)
        cl = channels_last(out)
        check_output_objective(objective, tuple(cl.shape))
        if isinstance(objective, ClassScore):
            if cl.ndim != 2:
                raise TargetError(
                    f"target: a class score needs an (N, K) output, this model returns {tuple(cl.shape)}; "
                    "use OutputWeighting or a NativeCallable objective"
                )
            index = torch.as_tensor(objective.targets(n), device=out.device)
            return cl.gather(1, index[:, None])[:, 0]
        if isinstance(objective, OutputWeighting):
            return _per_sample_sum(cl * self.tensor(objective.weights, cl.dtype))
        raise InputError(f"objective: {type(objective).__name__} is not an output objective")

    def grid(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Layer ``name``'s output (or its gradient) as the layer methods see it: a 4-D map
        channels-last (N, h, w, C) by the layout the probe detected, a token sequence as its patch
        grid, anything else as it is. A 4-D output whose layout is unknown is refused."""
        info = self.probe.info(name)
        layout = None if info is None else info.layout
        if layout is None and t.ndim == 4:
            raise LayerError(
                f"layer: the layout of {name!r}'s 4-D output {tuple(t.shape)} could not be detected (NCHW or "
                "NHWC); polyviz does not guess it. Declare it on the module's class: __polyviz_layout__ = "
                "'NCHW' (or 'NHWC'), or choose another layer"
            )
        if layout is None:
            return t
        return to_grid(t, layout, info.prefix, tuple(info.output_shape), _permute)  # type: ignore[arg-type]

    def layer_objective(self, objective: Objective, act: torch.Tensor) -> torch.Tensor:
        """One score per sample from a layer activation (native layout in, channels-last indexing)."""
        a = self.grid(objective.layers[0], act) if objective.layers else channels_last(act)
        n = int(a.shape[0])
        if isinstance(objective, ChannelMean):
            channels = torch.as_tensor(objective.channels(n), device=a.device)
            picked = a.movedim(-1, 1)[torch.arange(n, device=a.device), channels]
            return picked if picked.ndim == 1 else _per_sample_mean(picked)
        if isinstance(objective, Neuron):
            return a[(slice(None), *(int(i) for i in objective.index))]
        if isinstance(objective, LayerNorm):
            picked = a if objective.channels is None else a[..., list(objective.channels)]
            return _per_sample_mean(picked * picked)
        if isinstance(objective, LayerDistance):
            ref = self.tensor(objective.reference, a.dtype)
            if ref.shape != a.shape and ref.shape != a.shape[1:]:
                raise InputError(
                    f"reference: expected shape {tuple(a.shape[1:])} or {tuple(a.shape)} for layer "
                    f"{objective.layer!r}, got {tuple(ref.shape)}"
                )
            diff = a - ref
            return _per_sample_sum(diff * diff)
        raise InputError(f"objective: {type(objective).__name__} is not a layer objective")

    @staticmethod
    def _check_values(values: Any, n: int) -> torch.Tensor:
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n,):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise InputError(f"objective: NativeCallable.fn must return a tensor of shape ({n},), got {got}")
        return values

    # ---- hooks ------------------------------------------------------------------------------
    def _modules(self, layers: list[str]) -> dict[str, nn.Module]:
        modules = dict(self.model.named_modules())
        for layer in layers:
            calls = self.probe.calls.get(layer, 1)
            if calls > 1:
                raise LayerError(self._twice(layer, calls))
        return {layer: modules[layer] for layer in layers}

    @staticmethod
    def _twice(layer: str, calls: int) -> str:
        return (
            f"layer: {layer!r} is called {calls} times in one forward pass, so its activation is "
            "ambiguous; choose a module that runs once (for a shared activation module such as "
            "ResNet's relu, pick the conv/bn before it or the enclosing block)"
        )

    def _install(
        self,
        handles: list[Any],
        layers: list[str],
        acts: dict[str, torch.Tensor],
        *,
        leaf: bool = False,
        stop: bool = False,
    ) -> None:
        """Forward hooks capturing ``layers``' outputs into ``acts``.

        The hook hands a clone downstream, so an in-place op after the layer (VGG's
        ``ReLU(inplace=True)``) cannot overwrite the captured tensor. ``leaf``: an output that does
        not require grad (the first requested layer under no_grad) is replaced by a fresh leaf that
        requires grad, with grad mode switched on from there: the backward stops at the layers.
        ``stop``: abort the forward once every layer is captured.
        """
        calls: dict[str, int] = {}
        wanted = len(layers)

        def make(name: str):
            def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
                if not isinstance(output, torch.Tensor):
                    raise LayerError(
                        f"layer: {name!r} returns a {type(output).__name__}, not a tensor; choose a "
                        "module with one tensor output"
                    )
                calls[name] = calls.get(name, 0) + 1
                if calls[name] > 1:
                    raise LayerError(self._twice(name, calls[name]))
                if leaf and not output.requires_grad:
                    torch.set_grad_enabled(True)
                    captured = output.detach().clone().requires_grad_()
                else:
                    captured = output
                acts[name] = captured
                if stop and len(acts) == wanted:
                    raise _StopForward
                return captured.clone()

            return hook

        for name, module in self._modules(layers).items():
            add_hook(handles, module, make(name))

    def _run(self, x_nchw: torch.Tensor, stop: bool) -> torch.Tensor | None:
        try:
            return self.call_model(x_nchw)
        except _StopForward:
            if not stop:
                raise
            return None

    @staticmethod
    def _check_ran(layers: list[str], acts: dict[str, torch.Tensor]) -> None:
        for layer in layers:
            if layer not in acts:
                raise LayerError(f"layer: {layer!r} did not run in the forward pass for this input")

    # ---- calls ------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        with guarded(self.model), torch.no_grad():
            return to_numpy(self.call_model(self.model_input(self.tensor(x))))

    def input_gradient(self, x: np.ndarray, objective: Objective, rule: Rule) -> Gradients:
        if rule.lrp:
            from polyviz_torch._lrp import relevance

            return relevance(self, x, objective, rule)
        layers = list(objective.layers)
        with guarded(self.model) as handles, torch.enable_grad():
            leaf = self.tensor(x).requires_grad_()
            acts: dict[str, torch.Tensor] = {}
            if layers:
                self._install(handles, layers, acts, stop=True)
            with self.rule_mode(rule):
                out = self._run(self.model_input(leaf), stop=bool(layers))
            if layers:
                self._check_ran(layers, acts)
                values = self.layer_objective(objective, acts[layers[0]])
            else:
                values = self.output_objective(objective, out)
            if not values.requires_grad:
                grad = torch.zeros_like(leaf)
            else:
                (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
                grad = torch.zeros_like(leaf) if grad is None else grad
            return Gradients(to_numpy(values), to_numpy(grad))

    def layer_activations(self, x: np.ndarray, layers: list[str], include_output: bool) -> dict[str, np.ndarray]:
        with guarded(self.model) as handles, torch.no_grad():
            acts: dict[str, torch.Tensor] = {}
            self._install(handles, layers, acts, stop=not include_output)
            out = self._run(self.model_input(self.tensor(x)), stop=not include_output)
            self._check_ran(layers, acts)
            result = {name: to_numpy(self.grid(name, acts[name])) for name in layers}
            if include_output and out is not None:
                result[OUTPUT] = to_numpy(channels_last(out))
            return result

    def layer_gradients(self, x: np.ndarray, layers: list[str], objective: Objective, rule: Rule) -> LayerGradients:
        objective_layers = [name for name in objective.layers if name not in layers]
        wanted = layers + objective_layers
        with guarded(self.model) as handles:
            torch.set_grad_enabled(False)
            acts: dict[str, torch.Tensor] = {}
            stop = bool(objective.layers)
            self._install(handles, wanted, acts, leaf=True, stop=stop)
            with self.rule_mode(rule):
                out = self._run(self.model_input(self.tensor(x)), stop=stop)
            self._check_ran(wanted, acts)
            torch.set_grad_enabled(True)
            if objective.layers:
                values = self.layer_objective(objective, acts[objective.layers[0]])
            else:
                values = self.output_objective(objective, out)
            targets = [acts[name] for name in layers]
            if values.requires_grad:
                grads = torch.autograd.grad(values.sum(), targets, allow_unused=True)
            else:
                grads = (None,) * len(targets)
            gradients = {
                name: to_numpy(self.grid(name, torch.zeros_like(t) if g is None else g))
                for name, t, g in zip(layers, targets, grads)
            }
            activations = {name: to_numpy(self.grid(name, acts[name])) for name in layers}
            return LayerGradients(to_numpy(values), activations, gradients)

    @staticmethod
    def _scores(out: torch.Tensor, objective: ClassScore | None, start: int, m: int) -> torch.Tensor:
        """Outputs of one chunk of masked inputs, or the per-mask class scores."""
        cl = channels_last(out)
        if objective is None:
            return cl
        if start == 0:
            check_output_objective(objective, (m, *cl.shape[1:]))
        targets = torch.as_tensor(objective.targets(m)[start : start + len(out)], device=out.device)
        return cl.gather(1, targets[:, None])[:, 0]

    def masked_scores(
        self,
        x: np.ndarray,
        masks: MaskSpec,
        baseline: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
        batch: int,
    ) -> np.ndarray:
        from polyviz_torch._masks import MaskBuilder

        m = len(sample_index)
        with guarded(self.model), torch.no_grad():
            xt = self.tensor(x)
            builder = MaskBuilder(masks, int(x.shape[1]), int(x.shape[2]), self.device, self.dtype)
            base = self.tensor(baseline)
            index = torch.as_tensor(sample_index, device=self.device)
            outs = []
            for start in range(0, m, batch):
                idx = index[start : start + batch]
                mask = builder.masks(start, start + len(idx))[..., None]
                b = base[idx] if base.ndim == 4 else base
                inputs = xt[idx] * mask + b * (1.0 - mask)
                out = self.call_model(self.model_input(inputs))
                outs.append(self._scores(out, objective, start, m))
            return to_numpy(torch.cat(outs)) if outs else np.zeros((0,), np.float32)

    def layer_masked_scores(
        self,
        x: np.ndarray,
        layer: str,
        keep: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
        batch: int,
    ) -> np.ndarray:
        m = len(sample_index)
        (module,) = self._modules([layer]).values()
        scale: dict[str, torch.Tensor] = {}

        info = self.probe.info(layer)
        layout = None if info is None else info.layout
        channel_axis = -1 if layout is None or len(layout) != 4 else layout.index("C")

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> Any:
            k = scale["keep"]
            if output.ndim == 4 and layout is None:
                self.grid(layer, output)  # refuses the unknown layout
            shape = [k.shape[0]] + [1] * (output.ndim - 1)
            shape[channel_axis] = k.shape[1]
            return output * k.reshape(shape)

        with guarded(self.model) as handles, torch.no_grad():
            xt = self.tensor(x)
            keep_t = self.tensor(keep)
            index = torch.as_tensor(sample_index, device=self.device)
            add_hook(handles, module, hook)
            outs = []
            for start in range(0, m, batch):
                scale["keep"] = keep_t[start : start + batch]
                out = self.call_model(self.model_input(xt[index[start : start + batch]]))
                outs.append(self._scores(out, objective, start, m))
            return to_numpy(torch.cat(outs))


def layer_weights(model: nn.Module, name: str, probe: Any) -> dict[str, np.ndarray]:
    """A module's weights in canonical layout: Conv2d kernel (kh, kw, in, out), Linear kernel
    (in, out) with rows in (H, W, C) order when it is fed by a flattened map, plus bias; any other
    module's parameters by their (nested) names. A ReLU module run right after a Conv2d/Linear
    stands for the fused layer (what ``build`` maps a spec conv with ``activation="relu"`` to), so
    it answers that layer's weights."""
    modules = dict(model.named_modules())
    module = modules[name]
    if not any(True for _ in module.parameters()) and name in probe.fused_with:
        name = probe.fused_with[name]
        module = modules[name]
    if isinstance(module, nn.Conv2d):
        out = {"kernel": to_numpy(module.weight.permute(2, 3, 1, 0))}
    elif isinstance(module, nn.Linear):
        kernel = module.weight.detach()
        if name in probe.flattened_from:
            h, w, c = probe.flattened_from[name]
            kernel = kernel.reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(kernel.shape[0], -1)
        out = {"kernel": to_numpy(kernel.t())}
    else:
        return {pname: to_numpy(p) for pname, p in module.named_parameters()}
    if module.bias is not None:
        out["bias"] = to_numpy(module.bias)
    return out
