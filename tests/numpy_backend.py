"""A minimal third-party-style backend over the numpy reference network, used to test the engine
(registry, conformance suite) without any framework."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from polyviz.models.spec import NetworkSpec, output_shapes
from polyviz.protocol import (
    OUTPUT,
    Backend,
    Capability,
    ChannelMean,
    ClassScore,
    Gradients,
    LayerDistance,
    LayerGradients,
    LayerInfo,
    LayerNorm,
    NativeCallable,
    Neuron,
    OutputWeighting,
    check_output_objective,
)
from polyviz.reference import ReferenceNetwork


class NumpyModel:
    """A model object of the 'numpy framework': a spec and its weights."""

    def __init__(self, spec: NetworkSpec, weights: dict) -> None:
        self.spec = spec
        self.weights = {k: {n: v.copy() for n, v in d.items()} for k, d in weights.items()}
        self.net = ReferenceNetwork(spec, self.weights)


class NumpyBackend(Backend):
    name = "numpy"
    capabilities = frozenset(
        {Capability.FORWARD, Capability.INPUT_GRADIENT, Capability.LAYER_ACTIVATIONS,
         Capability.LAYER_GRADIENTS, Capability.RELU_RULES, Capability.MASKED_SCORES, Capability.LAYER_MASKED_SCORES,
         Capability.CALLABLE_OBJECTIVE, Capability.LAYER_WEIGHTS, Capability.BUILD, Capability.LAYER_REPLACE}
    )

    @classmethod
    def claims(cls, model: Any) -> bool:
        mod = sys.modules.get(__name__)
        return mod is not None and isinstance(model, NumpyModel)

    @property
    def input_shape(self):
        return tuple(self.model.spec.input_shape)

    def _static_class_count(self):
        return int(output_shapes(self.model.spec)[-1][-1])

    @classmethod
    def build(cls, spec, weights=None):
        return NumpyModel(spec, weights), {layer.name: layer.name for layer in spec.layers}

    @classmethod
    def state_fingerprint(cls, model):
        return {f"{k}/{n}": v.copy() for k, d in model.weights.items() for n, v in d.items()}

    def _pre(self, x):
        return self.preprocess.apply(x) if self.preprocess else x

    def _forward(self, x):
        return self.model.net.output(self._pre(x)).astype(np.float32)

    def _grad_of_objective(self, trace, objective, n):
        net = self.model.net
        out = trace.outputs[-1]
        if isinstance(objective, ClassScore | OutputWeighting | NativeCallable):
            check_output_objective(objective, out.shape)
            if isinstance(objective, ClassScore):
                t = objective.targets(n)
                g = np.zeros_like(out)
                g[np.arange(n), t] = 1
                return out[np.arange(n), t], g, None
            if isinstance(objective, OutputWeighting):
                w = np.broadcast_to(objective.weights, out.shape)
                return (out * w).reshape(n, -1).sum(1), w, None
            objective.fn(out)
            raise NotImplementedError("numpy backend: callables are evaluated but not differentiated")
        idx = net.index(objective.layer)
        a = trace.outputs[idx]
        g = np.zeros_like(a)
        if isinstance(objective, ChannelMean):
            ch = objective.channels(n)
            if a.ndim == 4:
                g[np.arange(n), :, :, ch] = 1.0 / (a.shape[1] * a.shape[2])
                v = a[np.arange(n), :, :, ch].mean(axis=(1, 2))
            else:
                g[np.arange(n), ch] = 1
                v = a[np.arange(n), ch]
        elif isinstance(objective, Neuron):
            g[(slice(None), *objective.index)] = 1
            v = a[(slice(None), *objective.index)]
        elif isinstance(objective, LayerNorm):
            sel = list(objective.channels) if objective.channels else list(range(a.shape[-1]))
            g[..., sel] = 2 * a[..., sel] / (a[0][..., sel].size)
            v = (a[..., sel] ** 2).reshape(n, -1).mean(1)
        elif isinstance(objective, LayerDistance):
            g = 2 * (a - objective.reference)
            v = ((a - objective.reference) ** 2).reshape(n, -1).sum(1)
        return v, g, idx

    def _input_gradient(self, x, objective, rule):
        pre = self._pre(x)
        trace = self.model.net.forward(pre)
        v, g, idx = self._grad_of_objective(trace, objective, len(x))
        grad = self.model.net.backward(trace, g, start=idx, relu_rule=rule.relu)
        if self.preprocess:
            p = self.preprocess
            grad = (grad / np.asarray(p.std))[..., ::-1] * p.scale if p.channel_order == "BGR" else grad / np.asarray(p.std) * p.scale
        return Gradients(np.asarray(v, np.float32), grad.astype(np.float32))

    def _layer_activations(self, x, layers, include_output):
        trace = self.model.net.forward(self._pre(x))
        out = {name: trace.outputs[self.model.net.index(name)].astype(np.float32) for name in layers}
        if include_output:
            out[OUTPUT] = trace.outputs[-1].astype(np.float32)
        return out

    def _layer_gradients(self, x, layers, objective, rule):
        net = self.model.net
        trace = net.forward(self._pre(x))
        v, g, idx = self._grad_of_objective(trace, objective, len(x))
        grads = {}
        for name in layers:
            i = net.index(name)
            grads[name] = net.backward(trace, g, start=idx, upto=i + 1, relu_rule=rule.relu).astype(np.float32)
        acts = {name: trace.outputs[net.index(name)].astype(np.float32) for name in layers}
        return LayerGradients(np.asarray(v, np.float32), acts, grads)

    def _replaced_layer_gradients(self, x, layer, activation, objective):
        """The layers after ``layer`` as a network of their own, run from ``activation`` (a
        sequential network: x does not reach them otherwise)."""
        spec = self.model.spec
        idx = self.model.net.index(layer)
        head = ReferenceNetwork(NetworkSpec(tuple(activation.shape[1:]), spec.layers[idx + 1 :]), self.model.weights)
        trace = head.forward(activation)
        if not trace.outputs:  # the layer is the output
            trace.outputs.append(np.asarray(activation, np.float64))
        v, g, _ = self._grad_of_objective(trace, objective, len(x))
        grad = head.backward(trace, g) if head.spec.layers else g
        return LayerGradients(np.asarray(v, np.float32), {layer: activation}, {layer: grad.astype(np.float32)})

    def _layer_masked_scores(self, x, layer, keep, sample_index, objective):
        pre = self._pre(x)
        out = np.stack([self.model.net.forward(pre[i : i + 1], scale=(layer, k)).outputs[-1][0] for i, k in zip(sample_index, keep)])
        if objective is not None:
            out = out[np.arange(len(out)), objective.targets(len(out))]
        return out.astype(np.float32)

    def _layers(self):
        spec = self.model.spec
        return [
            LayerInfo(layer.name, layer.kind, shape, sum(v.size for v in self.model.weights.get(layer.name, {}).values()), True)
            for layer, shape in zip(spec.layers, output_shapes(spec))
        ]

    def _layer_weights(self, name):
        return {k: v.astype(np.float32) for k, v in self.model.weights.get(name, {}).items()}
