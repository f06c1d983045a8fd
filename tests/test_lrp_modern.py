"""LRP on modern CNNs (issue 13): zennit with its canonizers on torchvision ResNet-18/50 and
VGG16-BN, LRP-0 conservation with biases and BatchNorm shifts zeroed on the torchvision zoo, torch
and Keras on one hand-built residual + BatchNorm + concatenation net, the model untouched, and the
refusal of ConvNeXt (LayerNorm, layer scale). Reference comparisons run the torch models in float64,
so the tolerances hold on any CPU."""

import copy

import numpy as np
import pytest

import polyviz
from polyviz.errors import CapabilityError
from polyviz.registry import backend_class

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def randomize_batchnorm(model, seed, eps=None):
    """Random running statistics and affine parameters (our own test model, not a user's); ``eps``
    0 makes zennit's canonizer exact (it leaves each merged BatchNorm as ``x / sqrt(1 + eps)``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if eps is not None:
                    mod.eps = eps
    return model


def zennit_relevance(model, x, targets, composite):
    """zennit's relevance (NCHW) with ``composite``, seeded with the one-hot target and scaled by
    the score (polyviz starts from the score)."""
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    from zennit.attribution import Gradient

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    seed = torch.zeros(len(x), 10, dtype=torch.float64)
    seed[np.arange(len(x)), targets] = 1.0
    with Gradient(ref, composite) as attributor:
        out, rel = attributor(xt, seed)
    return rel.detach().numpy() * out.detach().numpy()[np.arange(len(x)), targets].reshape(-1, 1, 1, 1)


CASES = [("resnet18", "ResNetCanonizer"), ("resnet50", "ResNetCanonizer"), ("vgg16_bn", "SequentialMergeBatchNorm")]


def _zennit_case(arch, canonizer, rule, size):
    pytest.importorskip("zennit")
    from zennit import canonizers, composites
    from zennit import torchvision as ztv

    canon = getattr(ztv, canonizer, None) or getattr(canonizers, canonizer)
    composite_cls = {"epsilon_plus_flat": composites.EpsilonPlusFlat,
                     "epsilon_alpha2_beta1_flat": composites.EpsilonAlpha2Beta1Flat}[rule]
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(torchvision.models, arch)(num_classes=10).eval(), 1, eps=0.0).double()
    x = np.random.default_rng(0).random((2, 3, size, size)).astype(np.float32)
    targets = [1, 3]
    e = polyviz.explain(model, x, "lrp", target=targets, progress=False, rule=rule, epsilon=1e-6)
    expected = zennit_relevance(model, x, targets, composite_cls(epsilon=1e-6, canonizers=[canon()]))
    err = np.linalg.norm(e.attribution - expected) / np.linalg.norm(expected)
    assert err <= 1e-4, f"{arch} {rule}: relative error {err:.2e}"


@pytest.mark.parametrize("arch,canonizer", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rule", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat"])
def test_matches_zennit_with_its_canonizers(arch, canonizer, rule):
    _zennit_case(arch, canonizer, rule, 32)


@pytest.mark.slow
@pytest.mark.parametrize("arch,canonizer", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rule", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat"])
def test_matches_zennit_with_its_canonizers_at_224(arch, canonizer, rule):
    _zennit_case(arch, canonizer, rule, 224)


def calibrated_without_shifts(model, size):
    """BatchNorm statistics from one random batch (so activations stay O(1) and no stabiliser
    absorbs relevance), then every bias and BatchNorm shift set to zero."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
        model.eval()
        for mod in model.modules():
            if isinstance(getattr(mod, "bias", None), torch.nn.Parameter):
                mod.bias.zero_()
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.zero_()
    return model


ZOO = ["resnet18", "resnet50", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
       "regnet_y_400mf", "inception_v3"]


def _conservation(arch, size):
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "inception_v3" else {}
    torch.manual_seed(0)
    model = calibrated_without_shifts(getattr(torchvision.models, arch)(num_classes=10, **kwargs).double(), size)
    x = np.random.default_rng(0).random((1, 3, size, size)).astype(np.float32)
    before = backend_class("torch").state_fingerprint(model)
    e = polyviz.explain(model, x, "lrp", target=1, progress=False, rule="zero")
    after = backend_class("torch").state_fingerprint(model)
    assert np.isfinite(e.attribution).all() and e.attribution.shape == x.shape
    np.testing.assert_allclose(e.attribution.sum(), e.scores[0], rtol=1e-3)
    for key in before:
        np.testing.assert_array_equal(np.asarray(before[key]), np.asarray(after[key]), err_msg=key)


@pytest.mark.parametrize("arch", ZOO)
def test_lrp0_conserves_the_score_without_shifts(arch):
    _conservation(arch, 75 if arch == "inception_v3" else 32)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*ZOO, "vgg16_bn"])
def test_lrp0_conserves_the_score_without_shifts_at_224(arch):
    _conservation(arch, 299 if arch == "inception_v3" else 224)


def test_convnext_is_refused_with_the_reason():
    model = torchvision.models.convnext_tiny(num_classes=10).eval()
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(CapabilityError, match="AttnLRP"):
        polyviz.explain(model, x, "lrp", target=1, progress=False)


# ---- torch and Keras on one hand-built residual + BatchNorm + concatenation net --------------------

def _weights(seed):
    rng = np.random.default_rng(seed)
    conv = lambda cin, cout: (rng.normal(0, 0.3, (3, 3, cin, cout)), rng.normal(0, 0.1, cout))  # noqa: E731
    bn = lambda c: (rng.random(c) + 0.5, rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.random(c) + 0.5)  # noqa: E731
    return {"c1": conv(3, 4), "b1": bn(4), "c2": conv(4, 4), "b2": bn(4), "c3": conv(4, 4), "b3": bn(8),
            "fc": (rng.normal(0, 0.3, (8, 5)), rng.normal(0, 0.1, 5))}


