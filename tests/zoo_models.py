"""The models of the coverage matrix (issues 13 and 14): torchvision and keras.applications
architectures with seeded random weights, and the hand-written structures users build (functional
activations, in-place ops, a reused module; a nested Keras backbone, a subclassed Keras model).

Each entry is a :class:`ZooModel`: its framework, the smallest input size its architecture takes
comfortably (the default test set) and a builder. Nothing is downloaded: weights are random, and a
torchvision ViT gets a random head (its head is zero at init, which makes every map zero).
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest


@dataclass(frozen=True)
class ZooModel:
    name: str
    framework: str  # "torch" or "keras"
    size: int  # small input size (default set)
    build: Callable[[int], Any]
    cnn: bool = True  # a convolutional network (conservation and completeness are asserted on these)

    @property
    def id(self) -> str:
        return f"{self.framework}:{self.name}"

    def input(self, size: int | None = None, batch: int = 2, seed: int = 0) -> np.ndarray:
        """A seeded batch in the model's native layout, values in [0, 1)."""
        s = size or self.size
        shape = (batch, 3, s, s) if self.framework == "torch" else (batch, s, s, 3)
        return np.random.default_rng(seed).random(shape, dtype=np.float32)

    def available(self) -> bool:
        module = "torchvision" if self.framework == "torch" else "tensorflow"
        return importlib.util.find_spec(module) is not None


# ---- torch -------------------------------------------------------------------------------------


def _torchvision(name: str, **kwargs: Any) -> Callable[[int], Any]:
    def build(size: int) -> Any:
        import torch
        import torchvision

        torch.manual_seed(0)
        extra = dict(kwargs)
        if name == "inception_v3":
            extra.update(aux_logits=False, init_weights=False)
        if name.startswith("vit_"):
            extra["image_size"] = size
        model = getattr(torchvision.models, name)(weights=None, **extra).eval()
        if name.startswith("vit_"):
            with torch.no_grad():
                head = model.heads.head
                head.weight.normal_(0.0, 0.02)
                head.bias.zero_()
        _randomise_batchnorm_stats(model)
        return model

    return build


def _randomise_batchnorm_stats(model: Any) -> None:
    """Seeded running statistics and affine parameters for every BatchNorm, so that a rule that
    mishandles BatchNorm shows (at init they are the identity map)."""
    import torch

    rng = np.random.default_rng(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.1, n).astype(np.float32)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
                if module.affine:
                    module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
                    module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, n).astype(np.float32)))


def _torch_structures() -> dict[str, Callable[[int], Any]]:
    def functional(size: int) -> Any:
        import torch
        from torch import nn
        from torch.nn import functional as F

        class Functional(nn.Module):
            """Activations and pooling as functions in forward, not modules."""

            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
                self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
                self.fc = nn.Linear(16, 10)

            def forward(self, x: Any) -> Any:
                x = F.max_pool2d(F.relu(self.conv1(x)), 2)
                x = F.silu(self.conv2(x))
                return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

        torch.manual_seed(0)
        return Functional().eval()

    def inplace(size: int) -> Any:
        import torch
        from torch import nn

        class InPlace(nn.Module):
            """In-place ReLUs and an in-place residual add (``out += identity``)."""

            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
                self.relu1 = nn.ReLU(inplace=True)
                self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
                self.relu2 = nn.ReLU(inplace=True)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(8, 10)

            def forward(self, x: Any) -> Any:
                identity = self.relu1(self.conv1(x))
                out = self.conv2(identity)
                out += identity
                out = self.relu2(out)
                return self.fc(torch.flatten(self.pool(out), 1))

        torch.manual_seed(0)
        return InPlace().eval()

    def reused(size: int) -> Any:
        import torch
        from torch import nn

        class Reused(nn.Module):
            """One ReLU module and one conv module called twice."""

            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Conv2d(3, 8, 3, padding=1)
                self.conv = nn.Conv2d(8, 8, 3, padding=1)
                self.relu = nn.ReLU()
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(8, 10)

            def forward(self, x: Any) -> Any:
                x = self.relu(self.stem(x))
                x = self.relu(self.conv(x))
                x = self.relu(self.conv(x))
                return self.fc(torch.flatten(self.pool(x), 1))

        torch.manual_seed(0)
        return Reused().eval()

    return {"functional_activations": functional, "inplace_ops": inplace, "reused_module": reused}


