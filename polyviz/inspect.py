"""Looking inside a model: its layer table, the feature maps of chosen layers, a layer's kernels.

One answer for either framework, through the backend protocol (:meth:`Backend.layers`,
:meth:`Backend.layer_activations`, :meth:`Backend.layer_weights`):

- :func:`summary`: name, type, output shape, parameters and trainable flag of every layer, printed
  like Keras' ``model.summary()`` and returned as data.
- :func:`activations`: feature maps (N, h, w, C) of chosen layers, for the activation grids of
  Chollet's *Deep Learning with Python* (section 5.4; draw them with
  :func:`polyviz.render.activation_grid`).
- :func:`layer_config`: a layer's configuration (kind, filters or units, kernel size, strides,
  padding, activation) in one vocabulary for every framework.
- :func:`filters`: a convolution layer's kernels (kh, kw, in, out), for
  :func:`polyviz.render.filter_grid` (first-layer RGB kernels in colour, as Zeiler & Fergus 2014
  and Krizhevsky et al. 2012 show them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyviz.errors import InputError, LayerError
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, Capability, LayerInfo
from polyviz.registry import backend_for

__all__ = ["SummaryRow", "Summary", "summary", "activations", "filters", "layer_config", "format_summary"]


@dataclass(frozen=True)
class SummaryRow:
    """One layer of :func:`summary`: ``output_shape`` channels-last without the batch axis (None
    when unknown); ``trainable``: the layer has parameters and they are trainable."""

    name: str
    type: str
    output_shape: tuple[int | None, ...] | None
    params: int
    trainable: bool


class Summary(list):
    """The rows of :func:`summary` (a list of :class:`SummaryRow`) with the totals."""

    @property
    def total_params(self) -> int:
        return int(sum(row.params for row in self))

    @property
    def trainable_params(self) -> int:
        return int(sum(row.params for row in self if row.trainable))

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        return format_summary(self)


def _is_container(info: LayerInfo, names: Sequence[str]) -> bool:
    """A layer that only groups others (torch ``features``, a nested Keras model): its children
    are listed, so counting it too would count their parameters twice."""
    prefixes = (info.name + ".", info.name + "/")
    return any(other.startswith(prefixes) for other in names)


def _backend(model: Any, backend: str | None, preprocess: Preprocess | str | None = None) -> Backend:
    return backend_for(model, backend, preprocess=preprocess)


def _set_input_shape(be: Backend, input_shape: Sequence[int] | None) -> None:
    """Fix the input size the backend reports shapes for (torch modules do not record one)."""
    if input_shape is None:
        return
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape: expected (H, W, C) ints, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape: expected (H, W, C) positive ints, got {input_shape!r}")
    be.check_x(np.zeros((1, *shape), np.float32), name="input_shape")


def summary(
    model: Any,
    *,
    backend: str | None = None,
    input_shape: Sequence[int] | None = None,
    print_table: bool = True,
) -> Summary:
    """Every layer of ``model`` in execution order: name, type, output shape, parameters,
    trainable; printed like Keras' ``model.summary()`` (unless ``print_table=False``) and returned
    as a :class:`Summary` (a list of :class:`SummaryRow` with ``total_params``,
    ``trainable_params`` and ``non_trainable_params``). Each layer's configuration (filters,
    kernel size, strides, padding, activation): :func:`layer_config`.

    Containers (torch ``nn.Sequential`` blocks, nested Keras models) are left out: their layers are
    listed. Output shapes are channels-last (H, W, C) in every framework. A torch module does not
    record its input size: ``input_shape=(H, W, C)`` sets it (default: the last input polyviz saw,
    else 224x224).
    """
    be = _backend(model, backend)
    _set_input_shape(be, input_shape)
    infos = be.layers()
    names = [info.name for info in infos]
    rows = Summary(
        SummaryRow(
            name=info.name,
            type=info.type,
            output_shape=None if info.output_shape is None else tuple(info.output_shape),
            params=int(info.params),
            trainable=bool(info.trainable and info.params > 0),
        )
        for info in infos
        if not _is_container(info, names)
    )
    if print_table:
        print(format_summary(rows, title=f"{be.name} model {type(be.model).__name__}"))
    return rows


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "?"
    return "(None, " + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def format_summary(rows: Sequence[SummaryRow], title: str = "") -> str:
    """The Keras-style table of :func:`summary`'s rows, with the totals."""
    rows = rows if isinstance(rows, Summary) else Summary(rows)
    head = ("Layer (type)", "Output Shape", "Param #", "Trainable")
    body = [(f"{r.name} ({r.type})", _shape_text(r.output_shape), f"{r.params:,}", "Y" if r.trainable else "-")
            for r in rows]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i]) for i in range(4)]
    width = sum(widths) + 3 * 3

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [title] if title else []
    out += ["=" * width, line(head), "=" * width]
    out += [line(b) for b in body]
    out += ["=" * width,
            f"Total params: {rows.total_params:,}",
            f"Trainable params: {rows.trainable_params:,}",
            f"Non-trainable params: {rows.non_trainable_params:,}"]
    if any(r.output_shape is None for r in rows):
        out.append("(? = unknown at this input size; pass input_shape=(H, W, C))")
    return "\n".join(out)


