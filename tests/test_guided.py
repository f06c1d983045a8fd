"""Guided backprop and deconvnet beyond ReLU (issue 13, step 5), both backends.

* On a tiny float64 MLP with ReLU, ReLU6, LeakyReLU, SiLU, GELU and hardswish, each rule equals a
  hand-computed numpy reference (closed-form derivatives, the gates of ``polyviz.rules.guided``
  written out again, the network's forward pass done in numpy).
* On EfficientNet-B0 (SiLU only), guided backprop differs from saliency (it used to equal it).
* Rectifiers with no rule (ELU) and networks with no rectifier refuse with a CapabilityError.
"""

import math

import numpy as np
import pytest

import polyviz
from backends import ALL, have, keras_float64, rel, release
from polyviz.errors import CapabilityError

SHAPE = (4, 4, 3)
SIZES = [48, 16, 16, 14, 12, 12, 10, 5]
ACTS = ["relu", "relu6", "leaky_relu", "silu", "gelu", "hardswish"]
SLOPE = 0.1
_erf = np.vectorize(math.erf)


def act_np(name, z):
    """(f(z), f'(z)) in float64."""
    if name == "relu":
        return np.maximum(z, 0), (z > 0) * 1.0
    if name == "relu6":
        return np.clip(z, 0, 6), ((z > 0) & (z < 6)) * 1.0
    if name == "leaky_relu":
        return np.where(z > 0, z, SLOPE * z), np.where(z > 0, 1.0, SLOPE)
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return z * s, s + z * s * (1 - s)
    if name == "gelu":
        cdf = 0.5 * (1 + _erf(z / math.sqrt(2)))
        return z * cdf, cdf + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    if name == "hardswish":
        return z * np.clip(z + 3, 0, 6) / 6, np.where(z < -3, 0.0, np.where(z > 3, 1.0, (2 * z + 3) / 6))
    raise AssertionError(name)


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(a, b)) * 1.5 / math.sqrt(a), rng.normal(size=b) * 0.5) for a, b in zip(SIZES, SIZES[1:])]


def reference(x, targets, rule, ws):
    """The hand-computed guided / deconvnet / plain gradient of the target logits."""
    h = x.reshape(len(x), -1).astype(np.float64)
    zs = []
    for (w, b), name in zip(ws[:-1], ACTS):
        z = h @ w + b
        zs.append(z)
        h = act_np(name, z)[0]
    g = np.zeros((len(x), SIZES[-1]))
    g[np.arange(len(x)), targets] = 1.0
    g = g @ ws[-1][0].T
    for k in range(len(ACTS) - 1, -1, -1):
        d = act_np(ACTS[k], zs[k])[1]
        if rule == "guided":
            g = g * d * (g > 0) * (zs[k] > 0)
        elif rule == "deconvnet":
            g = np.maximum(g, 0)
        else:
            g = g * d
        g = g @ ws[k][0].T
    return g.reshape(x.shape)


def torch_mlp(ws):
    import torch
    from torch import nn

    mods = {"relu": nn.ReLU(), "relu6": nn.ReLU6(inplace=True), "leaky_relu": nn.LeakyReLU(SLOPE),
            "silu": nn.SiLU(), "gelu": nn.GELU(), "hardswish": nn.Hardswish()}

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(SIZES, SIZES[1:]))
            self.acts = nn.ModuleList(mods[a] for a in ACTS)

        def forward(self, x):
            h = x.permute(0, 2, 3, 1).flatten(1)
            for dense, act in zip(self.dense[:-1], self.acts):
                h = act(dense(h))
            return self.dense[-1](h)

    model = MLP().double().eval()
    with torch.no_grad():
        for lin, (w, b) in zip(model.dense, ws):
            lin.weight.copy_(torch.from_numpy(w.T))
            lin.bias.copy_(torch.from_numpy(b))
    return model


def keras_mlp(ws):
    import keras

    with keras_float64():
        inp = keras.Input(SHAPE)
        h = keras.layers.Flatten()(inp)
        dense = []
        for k, name in enumerate(ACTS):
            layer = keras.layers.Dense(SIZES[k + 1], activation={"hardswish": "hard_swish", "leaky_relu": None}.get(name, name))
            dense.append(layer)
            h = layer(h)
            if name == "leaky_relu":
                h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
        out_layer = keras.layers.Dense(SIZES[-1])
        dense.append(out_layer)
        model = keras.Model(inp, out_layer(h))
    for layer, (w, b) in zip(dense, ws):
        layer.set_weights([w, b])
    return model


def mlp(backend, ws):
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    return torch_mlp(ws) if backend == "torch" else keras_mlp(ws)


def explain(model, x, method, **kw):
    return polyviz.explain(model, x, method, layout="NHWC", progress=False, **kw)


@pytest.mark.parametrize("backend", ALL)
def test_rules_equal_hand_computed_reference(backend):
    ws = weights()
    model = mlp(backend, ws)
    x = np.random.default_rng(1).normal(size=(4, *SHAPE)).astype(np.float32) * 2
    t = np.array([0, 1, 3, 4])
    for method, rule in (("guided_backprop", "guided"), ("deconvnet", "deconvnet"), ("saliency", None)):
        expected = reference(x, t, rule, ws)
        assert np.abs(expected).max() > 0
        got = explain(model, x, method, target=t).attribution
        assert rel(got, expected) <= 1e-6, (backend, method)
    # the gates matter here: guided is neither the gradient nor its positive part
    assert rel(reference(x, t, "guided", ws), reference(x, t, None, ws)) > 0.3
    assert rel(reference(x, t, "guided", ws), np.maximum(reference(x, t, None, ws), 0)) > 0.05


def efficientnet(backend):
    """EfficientNet-B0 with random weights and calibrated BatchNorm statistics (as in
    test_deeplift_matrix: with the initial statistics its input gradient is ~1e-14)."""
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    from test_deeplift_matrix import keras_model, torchvision_model

    if backend == "torch":
        return torchvision_model("efficientnet_b0", 32).float()
    return keras_model("EfficientNetB0", 32)


@pytest.mark.parametrize("backend", ALL)
def test_guided_differs_from_saliency_on_efficientnet_b0(backend):
    """EfficientNet-B0 has SiLU and sigmoid gates, no plain ReLU: guided backprop used to return
    exactly the saliency map there."""
    model = efficientnet(backend)
    x = np.random.default_rng(0).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    sal = explain(model, x, "saliency", target=3).attribution
    for method in ("guided_backprop", "deconvnet"):
        got = explain(model, x, method, target=3).attribution
        assert np.all(np.isfinite(got)) and np.abs(got).max() > 1e-3 * np.abs(sal).max()
        assert rel(got, sal) > 0.1, method
    release()


def unruled(backend, kind):
    """kind "elu": a rectifier with no rule; "sigmoid": a network with no rectifier at all."""
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    if backend == "torch":
        from torch import nn

        act = nn.ELU() if kind == "elu" else nn.Sigmoid()
        return nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    import keras

    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation=kind)(inp)
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h)))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["elu", "sigmoid"])
def test_refuses_without_a_rule(backend, kind):
    model = unruled(backend, kind)
    x = np.random.default_rng(0).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    for method, name in (("guided_backprop", "guided backprop"), ("deconvnet", "deconvnet")):
        with pytest.raises(CapabilityError, match=f"^{name}: .*({'ELU|elu' if kind == 'elu' else 'no rectifier'})"):
            explain(model, x, method, target=0)
    explain(model, x, "saliency", target=0)  # the plain gradient still works