# ---- keras -------------------------------------------------------------------------------------


def _keras_app(name: str) -> Callable[[int], Any]:
    def build(size: int) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)

    return build


def _keras_structures() -> dict[str, Callable[[int], Any]]:
    def nested(size: int) -> Any:
        import keras
        from keras import layers

        keras.utils.set_random_seed(0)
        inner_in = keras.Input((size, size, 3))
        h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inner_in)
        h = layers.BatchNormalization(name="bn1")(h)
        h = layers.MaxPooling2D(name="pool1")(h)
        h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
        backbone = keras.Model(inner_in, h, name="backbone")
        outer_in = keras.Input((size, size, 3))
        y = backbone(outer_in)
        y = layers.GlobalAveragePooling2D(name="gap")(y)
        y = layers.Dense(10, name="logits")(y)
        return keras.Model(outer_in, y, name="nested")

    def subclassed(size: int) -> Any:
        import keras
        from keras import layers

        class Subclassed(keras.Model):
            def __init__(self) -> None:
                super().__init__(name="subclassed")
                self.conv1 = layers.Conv2D(8, 3, padding="same", activation="relu")
                self.conv2 = layers.Conv2D(16, 3, padding="same", activation="relu")
                self.gap = layers.GlobalAveragePooling2D()
                self.fc = layers.Dense(10)

            def call(self, x: Any) -> Any:
                return self.fc(self.gap(self.conv2(self.conv1(x))))

        keras.utils.set_random_seed(0)
        model = Subclassed()
        model(np.zeros((1, size, size, 3), np.float32))
        return model

    return {"nested_backbone": nested, "subclassed": subclassed}


TORCHVISION = [
    # (name, small size)
    ("resnet18", 64), ("resnet50", 64), ("densenet121", 64), ("mobilenet_v2", 64),
    ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("convnext_tiny", 64), ("inception_v3", 107),
    ("regnet_y_400mf", 64), ("vit_b_16", 64), ("swin_t", 64),
]
KERAS_APPLICATIONS = [
    ("ResNet50", 64), ("ResNet50V2", 64), ("DenseNet121", 64), ("MobileNetV2", 64), ("MobileNetV3Small", 64),
    ("EfficientNetB0", 64), ("EfficientNetV2B0", 64), ("ConvNeXtTiny", 64), ("InceptionV3", 107), ("Xception", 71),
]
NOT_CNN = {"vit_b_16", "swin_t"}

ZOO: list[ZooModel] = (
    [ZooModel(n, "torch", s, _torchvision(n), n not in NOT_CNN) for n, s in TORCHVISION]
    + [ZooModel(n, "torch", 16, b) for n, b in _torch_structures().items()]
    + [ZooModel(n, "keras", s, _keras_app(n)) for n, s in KERAS_APPLICATIONS]
    + [ZooModel(n, "keras", 16, b) for n, b in _keras_structures().items()]
)
BY_ID = {m.id: m for m in ZOO}


def build(model: ZooModel, size: int | None = None) -> Any:
    """The model, or a skip when its framework is not installed."""
    if not model.available():
        pytest.skip(f"{model.framework} is not installed")
    return model.build(size or model.size)


def release(model: ZooModel) -> None:
    """Free a built model's memory between tests (Keras keeps graphs in its session)."""
    if model.framework == "keras":
        import keras

        keras.backend.clear_session()
    gc.collect()
