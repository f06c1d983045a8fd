"""The demo model: a small VGG-style network trained on :func:`polyviz.datasets.shapes`.

It has VGG16's convolution pattern (Simonyan & Zisserman 2014, arXiv:1409.1556): five blocks of
2, 2, 3, 3, 3 3x3 'same' convolutions with ReLU, narrow (16, 32, 64, 64, 64 channels), on 64x64x3
inputs in [0, 1] with no other preprocessing. Like CAM's VGGnet-GAP (Zhou et al. 2016,
"Learning Deep Features for Discriminative Localization", arXiv:1512.04150) the head is global
average pooling followed by one dense layer giving 6 logits (no softmax), and the pools after
blocks 4 and 5 are left out so that the last convolution, ``block5_conv3`` (the default CAM
layer), keeps an 8x8 map.

The weights ship with the package as ``polyviz/models/data/demo_shapes.npz``: framework-neutral
float32 arrays keyed ``"<layer>/kernel"`` and ``"<layer>/bias"`` in the canonical layout of
:mod:`polyviz.models.spec` (conv kernels (3, 3, in, out), dense kernels (in, out)). They are made by
``examples/train_demo_model.py``. Any backend with the ``build`` capability builds the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polyviz.datasets.shapes import SHAPE_CLASSES
from polyviz.errors import InputError, ModelError, WeightsNotFoundError
from polyviz.models.spec import NetworkSpec, vgg_spec
from polyviz.protocol import Capability
from polyviz.registry import backend_class

__all__ = ["DEMO_CLASSES", "DEMO_WEIGHTS", "DEMO_BLOCKS", "demo", "demo_spec", "load_weights", "save_weights"]

#: The demo model's classes, in logit order (those of :func:`polyviz.datasets.shapes`).
DEMO_CLASSES: tuple[str, ...] = SHAPE_CLASSES
#: The weights file shipped in the package.
DEMO_WEIGHTS: Path = Path(__file__).resolve().parent / "data" / "demo_shapes.npz"
#: Conv widths per block: VGG16's pattern (2, 2, 3, 3, 3), narrow.
DEMO_BLOCKS: list[list[int]] = [[16, 16], [32, 32], [64, 64, 64], [64, 64, 64], [64, 64, 64]]
#: Blocks followed by a 2x2 max pool (64 -> 32 -> 16 -> 8; blocks 4 and 5 work at 8x8).
_POOLED_BLOCKS = (1, 2, 3)
_TRAIN_SCRIPT = "examples/train_demo_model.py"


def demo_spec() -> NetworkSpec:
    """The demo network as a :class:`~polyviz.models.spec.NetworkSpec` (see the module docstring)."""
    spec = vgg_spec(DEMO_BLOCKS, input_shape=(64, 64, 3), dense=(), classes=len(DEMO_CLASSES), head="gap")
    dropped = {f"block{b}_pool" for b in range(1, len(DEMO_BLOCKS) + 1) if b not in _POOLED_BLOCKS}
    return NetworkSpec(spec.input_shape, tuple(layer for layer in spec.layers if layer.name not in dropped))


def save_weights(weights: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """Write canonical ``{layer: {"kernel", "bias"}}`` weights as an uncompressed ``.npz`` of
    float32 arrays keyed ``"<layer>/<kernel|bias>"``."""
    from polyviz.render._atomic import atomic_write

    flat = {f"{layer}/{key}": np.asarray(value, np.float32) for layer, entry in weights.items() for key, value in entry.items()}
    return atomic_write(path, lambda f: np.savez(f, **flat))


def load_weights(path: str | Path | None = None, spec: NetworkSpec | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Read a weights ``.npz`` (default: the shipped demo weights) as canonical weights, checking
    that every weighted layer of ``spec`` (default: :func:`demo_spec`) is there with its shape."""
    spec = spec or demo_spec()
    path = DEMO_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights: the demo model's weights file {str(path)!r} does not exist; the package ships it as "
            f"polyviz/models/data/{DEMO_WEIGHTS.name}. Make it with `python {_TRAIN_SCRIPT}` "
            "(a few minutes on a CPU), or pass weights=PATH to a file that script wrote."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            flat = {key: np.asarray(npz[key], np.float32) for key in npz.files}
    except Exception as exc:
        raise ModelError(f"weights: cannot read {str(path)!r} as a .npz weights file ({type(exc).__name__}: {exc})") from exc
    weights: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        layer, _, kind = key.rpartition("/")
        weights.setdefault(layer, {})[kind] = value
    from polyviz.models.spec import output_shapes

    in_shape: tuple[int, ...] = tuple(spec.input_shape)
    for layer, out_shape in zip(spec.layers, output_shapes(spec)):
        if layer.has_weights:
            fan_in = in_shape[-1]
            expected = {"kernel": (3, 3, fan_in, out_shape[-1]) if layer.kind == "conv2d" else (fan_in, out_shape[-1]),
                        "bias": (out_shape[-1],)}
            for kind, shape in expected.items():
                got = weights.get(layer.name, {}).get(kind)
                if got is None or tuple(got.shape) != shape:
                    have = "missing" if got is None else f"shape {tuple(got.shape)}"
                    raise ModelError(
                        f"weights: {str(path)!r} does not fit the demo network: {layer.name}/{kind} is {have}, "
                        f"expected shape {shape}"
                    )
        in_shape = out_shape
    return weights


def demo(backend: str = "torch", weights: str | Path | None = None) -> Any:
    """The trained demo network in ``backend`` ("torch": an ``nn.Module`` in eval mode taking
    NCHW input; "keras": a functional Keras model taking NHWC input).

    Input: 64x64 RGB in [0, 1] (as :func:`polyviz.datasets.shapes` makes them), no preprocessing.
    Output: 6 logits, in the order of :data:`DEMO_CLASSES`. ``weights``: a ``.npz`` file written by
    ``examples/train_demo_model.py`` (default: the file shipped in the package); a missing file
    raises :class:`~polyviz.errors.WeightsNotFoundError`.
    """
    if not isinstance(backend, str):
        raise InputError(f"backend: expected a backend name such as 'torch' or 'keras', got {backend!r}")
    cls = backend_class(backend)
    if Capability.BUILD not in cls.capabilities:
        raise InputError(f"backend: {backend!r} cannot build models from numpy weights (no 'build' capability)")
    spec = demo_spec()
    model, _ = cls.build(spec, load_weights(weights, spec))
    return model
