"""The one place where polyviz reaches Keras internals, each use guarded and documented.

Everything else in :mod:`polyviz_keras` uses public Keras API only (``keras.Model``,
``keras.Sequential``, ``keras.Function``, ``Function.operations``/``inputs``/``outputs``,
``Operation.output``, ``keras.layers.*``, ``keras.ops``), and no module imports ``keras.src`` or
``tensorflow.python`` (``tests/test_keras_graph_safety.py`` checks). Keras has no public API for
the three things below, so they are read here with ``getattr``: when a Keras release removes or
changes one, polyviz raises a one-line :class:`polyviz.errors.CapabilityError` naming the installed
Keras version, instead of an ``ImportError`` at import or an ``AttributeError`` deep in a trace.

* ``Function._run_through_graph(inputs, operation_fn=...)``: runs a functional model's nodes in
  order, calling ``operation_fn(operation)(*args, **kwargs)`` at each. polyviz passes an
  ``operation_fn`` that records, replaces or re-routes one layer's output (layer activations,
  ReLU rules, LRP, DeepLIFT, pre-softmax logits) without editing or cloning the model. Present,
  with that signature, from Keras 3.0 to Keras' main branch of August 2026 (which deleted the
  module-level helper ``keras.src.models.functional.operation_fn`` polyviz used to import; polyviz
  now passes ``training=False`` itself, see :func:`polyviz_keras._graph.call_operation`).
* ``KerasTensor._keras_history``: the operation that produced a symbolic tensor, used only when the
  public search (``Operation.output`` of each of the model's operations) does not find the
  producer of the model's output (a layer whose first call is in another model).
* ``Operation._inbound_nodes``: how many times a layer is called, used only by ``export`` (a chain
  of layers, each called once).

Sequential models need none of these: they run as their layers in order (``Sequential.layers``).
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

from polyviz.errors import CapabilityError

__all__ = ["run_through_graph", "producer_of", "call_count"]

#: The Keras release polyviz's use of the internals above is tested with.
TESTED = "3.15"


def _unsupported(what: str) -> CapabilityError:
    return CapabilityError(
        f"keras: Keras {keras.__version__} changed {what}, which polyviz needs and Keras has no public API "
        f"for; install a Keras release polyviz is tested with (keras {TESTED}, see pyproject.toml)"
    )


def run_through_graph(graph: Any, inputs: Any, operation_fn: Any) -> Any:
    """``graph._run_through_graph(inputs, operation_fn=operation_fn)`` for a functional model."""
    method = getattr(graph, "_run_through_graph", None)
    if not callable(method):
        raise _unsupported("Function._run_through_graph")
    try:
        takes = "operation_fn" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        raise _unsupported("the signature of Function._run_through_graph (no operation_fn)")
    return method(inputs, operation_fn=operation_fn)


def producer_of(tensor: Any) -> Any | None:
    """The operation recorded as having produced the symbolic ``tensor`` (None if unknown)."""
    history = getattr(tensor, "_keras_history", None)
    try:
        return history[0] if history else None
    except (TypeError, IndexError):
        return None


def call_count(layer: Any) -> int:
    """How many times ``layer`` has been called on symbolic inputs (its inbound nodes)."""
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes is None:
        raise _unsupported("Operation._inbound_nodes")
    return len(nodes)
