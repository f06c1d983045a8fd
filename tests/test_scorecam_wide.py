"""Score-CAM on wide layers (issue 14, item 5): all-zero channels cost no pass, and
``max_channels`` (Faster Score-CAM) against a hand-computed closed form and tf-keras-vis' ``max_N``.
"""

import numpy as np
import pytest
from numpy_backend import NumpyBackend
from test_cam import (  # the CAM tests' net and its hand-written conv
    conv_same_relu,
    count_masked_passes,
    gap_spec,
)

import polyviz
from backends import build, have
from polyviz import registry
from polyviz.errors import InputError
from polyviz.interpolation import resize
from polyviz.models.spec import random_weights, vgg_spec


def _hand_scorecam(net, x, acts, target, channels):
    """Score-CAM by its definition over ``channels`` only (the others weigh 0): softmax probability
    of the target for x times each channel's upsampled, min-max normalised map."""
    weights = np.zeros(acts.shape[-1])
    for c in channels:
        up = resize(acts[..., c], x.shape[1:3])
        span = up.max() - up.min()
        m = (up - up.min()) / span if span > 0 else np.zeros_like(up)
        out = net.forward((x * m[None, :, :, None]).astype(np.float32))[0].astype(np.float64)
        p = np.exp(out - out.max())
        weights[c] = p[target] / p.sum()
    return np.maximum(np.einsum("hwc,c->hw", acts, weights), 0.0)


@pytest.fixture
def numpy_net(monkeypatch):
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    calls = count_masked_passes(monkeypatch)

    def make(filters, seed, bias=None):
        spec = gap_spec(filters=filters)
        weights = random_weights(spec, seed)
        if bias is not None:
            weights["conv1"]["bias"] = np.asarray(bias, np.float32)
        model, _ = NumpyBackend.build(spec, weights)
        return model, weights, calls

    return make


def _explain(model, x, **kw):
    return polyviz.explain(model, x, "scorecam", layer="conv1", layout="NHWC", progress=False, **kw)


def test_all_zero_channels_cost_no_forward_pass(numpy_net):
    bias = np.array([0.1, -100, 0.2, -100, -100, 0.0], np.float32)  # channels 1, 3, 4: zero after ReLU
    model, weights, calls = numpy_net(6, 3, bias)
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    acts = conv_same_relu(x, weights["conv1"]["kernel"], bias)[0]
    assert not acts[..., [1, 3, 4]].any() and acts[..., [0, 2, 5]].std(axis=(0, 1)).min() > 0
    e = _explain(model, x, target=2)
    assert sum(calls) == e.options["forward_passes"] == 3
    expected = _hand_scorecam(NumpyBackend(model), x, acts, 2, range(6))
    np.testing.assert_allclose(e.layer_attribution[0], expected, rtol=1e-4, atol=1e-7)


def test_max_channels_keeps_the_channels_of_largest_variance(numpy_net):
    model, weights, calls = numpy_net(8, 11)
    x = np.random.default_rng(2).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    acts = conv_same_relu(x, weights["conv1"]["kernel"], weights["conv1"]["bias"])
    e = _explain(model, x, target=[0, 1], max_channels=3)
    assert sum(calls) == e.options["forward_passes"] <= 6
    net = NumpyBackend(model)
    for n in range(2):
        variance = acts[n].reshape(-1, 8).var(axis=0)
        top = sorted(range(8), key=lambda c: -variance[c])[:3]  # chosen per sample
        expected = _hand_scorecam(net, x[n : n + 1], acts[n], n, top)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(e.layer_attribution[n], expected, rtol=1e-4, atol=1e-7)


def test_max_channels_of_at_least_the_width_is_full_scorecam(numpy_net):
    model, weights, _ = numpy_net(5, 4)
    x = np.random.default_rng(3).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    acts = conv_same_relu(x, weights["conv1"]["kernel"], weights["conv1"]["bias"])[0]
    expected = _hand_scorecam(NumpyBackend(model), x, acts, 1, range(5))
    assert np.abs(expected).max() > 0
    for k in (None, 5, 9):
        e = _explain(model, x, target=1, max_channels=k)
        np.testing.assert_allclose(e.layer_attribution[0], expected, rtol=1e-4, atol=1e-7, err_msg=str(k))


@pytest.mark.parametrize("bad", [0, -2, 2.5, "8", True])
def test_max_channels_must_be_a_positive_int(numpy_net, bad):
    model, _, _ = numpy_net(4, 0)
    x = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match="^max_channels: "):
        _explain(model, x, target=0, max_channels=bad)


def test_max_channels_matches_tf_keras_vis_max_n(monkeypatch):
    """tf-keras-vis' Faster Score-CAM (``max_N``), its mask upsampling (scipy zoom) set to polyviz's
    definition, at the layer resolution, unnormalised. One image per call: tf-keras-vis takes the
    union of the samples' top channels, polyviz each sample's own."""
    if not have("keras"):
        pytest.skip("the keras backend is not available")
    pytest.importorskip("tf_keras_vis")
    from tf_keras_vis import scorecam as tkv_scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    def polyviz_zoom(arr, factor, order=1, mode="nearest"):
        h, w = round(arr.shape[1] * factor[1]), round(arr.shape[2] * factor[2])
        return np.moveaxis(resize(np.moveaxis(arr, -1, 1), (h, w)), 1, -1)

    monkeypatch.setattr(tkv_scorecam, "zoom", polyviz_zoom)
    model, names = build("keras", vgg_spec([[8], [16], [16, 16]], input_shape=(32, 32, 3), dense=(32,), classes=10))
    layer = names["block3_conv2"]
    x = np.random.default_rng(6).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    viz = tkv_scorecam.Scorecam(model, clone=True)
    for i, target in enumerate([2, 9]):
        e = polyviz.explain(model, x[i : i + 1], "scorecam", target=target, layer=layer, max_channels=5, progress=False)
        ref = np.asarray(viz(CategoricalScore([target]), x[i : i + 1], penultimate_layer=layer, max_N=5,
                             expand_cam=False, normalize_cam=False))
        assert e.options["forward_passes"] <= 5
        assert np.abs(ref).max() > 0
        # tf-keras-vis divides by (max - min + 1e-7) when it normalises a mask: a 1e-7-relative difference
        np.testing.assert_allclose(e.layer_attribution, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
