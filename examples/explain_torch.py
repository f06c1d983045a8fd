"""Explain a PyTorch VGG16 prediction with Grad-CAM, saliency and occlusion.

    python examples/explain_torch.py [IMAGE] [OUT_DIR]

The polyviz calls are the same as in explain_keras.py; only the model and its layout differ.
"""

import sys

from _common import load_image, out_dir, vgg16

import polyviz

model, preprocess = vgg16("torch")
image = load_image(sys.argv[1] if len(sys.argv) > 1 else None).transpose(2, 0, 1)  # CHW: torch layout
out = out_dir("torch")
for method, options in [("gradcam", {}), ("saliency", {}), ("occlusion", {"window": 32, "stride": 16})]:
    explanation = polyviz.explain(model, image, method, preprocess=preprocess, **options)
    path = explanation.save(out / f"{method}.png")
    print(f"{method:10s} class {explanation.target[0]:4d}  map {explanation.attribution.shape} -> {path}")
