"""The :class:`TorchBackend` class. Light: torch is imported inside its methods, never at import."""

from __future__ import annotations

import sys
import threading
from typing import Any, ClassVar

import numpy as np

from polyviz.errors import CapabilityError, InputError
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    Backend,
    Capability,
    ClassScore,
    Gradients,
    LayerGradients,
    LayerInfo,
    MaskSpec,
    Objective,
    Rule,
)
from polyviz_torch._compat import guard_triton

#: Masked inputs per forward batch in :meth:`TorchBackend._masked_scores`.
MASK_BATCH = 64

#: Capabilities realised with Python forward hooks or a ``TorchFunctionMode``; a TorchScript module
#: runs neither (its graph executes in C++), so on one they would fail or silently do nothing.
HOOKED = frozenset({
    Capability.LAYER_ACTIVATIONS, Capability.LAYER_GRADIENTS, Capability.LAYER_MASKED_SCORES,
    Capability.LAYER_REPLACE, Capability.RELU_RULES, Capability.LRP, Capability.DEEPLIFT,
})


class TorchBackend(Backend):
    """``torch.nn.Module`` models, on whatever device their parameters live (CPU, CUDA).

    Layers are named by module path (``features.29``, ``layer4.2.conv3``). Activations are read
    with forward hooks registered for one call only; gradients come from ``torch.autograd.grad``
    with respect to the input (or to the hooked layer outputs), never to the parameters. ReLU
    rules (guided backprop, deconvnet) are applied by a ``TorchFunctionMode`` active during the call,
    so they reach ``nn.ReLU`` modules and functional ReLUs alike without touching the model.

    Threads: one backend (and one model) may be used from several threads. Calls on one model run
    one at a time (a per-model lock), hooks act only in the thread that registered them, and the
    input size that selects the probe (``last_input_shape``) is kept per thread; see
    :mod:`polyviz_torch._threads`.
    """

    name: ClassVar[str] = "torch"
    native_layout: ClassVar[str] = "NCHW"
    extra: ClassVar[str] = "polyviz[torch]"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {
            Capability.FORWARD,
            Capability.INPUT_GRADIENT,
            Capability.LAYER_ACTIVATIONS,
            Capability.LAYER_GRADIENTS,
            Capability.RELU_RULES,
            Capability.MASKED_SCORES,
            Capability.LAYER_MASKED_SCORES,
            Capability.CALLABLE_OBJECTIVE,
            Capability.LAYER_WEIGHTS,
            Capability.BUILD,
            Capability.ZOO,
            Capability.LRP,
            Capability.LAYER_REPLACE,
            Capability.REWEIGHT,
            Capability.DEEPLIFT,
            Capability.OUTPUT_TARGET,
        }
    )

    def __init__(
        self,
        model: Any,
        *,
        preprocess: Preprocess | None = None,
        input_shape: tuple[int, int, int] | None = None,
        output: Any = None,
    ) -> None:
        guard_triton()  # torch code paths may import torch._dynamo -> triton; see _compat
        import torch

        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            # its replicas run in worker threads, where polyviz hooks do not act (see _threads):
            # layer methods and backward rules would silently see nothing
            raise CapabilityError(f"model: {type(model).__name__} is not supported (its replicas run in "
                                  "worker threads); explain model.module")
        if input_shape is not None:
            try:
                input_shape = tuple(int(d) for d in input_shape)  # type: ignore[assignment]
            except (TypeError, ValueError):
                raise InputError(f"input_shape: expected (H, W, C) ints, got {input_shape!r}") from None
            if len(input_shape) != 3 or min(input_shape) < 1:
                raise InputError(f"input_shape: expected (H, W, C) positive ints, got {input_shape!r}")
        options: dict[str, Any] = {"input_shape": input_shape}
        if output is not None:  # a structured output or a one-score target: see polyviz.targets
            options["output"] = output
        super().__init__(model, preprocess=preprocess, **options)
        self._input_shape_option: tuple[int, int, int] | None = input_shape
        #: Probe results (see :mod:`polyviz_torch._probe`) per input size.
        self._probes: dict[Any, Any] = {}
        self._channels: int | None = None

    @property  # type: ignore[override]
    def last_input_shape(self) -> tuple[int, ...] | None:
        """Shape of the last batch this thread validated (the probe and ``layers()`` are keyed on
        it): per thread, so that concurrent calls at different sizes each use their own; a thread
        that has validated nothing sees the last shape any thread set."""
        local = self.__dict__.get("_shape_local")
        shape = getattr(local, "shape", self.__dict__.get("_shape_any"))
        return shape

    @last_input_shape.setter
    def last_input_shape(self, shape: tuple[int, ...] | None) -> None:
        local = self.__dict__.get("_shape_local")
        if local is None:
            local = self.__dict__["_shape_local"] = threading.local()
        local.shape = shape
        self.__dict__["_shape_any"] = shape

    # ---- identity ---------------------------------------------------------------------------
    @classmethod
    def claims(cls, model: Any) -> bool:
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        try:
            return isinstance(model, torch.nn.Module)
        except Exception:  # a broken or partial torch module
            return False

    @classmethod
    def framework_version(cls) -> str | None:
        try:
            import torch
        except ImportError:
            return None
        return str(torch.__version__)

    @property
    def input_shape(self) -> tuple[Any, ...] | None:
        """(None, None, C): C from the ``input_shape`` option or the first ``Conv2d``'s in_channels."""
        if self._input_shape_option is not None:
            return (None, None, self._input_shape_option[2])
        if self._channels is None:
            from polyviz_torch._impl import first_conv_channels

            self._channels = first_conv_channels(self.model)
        if self._channels is None:
            return None
        return (None, None, self._channels)

    def as_numpy(self, x: Any) -> np.ndarray:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            x = x.detach()
            # floats as float32; integer/bool/complex tensors keep their dtype for check_input to refuse
            return (x.float() if x.is_floating_point() else x).cpu().numpy()
        return super().as_numpy(x)

    def require(self, capability: str) -> None:
        """As :meth:`Backend.require`; on a TorchScript module the capabilities that need hooks are
        refused with that reason (guided backprop there would silently be saliency)."""
        torch = sys.modules.get("torch")
        if capability in HOOKED and torch is not None and isinstance(self.model, torch.jit.ScriptModule):
            raise CapabilityError(
                f"model: a TorchScript module runs no Python hooks, and {capability!r} needs them (layer "
                "outputs, CAMs, ReLU rules, LRP, DeepLIFT); gradient and perturbation methods work. For the "
                "others load the Python nn.Module (torch.save(model), or its class and state_dict)"
            )
        super().require(capability)

    # ---- helpers ----------------------------------------------------------------------------
    def _runner(self) -> Any:
        from polyviz_torch._impl import Runner

        return Runner(self.model, self.preprocess, self._probe(), self.output_target)

    def _probe(self) -> Any:
        """Execution order, output shapes and call counts of every module for the current size."""
        from polyviz_torch._probe import probe

        key = self.last_input_shape[1:] if self.last_input_shape is not None else None
        if key not in self._probes:
            if key is not None:
                size = tuple(int(d) for d in key)
            elif self._input_shape_option is not None:
                size = self._input_shape_option
            else:
                size = (224, 224, self.input_shape[-1] if self.input_shape else 3)
            self._probes[key] = probe(self.model, size)
        return self._probes[key]

    # ---- framework hooks --------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self._runner().forward(x)

    def _input_gradient(self, x: np.ndarray, objective: Objective, rule: Rule) -> Gradients:
        return self._runner().input_gradient(x, objective, rule)

    def _layer_activations(self, x: np.ndarray, layers: list[str], include_output: bool) -> dict[str, np.ndarray]:
        return self._runner().layer_activations(x, layers, include_output)

    def _layer_gradients(self, x: np.ndarray, layers: list[str], objective: Objective, rule: Rule) -> LayerGradients:
        return self._runner().layer_gradients(x, layers, objective, rule)

    def _masked_scores(
        self,
        x: np.ndarray,
        masks: MaskSpec,
        baseline: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
    ) -> np.ndarray:
        return self._runner().masked_scores(x, masks, baseline, sample_index, objective, MASK_BATCH)

    def _layer_masked_scores(
        self,
        x: np.ndarray,
        layer: str,
        keep: np.ndarray,
        sample_index: np.ndarray,
        objective: ClassScore | None,
    ) -> np.ndarray:
        return self._runner().layer_masked_scores(x, layer, keep, sample_index, objective, MASK_BATCH)

    def _replaced_layer_gradients(
        self, x: np.ndarray, layer: str, activation: np.ndarray, objective: Objective
    ) -> LayerGradients:
        from polyviz_torch._replace import replaced_layer_gradients

        return replaced_layer_gradients(self._runner(), x, layer, activation, objective)

    def _deeplift_gradient(self, x: np.ndarray, reference: np.ndarray, objective: Objective) -> Gradients:
        from polyviz_torch._deeplift import deeplift_gradient

        return deeplift_gradient(self._runner(), x, reference, objective)

    def _layers(self) -> list[LayerInfo]:
        return list(self._probe().infos)

    def _with_weights(self, weights: dict[str, dict[str, np.ndarray]]) -> Backend:
        from polyviz_torch._reweight import reweighted_copy
        from polyviz_torch._threads import model_lock

        with model_lock(self.model):  # no other call's eval flags or hooks in the copy
            clone = reweighted_copy(self.model, weights, self._probe())
        backend = type(self)(clone, preprocess=self.preprocess, input_shape=self._input_shape_option,
                             output=self.output_target)
        backend._owned_model = clone  # the backend holds its model weakly: keep the copy alive with it
        backend.last_input_shape = self.last_input_shape
        return backend

    def _layer_weights(self, name: str) -> dict[str, np.ndarray]:
        from polyviz_torch._impl import layer_weights

        return layer_weights(self.model, name, self._probe())

    def _layer_config(self, name: str) -> dict[str, Any]:
        from polyviz_torch._config import module_config

        probe = self._probe()
        return module_config(self.model, name, probe.fused_with, probe.ok)

    # ---- building, conversion, zoo, safety -----------------------------------------------------
    @classmethod
    def build(cls, spec: Any, weights: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[Any, dict[str, str]]:
        """A torchvision-VGG-structured ``nn.Module`` (``features``, ``avgpool``, ``classifier``).

        A dense layer with ``activation="softmax"`` becomes a plain ``Linear``: torch models return
        logits by convention, and polyviz scores pre-softmax logits anyway.
        """
        from polyviz_torch._build import build

        return build(spec, weights)

    @classmethod
    def export(
        cls, model: Any, *, input_shape: tuple[int, int, int] | None = None
    ) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, str]]:
        """Read a VGG-style module (Conv2d/ReLU/pools/Flatten/Linear/Dropout in execution order)
        as (NetworkSpec, canonical weights, {spec name: module path}). ``input_shape`` (H, W, C)
        sets the probe's size (default: 224 px, or what the first Linear implies)."""
        from polyviz_torch._build import export

        return export(model, input_shape)

    @classmethod
    def float64_copy(cls, model: Any) -> Any:
        """A float64 deep copy of ``model`` (``copy.deepcopy(model).double()``; the user's module is
        untouched), for the float32 noise floor of ``polyviz crosscheck``. The backend runs a model
        in its own dtype, so the copy runs in float64 end to end (inputs are cast up exactly)."""
        import copy

        return copy.deepcopy(model).double()

    @classmethod
    def seeded_model(cls, name: str, seed: int = 0, input_shape: tuple[int, int, int] = (224, 224, 3)) -> Any:
        """torchvision's ``name`` (resnet18, resnet50, mobilenet_v2, efficientnet_b0, densenet121)
        with numpy-drawn weights and BatchNorm statistics (``polyviz_torch._seeded``)."""
        from polyviz_torch._seeded import seeded_model

        return seeded_model(name, seed)

    @classmethod
    def vgg(cls, name: str, weights: Any = None) -> Any:
        from polyviz_torch._zoo import vgg

        return vgg(name, weights)

    @classmethod
    def load_model(cls, source: Any, weights: Any = None, *, arch: str | None = None, trust_pickle: bool = False) -> Any:
        """A model from a file or a torchvision name (``polyviz_torch._load.load_model``): TorchScript,
        weights (``.safetensors``/state dict) with ``arch``; full pickles and ``.pt2`` only with
        ``trust_pickle`` (they can run code)."""
        from polyviz_torch._load import load_model

        return load_model(source, weights, arch=arch, trust_pickle=trust_pickle)

    @classmethod
    def imagenet_categories(cls) -> list[str]:
        """ImageNet's 1000 class names, as torchvision ships them (no download)."""
        from polyviz_torch._load import imagenet_categories

        return imagenet_categories()

    @classmethod
    def state_fingerprint(cls, model: Any) -> dict[str, Any]:
        from polyviz_torch._state import state_fingerprint

        return state_fingerprint(model)

    def peer_benchmarks(self, model: Any, x: np.ndarray, target: np.ndarray, layer: str, batch: int = 32) -> dict:
        """The same methods in the peer libraries, for ``polyviz bench --peers`` (see ``_peers``)."""
        from polyviz_torch._peers import peer_benchmarks

        return peer_benchmarks(model, x, target, layer, batch)

    def peer_metric_benchmarks(self, model: Any, x: np.ndarray, target: np.ndarray, maps: np.ndarray, layer: str,
                               names: tuple[str, ...], settings: dict[str, dict[str, Any]]) -> dict:
        """Quantus' metrics on the same work, for ``polyviz bench --metrics`` (see ``_quantus``)."""
        from polyviz_torch._quantus import quantus_metric_benchmarks

        return quantus_metric_benchmarks(model, x, target, maps, layer, names, settings)
