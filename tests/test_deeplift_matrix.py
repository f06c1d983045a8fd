"""DeepLIFT completeness on every CNN of the coverage matrix (issue 13, step 4): the attribution
sums to ``S(x) - S(x')`` within 1e-3 relative, ``S`` from plain forward passes (a closed-form
property of the rescale, max-pool and product rules; no polyviz output is compared with itself).
The models run in float64, where the sum holds to 1e-6 (measured); in float32 the attribution's L1
mass exceeds the gain up to 1400-fold (EfficientNetV2B0), so the sum carries ~3e-3 of round-off and
a float32 bound would be a number tuned on one CPU.

Random weights; BatchNorm statistics calibrated on one seeded random batch (the test's own model,
built here) so that logits do not vanish: with torchvision's and Keras' initial statistics (mean 0,
variance 1) the random networks' logits differ by 1e-12..1e-16 between input and reference, below
float32 round-off, which would make a relative check meaningless. Small inputs by default (32 px;
75 px for Inception, 71 px for Xception), 224 px (299 for Inception/Xception) in the slow set.
ConvNeXt (LayerNorm, no DeepLIFT rule) must refuse with a CapabilityError naming the layer norm.
"""

import numpy as np
import pytest

import polyviz
from backends import have, keras_float64, release
from polyviz.errors import CapabilityError
from polyviz.registry import backend_for

TORCH = ["resnet18", "resnet50", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
         "regnet_y_400mf", "inception_v3"]
KERAS = ["ResNet50", "ResNet50V2", "DenseNet121", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0",
         "EfficientNetV2B0", "InceptionV3", "Xception"]
SMALL = {"inception_v3": 75, "InceptionV3": 75, "Xception": 71}
FULL = {"inception_v3": 299, "InceptionV3": 299, "Xception": 299}
#: measured seconds above which a small-input model goes to the slow set (2 shared cores)
SLOW_SMALL = {"ResNet50", "ResNet50V2", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionV3", "Xception"}


def calibration(px, n=None):
    n = n or (8 if px < 100 else 2)  # 2 images at full size: float64 training-mode passes are large
    return np.random.default_rng(5).uniform(0, 1, (n, px, px, 3)).astype(np.float32)


def torchvision_model(name, px):
    """torchvision ``name`` (10 classes) under ``torch.manual_seed(0)``, BatchNorm statistics of
    one random batch, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(num_classes=10, **kw)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(calibration(px).transpose(0, 3, 1, 2).copy()))
    return model.eval().double()


def keras_model(name, px):
    """keras.applications ``name`` (10 classes, softmax head) under ``keras.utils.set_random_seed(0)``,
    BatchNorm moving statistics of one random batch."""
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(px, px, 3), classes=10)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(calibration(px), training=True)
    for layer in bns:
        layer.momentum = 0.99
    return model


def build(backend, name, px):
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    if backend == "torch":
        return torchvision_model(name, px)
    with keras_float64():
        return keras_model(name, px)


def check_complete(model, px, n=2):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, px, px, 3)).astype(np.float32)
    base = (rng.uniform(0, 1, (px, px, 3)) * 0.3).astype(np.float32)
    targets = np.array([1, 3])[:n]
    before = weights_of(model)
    e = polyviz.explain(model, x, "deeplift", target=targets, baseline=base, layout="NHWC", progress=False)
    bk = backend_for(model)
    rows = np.arange(n)
    gain = (bk.forward(x)[rows, targets].astype(np.float64)
            - bk.forward(np.repeat(base[None], n, 0))[rows, targets].astype(np.float64))
    assert e.attribution.dtype == np.float32 and e.attribution.shape == x.shape
    assert np.all(np.isfinite(e.attribution))
    assert np.abs(gain).min() > 1e-4, gain  # well above float32 round-off of the logits
    total = e.attribution.reshape(n, -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(total, gain, rtol=1e-3)
    after = weights_of(model)
    assert len(before) == len(after) and all(np.array_equal(a, b) for a, b in zip(before, after))


def weights_of(model):
    """Every weight and buffer as numpy (the Keras state fingerprint trips on raw-op nodes, #10)."""
    if hasattr(model, "state_dict"):
        return [v.detach().numpy().copy() for v in model.state_dict().values()] + [model.training]
    return [np.array(w.numpy()) for w in model.weights]


def params(names, slow=()):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


@pytest.mark.parametrize("name", params(TORCH, SLOW_SMALL))
def test_torchvision_complete_small(name):
    px = SMALL.get(name, 32)
    check_complete(build("torch", name, px), px)
    release()


@pytest.mark.parametrize("name", params(KERAS, SLOW_SMALL))
def test_keras_applications_complete_small(name):
    px = SMALL.get(name, 32)
    check_complete(build("keras", name, px), px)
    release()


@pytest.mark.slow
@pytest.mark.parametrize("backend,name", [("torch", n) for n in TORCH] + [("keras", n) for n in KERAS])
def test_complete_full_size(backend, name):
    px = FULL.get(name, 224)
    check_complete(build(backend, name, px), px, n=1)  # one image: float64 Xception at 299 px took 6.5 GB with two
    release()


@pytest.mark.parametrize("backend,name", [("torch", "convnext_tiny"),
                                          pytest.param("keras", "ConvNeXtTiny", marks=pytest.mark.slow)])
def test_convnext_refuses(backend, name):
    """LayerNorm has no DeepLIFT rule: a CapabilityError naming it, never a silent gradient."""
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    if backend == "torch":
        import torch
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.convnext_tiny(num_classes=10).eval()
    else:
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    with pytest.raises(CapabilityError, match="(?i)layer_?norm"):
        polyviz.explain(model, x, "deeplift", target=0, layout="NHWC", progress=False)
    release()
