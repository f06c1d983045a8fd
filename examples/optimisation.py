"""Images made by optimisation, for one network: filter visualisations of four layers, class models
with no / L1 / L2 regularisation side by side, a deep dream and an inversion, saved as PNGs.

    python examples/optimisation.py [torch|keras] [out_dir]

The network is the trained demo model (polyviz.models.demo, shapes at 64x64) when its weights file
is there, else a seeded random VGG-style network of the same size (whose pictures show less).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import polyviz
from polyviz import render
from polyviz.errors import WeightsNotFoundError
from polyviz.models.spec import random_weights, vgg_spec
from polyviz.registry import backend_class


def network(backend: str):
    """(model, {spec layer: native layer name}, class names, spec layer names of four depths)."""
    cls = backend_class(backend)
    try:
        from polyviz.models.demo import DEMO_CLASSES, demo_spec, load_weights

        spec = demo_spec()
        model, names = cls.build(spec, load_weights(None, spec))
        classes = list(DEMO_CLASSES)
    except (ImportError, WeightsNotFoundError) as exc:
        print(f"note: no demo model ({exc}); using a seeded random VGG-style network", file=sys.stderr)
        spec = vgg_spec([[16, 16], [32, 32], [64, 64, 64], [64, 64, 64]], input_shape=(64, 64, 3), dense=(),
                        classes=6, head="gap")
        model, names = cls.build(spec, random_weights(spec, 0))
        classes = [f"class {i}" for i in range(6)]
    convs = [layer.name for layer in spec.layers if layer.kind == "conv2d"]
    layers = [convs[1], convs[len(convs) // 3], convs[2 * len(convs) // 3], convs[-1]]
    return model, names, classes, layers


def sample_images(n: int) -> np.ndarray:
    try:
        from polyviz.datasets import shapes

        return shapes(n, seed=3).images
    except ImportError:
        return np.random.default_rng(3).random((n, 64, 64, 3)).astype(np.float32)


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
    out = Path(sys.argv[2] if len(sys.argv) > 2 else f"polyviz-out/optimisation-{backend}")
    out.mkdir(parents=True, exist_ok=True)
    if backend == "torch":
        import torch  # noqa: F401  (torch before TensorFlow in one process)
    model, names, classes, layers = network(backend)
    nat = (lambda a: a.transpose(0, 3, 1, 2)) if backend == "torch" else (lambda a: a)
    start = time.time()

    # 1. filter visualisations: of each of four layers, the four channels sample images drive most
    #    (a channel that is off at the grey start gets no gradient), each layer as one batch
    x = sample_images(16)
    acts = polyviz.backend_for(model).layer_activations(x, [names[layer] for layer in layers])
    rows, row_titles = [], []
    for layer in layers:
        channels = np.argsort(acts[names[layer]].mean(axis=(0, 1, 2)))[::-1][:4].tolist()
        r = polyviz.visualize_filter(model, names[layer], channels, size=64)
        rows.append(list(r.images))
        row_titles.append(f"{layer} {channels}")
    render.save_png(render.figure(rows, row_titles=row_titles, scale=3,
                                  title="visualize_filter (Fourier parameterisation, transforms)"), out / "filters.png")

    # 2. class models: pixel parameterisation (Simonyan et al. 2013) without / with L1 / with L2
    rows, titles = [], []
    for title, reg in (("none", {}), ("L1 = 0.5", {"l1": 0.5}), ("L2 = 1", {"l2": 1.0})):
        r = polyviz.class_model(model, list(range(len(classes))), size=64, param="pixel", **reg)
        rows.append(list(r.images))
        titles.append(title)
    fourier = polyviz.class_model(model, list(range(len(classes))), size=64)
    rows.append(list(fourier.images))
    titles.append("Fourier")
    render.save_png(render.figure(rows, row_titles=titles, col_titles=classes, scale=3, title="class_model"),
                    out / "class_models.png")

    # 3. deep dream and 4. inversion of two sample images
    x = x[:2]
    dream = polyviz.deep_dream(model, nat(x), names[layers[2]])
    inv_mid = polyviz.invert(model, nat(x), names[layers[0]])
    inv_deep = polyviz.invert(model, nat(x), names[layers[2]])
    render.save_png(render.figure([[x[0], dream.images[0]], [x[1], dream.images[1]]],
                                  col_titles=["image", f"deep dream {layers[2]}"], scale=3), out / "deep_dream.png")
    render.save_png(render.figure([[x[0], inv_mid.images[0], inv_deep.images[0]],
                                   [x[1], inv_mid.images[1], inv_deep.images[1]]],
                                  col_titles=["image", f"inverted {layers[0]}", f"inverted {layers[2]}"], scale=3),
                    out / "inversion.png")
    print(f"wrote {', '.join(p.name for p in sorted(out.glob('*.png')))} to {out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