def _torch_net(w):
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c3, self.b3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.b1(self.c1(x)))
            r = torch.relu(self.b2(self.c2(h)) + h)  # residual add
            cat = torch.cat([r, self.c3(r)], dim=1)  # concatenation, then a standalone BatchNorm
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.b3(cat)), 1)  # functional pool
            return self.fc(pooled.flatten(1))

    net = Net().eval()
    with torch.no_grad():
        for name in ("c1", "c2", "c3"):
            k, b = w[name]
            getattr(net, name).weight.copy_(torch.tensor(k.transpose(3, 2, 0, 1)))
            getattr(net, name).bias.copy_(torch.tensor(b))
        for name in ("b1", "b2", "b3"):
            g, beta, mean, var = w[name]
            mod = getattr(net, name)
            mod.weight.copy_(torch.tensor(g))
            mod.bias.copy_(torch.tensor(beta))
            mod.running_mean.copy_(torch.tensor(mean))
            mod.running_var.copy_(torch.tensor(var))
        net.fc.weight.copy_(torch.tensor(w["fc"][0].T))
        net.fc.bias.copy_(torch.tensor(w["fc"][1]))
    return net.float()


def _keras_net(w):
    import keras

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    c1, c2, c3 = (L.Conv2D(4, 3, padding="same", name=n) for n in ("c1", "c2", "c3"))
    b1, b2, b3 = (L.BatchNormalization(epsilon=1e-5, name=n) for n in ("b1", "b2", "b3"))
    h = L.ReLU()(b1(c1(inp)))
    r = L.ReLU()(L.Add()([b2(c2(h)), h]))
    cat = L.Concatenate()([r, c3(r)])
    out = L.Dense(5, name="fc")(L.GlobalAveragePooling2D()(L.ReLU()(b3(cat))))
    model = keras.Model(inp, out)
    for name in ("c1", "c2", "c3", "fc"):
        model.get_layer(name).set_weights([w[name][0], w[name][1]])
    for name in ("b1", "b2", "b3"):
        model.get_layer(name).set_weights(list(w[name]))
    return model


@pytest.mark.parametrize("rule", ["zero", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat"])
def test_torch_and_keras_agree_on_a_residual_batchnorm_concat_net(rule):
    pytest.importorskip("keras")
    w = _weights(0)
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    t = polyviz.explain(_torch_net(w), x, "lrp", target=[1, 4], layout="NHWC", progress=False, rule=rule)
    k = polyviz.explain(_keras_net(w), x, "lrp", target=[1, 4], layout="NHWC", progress=False, rule=rule)
    np.testing.assert_allclose(t.scores, k.scores, rtol=1e-4)
    err = np.linalg.norm(t.attribution - k.attribution) / np.linalg.norm(t.attribution)
    assert err <= 1e-4, f"{rule}: torch vs Keras relative error {err:.2e}"


# ---- keras.applications: LRP-0 conservation with biases and BatchNorm shifts zeroed ---------------

KERAS_ZOO = ["ResNet50", "ResNet50V2", "DenseNet121", "MobileNetV2", "MobileNetV3Small", "EfficientNetV2B0",
             "InceptionV3", "Xception"]
KERAS_FAST = ["ResNet50", "MobileNetV3Small", "EfficientNetV2B0", "Xception"]


def _keras_conservation(arch, size):
    """float64 model (keras floatx restored after), BatchNorm statistics from one random batch (so
    no stabiliser absorbs relevance), then every bias and BatchNorm shift zeroed. EfficientNetB0 is
    left out: its Normalization layer's mean is a graph constant, a shift that cannot be zeroed."""
    keras = pytest.importorskip("keras")
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        keras.utils.set_random_seed(0)
        kwargs = {"include_preprocessing": False} if arch in ("MobileNetV3Small", "EfficientNetV2B0") else {}
        model = getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3), classes=10,
                                                   classifier_activation=None, **kwargs)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.momentum = 0.0
        model(np.random.default_rng(5).random((4, size, size, 3)), training=True)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                if layer.center:
                    layer.beta.assign(np.zeros(layer.beta.shape))
                layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
            elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
                layer.bias.assign(np.zeros(layer.bias.shape))
        x = np.random.default_rng(0).random((1, size, size, 3)).astype(np.float32)
        # the weights themselves (state_fingerprint trips on raw-op nodes such as MobileNetV3's x + 3.0: issue 10)
        before = [np.array(w) for w in model.get_weights()]
        e = polyviz.explain(model, x, "lrp", target=1, progress=False, rule="zero")
        after = model.get_weights()
    finally:
        keras.config.set_floatx(floatx)
    assert np.isfinite(e.attribution).all() and e.attribution.shape == x.shape
    np.testing.assert_allclose(e.attribution.sum(), e.scores[0], rtol=1e-3)
    assert len(before) == len(after) and all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("arch", KERAS_FAST)
def test_keras_lrp0_conserves_the_score_without_shifts(arch):
    _keras_conservation(arch, 75 if arch in ("InceptionV3", "Xception") else 32)


@pytest.mark.slow
@pytest.mark.parametrize("arch", KERAS_ZOO)
def test_keras_lrp0_conserves_the_score_without_shifts_at_224(arch):
    _keras_conservation(arch, 299 if arch in ("InceptionV3", "Xception") else 224)