def activations(
    model: Any,
    x: Any,
    layers: str | Sequence[str],
    *,
    backend: str | None = None,
    layout: str | None = None,
    preprocess: Preprocess | str | None = None,
) -> dict[str, np.ndarray]:
    """The activations of ``layers`` (a name or a list of names) for the batch ``x``, as
    ``{layer: float32 array}``: (N, h, w, C) channels-last for feature maps in every framework,
    (N, units) for dense layers.

    ``x`` is in the model's native layout (NCHW for torch, NHWC for Keras) unless ``layout=``
    says otherwise; ``preprocess`` is applied in the graph as for :func:`polyviz.explain`.
    Unknown layer names raise :class:`~polyviz.errors.LayerError` with a did-you-mean.
    """
    be = _backend(model, backend, preprocess)
    be.require(Capability.LAYER_ACTIVATIONS)
    xs, _ = be.check_input(x, layout)
    names = be.check_layers([layers] if isinstance(layers, str) else list(layers))
    out = be.layer_activations(xs, names)
    return {name: np.asarray(out[name], np.float32) for name in names}


def filters(
    model: Any, layer: str, *, backend: str | None = None, input_shape: Sequence[int] | None = None
) -> np.ndarray:
    """The kernels of convolution ``layer`` as float32 (kh, kw, in, out) ('HWIO', Keras' layout,
    what :func:`polyviz.render.filter_grid` takes by default) in every framework; a dense layer
    gives its (in, out) matrix. For a ReLU that directly follows a convolution, that convolution's
    kernels. A layer without a kernel raises :class:`~polyviz.errors.LayerError`. ``input_shape``
    (H, W, C): the input size, for torch modules whose dense rows depend on it (see :func:`summary`).
    """
    be = _backend(model, backend)
    _set_input_shape(be, input_shape)
    be.require(Capability.LAYER_WEIGHTS)
    (name,) = be.check_layers([layer])
    weights = be.layer_weights(name)
    kernel = weights.get("kernel")
    if kernel is None:
        have = ", ".join(sorted(weights)) or "no weights"
        kernels = [r.name for r in summary(be, print_table=False) if r.params > 0]
        raise LayerError(
            f"layer: {name!r} has no kernel ({have}); layers with weights: {', '.join(kernels[:12]) or 'none'}"
        )
    return np.asarray(kernel, np.float32)


def layer_config(
    model: Any, layer: str, *, backend: str | None = None, input_shape: Sequence[int] | None = None
) -> dict[str, Any]:
    """The configuration of ``layer`` in one framework-neutral vocabulary (the layer kinds and
    config keys of :mod:`polyviz.models.spec`), as the "layer config" view of Keras'
    ``layer.get_config()``: e.g. ``{"kind": "conv2d", "filters": 64, "kernel_size": (3, 3),
    "strides": (1, 1), "padding": "same", "dilation": (1, 1), "activation": "relu",
    "use_bias": True}``; ``{"kind": "dense", "units", "activation", "use_bias"}``;
    ``{"kind": "maxpool2d", "pool_size", "strides", "padding"}``; ``{"kind": "other", "type":
    <class name>}`` for a layer outside the vocabulary. Torch padding that keeps the size at stride
    1 reads as "same", none as "valid". A torch ``nn.ReLU`` right after a convolution or linear
    layer (what a Keras ``Conv2D(activation="relu")`` is in torch) answers that layer with
    ``activation="relu"``; the convolution itself has ``activation=None``. Its weights:
    :func:`filters`. Unknown names raise :class:`~polyviz.errors.LayerError` with a did-you-mean.
    ``input_shape`` (H, W, C): the input size torch modules are probed at (see :func:`summary`).
    """
    be = _backend(model, backend)
    _set_input_shape(be, input_shape)
    return be.layer_config(layer)
