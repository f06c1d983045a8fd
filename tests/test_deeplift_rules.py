"""The framework-neutral DeepLIFT rules (polyviz.rules.deeplift) against closed forms, and the
backends that use them against Captum (where Captum is right) and against each other.

* rules in numpy: the rescale multiplier is ``(f(z) - f(z')) / (z - z')`` and ``f'(z)`` where
  ``z = z'``; the product and max-pool rules are exactly complete (sum of multiplier times
  difference = difference of the output).
* a small CNN with BatchNorm, residual addition, concatenation, average and max pooling, sigmoid
  and tanh: equal to Captum's DeepLift in float64 (Captum fed its max-pool-safe copy, captum#1104).
* a small squeeze-excitation CNN with SiLU, hardsigmoid, hardswish, ReLU6 and GELU, the same
  weights in torch and Keras: the two backends agree in float64, both complete; Captum, which
  has no rule for SiLU/GELU/hardswish/products, is not complete there (documented difference).
"""

import numpy as np
import pytest

import polyviz
from backends import captum_pool_safe, have, keras_float64, rel
from polyviz.rules.deeplift import NumpyOps, maxpool_backward, product_backward, rescale_multiplier

OPS = NumpyOps()


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def silu(z):
    return z * sigmoid(z)


# --------------------------------------------------------------------------------------------
# the rules, in numpy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,deriv", [(np.tanh, lambda z: 1 - np.tanh(z) ** 2),
                                      (silu, lambda z: sigmoid(z) * (1 + z * (1 - sigmoid(z))))])
def test_rescale_multiplier_closed_form(fn, deriv):
    rng = np.random.default_rng(0)
    zx, zr = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    zr[0, 0, :2] = zx[0, 0, :2]  # no difference: the derivative
    z = np.concatenate([zx, zr])
    m = rescale_multiplier(OPS, z, fn(z), lambda: deriv(z))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (fn(zx) - fn(zr)) / (zx - zr)
    expected[0, 0, :2] = deriv(zx[0, 0, :2])
    np.testing.assert_allclose(m[:2], expected, rtol=1e-12)
    np.testing.assert_allclose(m[2:], np.where(zx == zr, deriv(zr), expected), rtol=1e-12)
    np.testing.assert_allclose((m[:2] * (zx - zr)).sum(), (fn(zx) - fn(zr)).sum(), rtol=1e-12)


def test_product_rule_is_complete_with_broadcasting():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 5, 5, 3))
    b = rng.normal(size=(4, 1, 1, 3))  # a squeeze-excitation gate
    g = np.ones_like(a * b)
    ma, mb = product_backward(OPS, g, a, b)
    assert ma.shape == a.shape and mb.shape == b.shape
    da, db = a[:2] - a[2:], b[:2] - b[2:]
    gain = (a[:2] * b[:2]).sum() - (a[2:] * b[2:]).sum()
    np.testing.assert_allclose((ma[:2] * da).sum() + (mb[:2] * db).sum(), gain, rtol=1e-12)
    np.testing.assert_allclose(ma[:2], np.broadcast_to((b[:2] + b[2:]) / 2, a[:2].shape))


def test_maxpool_rule_is_complete():
    """2x2/2 max pooling in numpy: sum(m * dz) = sum(pool(x) - pool(x')) for each sample."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 4, 4, 2))

    def pool(t):
        return t.reshape(len(t), 2, 2, 2, 2, 2).max(axis=(2, 4))

    def unpool(v):
        win = z.reshape(len(z), 2, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(len(z), 2, 2, 2, 4)
        arg = win.argmax(-1)
        out = np.zeros((len(z), 2, 2, 2, 4))
        np.put_along_axis(out, arg[..., None], v[..., None], -1)
        return out.reshape(len(z), 2, 2, 2, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(z.shape)

    out = pool(z)
    m = maxpool_backward(OPS, np.ones_like(out), z, out, unpool)
    dz = z[:2] - z[2:]
    np.testing.assert_allclose((m[:2] * dz).sum(axis=(1, 2, 3)), (out[:2] - out[2:]).sum(axis=(1, 2, 3)), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------


def explain(model, x, method, **kw):
    return polyviz.explain(model, x, method, layout="NHWC", progress=False, **kw)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def randomise_bn(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def structure_net(residual=False):
    """conv-BN-ReLU, conv, (a residual add and a ReLU,) concat, max and average pooling: Captum has
    a rule (or needs none) for every operation, and is complete here (delta 3e-17, measured). With
    a sigmoid/tanh branch beside the concat its module hooks are not (measured delta 6.8e-4), so
    that case is not compared."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.c2, self.c3 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
            self.r1, self.r2 = nn.ReLU(), nn.ReLU()
            self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(2)
            self.fc = nn.Linear(10 * 2 * 2, 5)

        def forward(self, x):
            h = self.r1(self.b1(self.c1(x)))
            h = self.r2(self.c2(h) + h) if residual else self.c2(h)
            h = torch.cat([self.c3(h), h], 1)
            return self.fc(self.avg(self.pool(h)).flatten(1))

    torch.manual_seed(0)
    return randomise_bn(Net(), 1).double().eval()


