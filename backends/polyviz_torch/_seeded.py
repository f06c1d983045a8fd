"""torchvision CNNs (ResNet, MobileNetV2, EfficientNet, DenseNet) with numpy-drawn weights.

Pretrained weights are not needed to check that two frameworks compute the same thing: every
conv / linear weight is He-normal, every bias N(0, 0.05), and BatchNorm gets random running
statistics and affine terms (mean N(0, 0.1), variance U(0.5, 1.5), gamma U(0.5, 1.5), beta
N(0, 0.1)) so that converting BatchNorm is exercised, all drawn by ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from polyviz.errors import InputError
from polyviz_torch._compat import guard_triton

__all__ = ["GRAPH_MODELS", "seeded_model"]

GRAPH_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121")


def seeded_model(name: str, seed: int = 0) -> nn.Module:
    """torchvision's ``name`` (one of :data:`GRAPH_MODELS`) in eval mode with seeded random weights."""
    if name not in GRAPH_MODELS:
        raise InputError(f"name: expected one of {GRAPH_MODELS}, got {name!r}")
    guard_triton()
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                w = module.weight
                fan_in = int(np.prod(w.shape[1:]))
                w.copy_(torch.from_numpy(rng.normal(0.0, np.sqrt(2.0 / fan_in), tuple(w.shape)).astype(np.float32)))
                if module.bias is not None:
                    module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.05, module.bias.shape).astype(np.float32)))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                for t, v in ((module.weight, rng.uniform(0.5, 1.5, c)), (module.bias, rng.normal(0.0, 0.1, c)),
                             (module.running_mean, rng.normal(0.0, 0.1, c)),
                             (module.running_var, rng.uniform(0.5, 1.5, c))):
                    t.copy_(torch.from_numpy(v.astype(np.float32)))
    return model
