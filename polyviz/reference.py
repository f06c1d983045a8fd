"""A numpy reference network: forward and (rule-modified) backward for :class:`NetworkSpec` models.

It is the yardstick of the conformance suite (:mod:`polyviz.testing`): a backend's forward pass,
input and layer gradients, ReLU rules and objectives are checked against it on a tiny network,
and it is itself checked against finite differences. It is written for clarity, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyviz.errors import InputError
from polyviz.models.spec import NetworkSpec, _pair

__all__ = ["ReferenceNetwork", "Trace"]


def _pad_amounts(padding: object, kh: int, kw: int, h: int, w: int, sh: int, sw: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding, with TensorFlow's 'same' convention."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        out_h, out_w = -(-h // sh), -(-w // sw)
        ph = max((out_h - 1) * sh + kh - h, 0)
        pw = max((out_w - 1) * sw + kw - w, 0)
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2
    p_h, p_w = _pair(padding)
    return p_h, p_h, p_w, p_w


@dataclass
class Trace:
    """Everything a forward pass leaves for the backward pass."""

    inputs: list[np.ndarray]  # input of each layer
    outputs: list[np.ndarray]  # output of each layer
    pre_activations: list[np.ndarray | None]  # fused-activation layers: before the ReLU


class ReferenceNetwork:
    """Runs a :class:`NetworkSpec` with canonical weights in float64 numpy."""

    def __init__(self, spec: NetworkSpec, weights: dict[str, dict[str, np.ndarray]]) -> None:
        self.spec = spec
        self.weights = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in weights.items()}
        self.names = [layer.name for layer in spec.layers]

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: np.ndarray, scale: tuple[str, np.ndarray] | None = None) -> Trace:
        """Run the network; ``scale=(layer, factors)`` multiplies that layer's output by
        ``factors`` (broadcast channels-last) before the pass continues (channel ablation)."""
        a = np.asarray(x, np.float64)
        trace = Trace([], [], [])
        for layer in self.spec.layers:
            trace.inputs.append(a)
            pre = None
            cfg = layer.config
            if layer.kind == "conv2d":
                pre = self._conv(a, layer.name, cfg)
                a = self._activate(pre, cfg.get("activation"))
            elif layer.kind == "dense":
                w = self.weights[layer.name]
                pre = a @ w["kernel"] + w.get("bias", 0.0)
                a = self._activate(pre, cfg.get("activation"))
            elif layer.kind == "relu":
                pre = a
                a = np.maximum(a, 0.0)
            elif layer.kind == "maxpool2d":
                a = self._pool(a, cfg, np.max)
            elif layer.kind == "avgpool2d":
                a = self._pool(a, cfg, np.mean)
            elif layer.kind == "global_avgpool":
                a = a.mean(axis=(1, 2))
            elif layer.kind == "flatten":
                a = a.reshape(len(a), -1)
            elif layer.kind == "softmax":
                e = np.exp(a - a.max(axis=-1, keepdims=True))
                a = e / e.sum(axis=-1, keepdims=True)
            elif layer.kind in ("dropout", "adaptive_avgpool2d"):
                if layer.kind == "adaptive_avgpool2d" and a.shape[1:3] != _pair(cfg["output_size"]):
                    raise InputError("adaptive_avgpool2d: the reference supports the identity case only")
            if scale is not None and scale[0] == layer.name:
                a = a * scale[1]
            trace.pre_activations.append(pre)
            trace.outputs.append(a)
        return trace

    def output(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).outputs[-1]

    @staticmethod
    def _activate(z: np.ndarray, activation: str | None) -> np.ndarray:
        if activation == "relu":
            return np.maximum(z, 0.0)
        if activation == "softmax":
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return z

    def _conv_geometry(self, a: np.ndarray, cfg: dict) -> tuple:
        kh, kw = _pair(cfg["kernel_size"])
        sh, sw = _pair(cfg.get("strides", 1))
        top, bottom, left, right = _pad_amounts(cfg.get("padding", "valid"), kh, kw, a.shape[1], a.shape[2], sh, sw)
        return kh, kw, sh, sw, top, bottom, left, right

    def _conv(self, a: np.ndarray, name: str, cfg: dict) -> np.ndarray:
        kh, kw, sh, sw, top, bottom, left, right = self._conv_geometry(a, cfg)
        padded = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
        kernel = self.weights[name]["kernel"]
        ho = (padded.shape[1] - kh) // sh + 1
        wo = (padded.shape[2] - kw) // sw + 1
        out = np.zeros((len(a), ho, wo, kernel.shape[-1]))
        for i in range(kh):
            for j in range(kw):
                patch = padded[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
                out += patch @ kernel[i, j]
        return out + self.weights[name].get("bias", 0.0)

    @staticmethod
    def _windows(a: np.ndarray, cfg: dict) -> tuple[np.ndarray, int, int, int, int]:
        ph, pw = _pair(cfg.get("pool_size", 2))
        sh, sw = _pair(cfg.get("strides", cfg.get("pool_size", 2)))
        ho = (a.shape[1] - ph) // sh + 1
        wo = (a.shape[2] - pw) // sw + 1
        win = np.stack(
            [a[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] for i in range(ph) for j in range(pw)],
            axis=-1,
        )
        return win, ph, pw, sh, sw

    def _pool(self, a: np.ndarray, cfg: dict, reduce) -> np.ndarray:
        win = self._windows(a, cfg)[0]
        return reduce(win, axis=-1)

    # ---- backward --------------------------------------------------------------------------
    def backward(
        self,
        trace: Trace,
        grad_out: np.ndarray,
        *,
        upto: int = 0,
        relu_rule: str | None = None,
        start: int | None = None,
    ) -> np.ndarray:
        """Propagate ``grad_out`` (the gradient w.r.t. the output of layer ``start``, default the
        last) down to the input of layer ``upto``; returns d/d(input of layer ``upto``)."""
        g = np.asarray(grad_out, np.float64)
        last = len(self.spec.layers) - 1 if start is None else start
        for idx in range(last, upto - 1, -1):
            layer = self.spec.layers[idx]
            cfg = layer.config
            a_in = trace.inputs[idx]
            if layer.kind in ("conv2d", "dense"):
                if cfg.get("activation") == "relu":
                    g = self._relu_back(g, trace.pre_activations[idx], relu_rule)
                elif cfg.get("activation") == "softmax":
                    raise InputError("the reference differentiates logits; drop the softmax")
                if layer.kind == "dense":
                    g = g @ self.weights[layer.name]["kernel"].T
                else:
                    g = self._conv_back(g, a_in, layer.name, cfg)
            elif layer.kind == "relu":
                g = self._relu_back(g, trace.pre_activations[idx], relu_rule)
            elif layer.kind == "maxpool2d":
                g = self._maxpool_back(g, a_in, cfg)
            elif layer.kind == "avgpool2d":
                g = self._avgpool_back(g, a_in, cfg)
            elif layer.kind == "global_avgpool":
                h, w = a_in.shape[1:3]
                g = np.broadcast_to(g[:, None, None, :] / (h * w), a_in.shape).copy()
            elif layer.kind == "flatten":
                g = g.reshape(a_in.shape)
            elif layer.kind == "softmax":
                raise InputError("the reference differentiates logits; drop the softmax")
        return g

    @staticmethod
    def _relu_back(g: np.ndarray, z: np.ndarray, rule: str | None) -> np.ndarray:
        if rule == "deconvnet":
            return np.maximum(g, 0.0)
        g = g * (z > 0)
        if rule == "guided":
            g = np.maximum(g, 0.0)
        return g

    def _conv_back(self, g: np.ndarray, a_in: np.ndarray, name: str, cfg: dict) -> np.ndarray:
        kh, kw, sh, sw, top, bottom, left, right = self._conv_geometry(a_in, cfg)
        kernel = self.weights[name]["kernel"]
        n, h, w, c = a_in.shape
        padded = np.zeros((n, h + top + bottom, w + left + right, c))
        ho, wo = g.shape[1:3]
        for i in range(kh):
            for j in range(kw):
                padded[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += g @ kernel[i, j].T
        return padded[:, top : top + h, left : left + w, :]

    def _maxpool_back(self, g: np.ndarray, a_in: np.ndarray, cfg: dict) -> np.ndarray:
        win, ph, pw, sh, sw = self._windows(a_in, cfg)
        arg = win.argmax(axis=-1)
        out = np.zeros_like(a_in)
        ho, wo = g.shape[1:3]
        for k in range(ph * pw):
            i, j = divmod(k, pw)
            out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += g * (arg == k)
        return out

    def _avgpool_back(self, g: np.ndarray, a_in: np.ndarray, cfg: dict) -> np.ndarray:
        ph, pw = _pair(cfg.get("pool_size", 2))
        sh, sw = _pair(cfg.get("strides", cfg.get("pool_size", 2)))
        out = np.zeros_like(a_in)
        ho, wo = g.shape[1:3]
        for i in range(ph):
            for j in range(pw):
                out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += g / (ph * pw)
        return out

    # ---- conveniences used by the conformance suite ----------------------------------------
    def index(self, name: str) -> int:
        return self.names.index(name)

    def input_gradient(self, x: np.ndarray, grad_output: np.ndarray, relu_rule: str | None = None) -> np.ndarray:
        """d(sum(grad_output * output))/dx under the rule."""
        trace = self.forward(x)
        return self.backward(trace, grad_output, relu_rule=relu_rule)

    def layer_objective_gradient(
        self, x: np.ndarray, layer: str, grad_layer: np.ndarray, relu_rule: str | None = None
    ) -> np.ndarray:
        """Gradient w.r.t. x of sum(grad_layer * activation of ``layer``)."""
        trace = self.forward(x)
        return self.backward(trace, grad_layer, start=self.index(layer), relu_rule=relu_rule)