def test_structures_match_captum():
    """Equal to Captum (its max-pool-safe copy, captum#1104) with and without a residual block."""
    DeepLift = pytest.importorskip("captum.attr").DeepLift
    import torch

    if not have("torch"):
        pytest.skip("torch is not available")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    base = (rng.uniform(0, 1, (8, 8, 3)) * 0.4).astype(np.float32)
    t = [0, 2, 4]
    for residual in (False, True):
        model = structure_net(residual)
        ref, delta = DeepLift(captum_pool_safe(model)).attribute(
            torch.from_numpy(nchw(x)).double(), baselines=torch.from_numpy(nchw(base[None])).double(), target=t,
            return_convergence_delta=True)
        ref = ref.detach().numpy().transpose(0, 2, 3, 1)
        e = explain(model, x, "deeplift", target=t, baseline=base)
        gain = np.abs(e.scores.astype(np.float64) - (e.attribution.sum(axis=(1, 2, 3)) - e.options["convergence_delta"]))
        assert np.all(np.abs(e.options["convergence_delta"]) <= 1e-5 * np.maximum(gain, np.abs(ref).sum(axis=(1, 2, 3))))
        assert np.abs(delta.detach().numpy()).max() < 1e-10  # Captum complete: the comparison is fair
        assert rel(e.attribution, ref) <= 1e-6, residual


C = 8


def se_weights(seed=0):
    rng = np.random.default_rng(seed)

    def conv(kh, cin, cout):
        return rng.normal(size=(kh, kh, cin, cout)) * 1.2 / np.sqrt(kh * kh * cin), rng.normal(size=cout) * 0.2

    bn = (rng.uniform(0.5, 1.5, C), rng.normal(size=C) * 0.2, rng.normal(size=C) * 0.2, rng.uniform(0.5, 1.5, C))
    return {"c1": conv(3, 3, C), "bn": bn, "se1": conv(1, C, 4), "se2": conv(1, 4, C), "c2": conv(1, C, C),
            "c3": conv(3, C, 6), "fc": (rng.normal(size=(6, 5)), rng.normal(size=5) * 0.1)}


def torch_se(w):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C)
            self.se1, self.se2 = nn.Conv2d(C, 4, 1), nn.Conv2d(4, C, 1)
            self.c2, self.c3 = nn.Conv2d(C, C, 1), nn.Conv2d(C, 6, 3, padding=1)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            h = F.silu(self.bn(self.c1(x)))
            gate = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
            h = gate * h
            h = F.relu6(F.hardswish(self.c2(h)) + h)
            h = F.gelu(self.c3(F.max_pool2d(h, 2)))
            return self.fc(h.mean(dim=(2, 3)))

    model = SE().double().eval()
    with torch.no_grad():
        for name in ("c1", "se1", "se2", "c2", "c3"):
            k, b = w[name]
            getattr(model, name).weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            getattr(model, name).bias.copy_(torch.from_numpy(b))
        gamma, beta, mean, var = w["bn"]
        for attr, v in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)):
            getattr(model.bn, attr).copy_(torch.from_numpy(v))
        model.fc.weight.copy_(torch.from_numpy(w["fc"][0].T.copy()))
        model.fc.bias.copy_(torch.from_numpy(w["fc"][1]))
    return model


