"""A framework-neutral description of CNN *graphs* (ResNet, MobileNet, EfficientNet, DenseNet).

:class:`GraphSpec` is the DAG sibling of the chain :class:`~polyviz.models.spec.NetworkSpec`: one
input (H, W, C) channels-last, then :class:`Node` s in execution order, each naming the nodes it
reads. The torch backend reads a module through ``torch.fx`` (``polyviz_torch._fx``) and builds a
``GraphNet`` that runs the nodes; the Keras backend reads a functional model's layer graph and
builds a functional model (``polyviz_keras._kgraph``). Conversion = read in one, build in the other.

Node kinds, their config keys and canonical weights (the Keras layouts):

==================  ===========================================================  ==========================
``conv2d``          filters, kernel_size (kh, kw), strides, padding ((t, b),     kernel (kh, kw, in/groups,
                    (l, r)) explicit zeros, dilation, groups, use_bias           out), bias
``batchnorm``       epsilon, center, scale                                       gamma, beta, mean, variance
``act``             fn: relu relu6 hardswish hardsigmoid silu gelu gelu_tanh
                    sigmoid softmax linear
``zeropad``         padding ((t, b), (l, r))
``maxpool``         pool_size, strides, padding ((t, b), (l, r))
``avgpool``         pool_size, strides, padding (zeros counted, torch's default)
``global_avgpool``  keepdims: (H, W, C) -> (C,) or (1, 1, C)
``reshape``         target ((C,) <-> (1, 1, C) only)
``flatten``         input_shape (H, W, C): canonical order is (H, W, C)
``dense``           units, use_bias                                              kernel (in, out), bias
``add``             (n inputs)
``multiply``        (n inputs, broadcasting (1, 1, C) against (H, W, C))
``concat``          (n inputs, along channels)
``rescale``         scale, offset (scalars or per-channel lists): x * scale + offset
``normalize``       epsilon: (x - mean) / max(sqrt(variance), epsilon)           mean, variance
``dropout``         rate (identity at inference)
==================  ===========================================================  ==========================

Padding is always explicit, so a graph means the same in both frameworks: Keras' ``"same"`` at
stride 2 pads (0, 1) or (1, 2) (more at the end) where torch pads symmetrically; the readers turn
it into numbers for the recorded input size, and the builders emit ``"same"``/``"valid"`` only
where they equal those numbers, else an explicit zero-padding layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from polyviz.errors import InputError

__all__ = ["Node", "GraphSpec", "NODE_KINDS", "ACTIVATIONS", "Pads", "pads"]

NODE_KINDS = (
    "conv2d", "batchnorm", "act", "zeropad", "maxpool", "avgpool", "global_avgpool", "reshape", "flatten",
    "dense", "add", "multiply", "concat", "rescale", "normalize", "dropout",
)
ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "silu", "gelu", "gelu_tanh", "sigmoid", "softmax",
               "linear")
#: Activations whose output is never negative (a zero-padded max-pool after them equals a -inf padded one).
NONNEGATIVE = ("relu", "relu6", "hardsigmoid", "sigmoid", "softmax")

Pads = tuple[tuple[int, int], tuple[int, int]]


def pads(value: Any) -> Pads:
    """((top, bottom), (left, right)) from an int, a (ph, pw) pair or the full form."""
    if isinstance(value, int):
        return ((value, value), (value, value))
    a, b = value
    if isinstance(a, int) and isinstance(b, int):
        return ((int(a), int(a)), (int(b), int(b)))
    return ((int(a[0]), int(a[1])), (int(b[0]), int(b[1])))


def same_pads(size: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilation: tuple[int, int] = (1, 1)) -> Pads:
    """What TensorFlow's ``padding="same"`` pads for an input of ``size`` (H, W): the total
    ``max((ceil(n / s) - 1) * s + k_eff - n, 0)``, its smaller half at the start."""
    out = []
    for n, k, s, d in zip(size, kernel, strides, dilation):
        k_eff = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + k_eff - n, 0)
        out.append((total // 2, total - total // 2))
    return (out[0], out[1])


@dataclass(frozen=True)
class Node:
    """One operation: kind, name (unique; used as the layer / module name by builders), the names
    of the nodes it reads (the graph input is ``GraphSpec.input_name``), its configuration."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise InputError(f"kind: unknown node kind {self.kind!r}; expected one of {NODE_KINDS}")
        if self.kind == "act" and self.config.get("fn") not in ACTIVATIONS:
            raise InputError(f"config: activation {self.config.get('fn')!r} of {self.name!r} is not one of {ACTIVATIONS}")


@dataclass(frozen=True)
class GraphSpec:
    """A single-input, single-output network as a DAG of :class:`Node` s in execution order."""

    input_shape: tuple[int, int, int]
    nodes: tuple[Node, ...]
    output: str
    input_name: str = "input"

    def __post_init__(self) -> None:
        seen = {self.input_name}
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in seen]
            if missing:
                raise InputError(f"nodes: {node.name!r} reads {missing} before they are computed")
            if node.name in seen:
                raise InputError(f"nodes: two nodes are named {node.name!r}")
            seen.add(node.name)
        if self.output not in seen:
            raise InputError(f"output: no node {self.output!r}")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InputError(f"node: no node {name!r} in this graph")

    def consumers(self) -> dict[str, list[str]]:
        """{node name: names of the nodes that read it}."""
        out: dict[str, list[str]] = {self.input_name: [], **{n.name: [] for n in self.nodes}}
        for node in self.nodes:
            for i in node.inputs:
                out[i].append(node.name)
        return out