def keras_se(w):
    import keras
    from keras import layers

    with keras_float64():
        inp = keras.Input((8, 8, 3))
        c1 = layers.Conv2D(C, 3, padding="same")
        bn = layers.BatchNormalization(epsilon=1e-5)
        h = layers.Activation("silu")(bn(c1(inp)))
        se1, se2 = layers.Conv2D(4, 1, activation="relu"), layers.Conv2D(C, 1, activation="hard_sigmoid")
        gate = se2(se1(layers.GlobalAveragePooling2D(keepdims=True)(h)))
        h = layers.Multiply()([h, gate])
        c2 = layers.Conv2D(C, 1, activation="hard_swish")
        h = layers.ReLU(6.0)(layers.Add()([c2(h), h]))
        c3 = layers.Conv2D(6, 3, padding="same", activation="gelu")
        h = c3(layers.MaxPooling2D(2)(h))
        fc = layers.Dense(5)
        model = keras.Model(inp, fc(layers.GlobalAveragePooling2D()(h)))
    for layer, name in ((c1, "c1"), (se1, "se1"), (se2, "se2"), (c2, "c2"), (c3, "c3"), (fc, "fc")):
        layer.set_weights(list(w[name]))
    gamma, beta, mean, var = w["bn"]
    bn.set_weights([gamma, beta, mean, var])
    return model


def test_squeeze_excitation_torch_and_keras_agree_and_are_complete():
    if not (have("torch") and have("keras")):
        pytest.skip("needs both frameworks")
    w = se_weights()
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    base = (rng.uniform(0, 1, (8, 8, 3)) * 0.4).astype(np.float32)
    t = np.array([1, 0, 4])
    tm, km = torch_se(w), keras_se(w)
    a = explain(tm, x, "deeplift", target=t, baseline=base)
    b = explain(km, x, "deeplift", target=t, baseline=base)
    assert rel(a.attribution, b.attribution) <= 1e-6
    for e in (a, b):  # completeness against plain forward passes, in float64
        gain = e.scores.astype(np.float64) - np.asarray(
            polyviz.registry.backend_for(tm).forward(np.repeat(base[None], 3, 0)), np.float64)[np.arange(3), t]
        np.testing.assert_allclose(e.attribution.sum(axis=(1, 2, 3), dtype=np.float64), gain, rtol=1e-5)
        assert np.abs(gain).min() > 1e-2


def test_captum_is_not_complete_on_the_squeeze_excitation_net():
    """The documented difference: Captum differentiates SiLU, GELU, hardswish and the product as
    they are, so its convergence delta is far from 0 where polyviz's is ~1e-15."""
    DeepLift = pytest.importorskip("captum.attr").DeepLift
    import torch

    if not have("torch"):
        pytest.skip("torch is not available")
    model = torch_se(se_weights())
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    base = (rng.uniform(0, 1, (8, 8, 3)) * 0.4).astype(np.float32)
    _, delta = DeepLift(model).attribute(torch.from_numpy(nchw(x)).double(), torch.from_numpy(nchw(base[None])).double(),
                                         target=[1, 0, 4], return_convergence_delta=True)
    ours = explain(model, x, "deeplift", target=[1, 0, 4], baseline=base)
    gain = np.abs(ours.attribution.sum(axis=(1, 2, 3), dtype=np.float64))
    assert np.all(np.abs(ours.options["convergence_delta"]) <= 1e-6 * gain)
    assert np.abs(delta.detach().numpy()).max() > 1e-3


def test_keras_raw_ops_are_complete_or_refused():
    """Raw keras.ops nodes of a functional graph: ``maximum(h, 0)``, ``silu``, ``sigmoid`` and
    ``h * gate`` get their rules (the sum equals the gain); ``maximum`` of two tensors refuses."""
    if not have("keras"):
        pytest.skip("keras is not available")
    import keras

    from polyviz.errors import CapabilityError

    def net(two_tensor_max):
        keras.utils.set_random_seed(0)
        with keras_float64():
            inp = keras.Input((6, 6, 3))
            h = keras.layers.Conv2D(4, 3)(inp)
            h = keras.ops.maximum(h, 0.1 * h) if two_tensor_max else keras.ops.maximum(h, 0.0) + keras.ops.silu(h)
            gate = keras.ops.sigmoid(keras.layers.GlobalAveragePooling2D(keepdims=True)(h))
            return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h * gate)))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    base = rng.normal(size=(6, 6, 3)).astype(np.float32)
    model = net(False)
    e = explain(model, x, "deeplift", target=[0, 2], baseline=base)
    out = np.asarray(model(x.astype(np.float64)))[[0, 1], [0, 2]]
    ref = np.asarray(model(np.repeat(base[None], 2, 0).astype(np.float64)))[[0, 1], [0, 2]]
    np.testing.assert_allclose(e.attribution.sum(axis=(1, 2, 3), dtype=np.float64), out - ref, rtol=1e-5)
    with pytest.raises(CapabilityError, match="Maximum"):
        explain(net(True), x, "deeplift", target=0, baseline=base)
