"""Tests of the Keras backend against independent references (GradientTape on the plain model,
hand-written numpy forward and backward passes, finite differences, the numpy mask definition)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from polyviz_keras import KerasBackend, _functions  # noqa: E402

from backends import float64_conformance, keras_float64  # noqa: E402
from polyviz.errors import InputError, LayerError, ModelError, TargetError, WeightsNotFoundError  # noqa: E402
from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights, vgg_spec  # noqa: E402
from polyviz.protocol import (  # noqa: E402
    OUTPUT,
    Boxes,
    ChannelMean,
    ClassScore,
    FeatureGroups,
    LayerDistance,
    LayerNorm,
    LowResMasks,
    NativeCallable,
    Neuron,
    OutputWeighting,
    Rule,
    materialize_masks,
)
from polyviz.registry import backend_for  # noqa: E402
from polyviz.testing import CHECKS, Conformance, tiny_spec  # noqa: E402

RNG = np.random.default_rng(0)


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def fp_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k]), k
        else:
            assert a[k] is b[k] or a[k] == b[k], k


def small_cnn(softmax=False, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(6, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(3, activation="softmax" if softmax else None, name="predictions")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def cnn():
    return small_cnn()


@pytest.fixture(scope="module")
def x8():
    return RNG.normal(size=(3, 8, 8, 3)).astype(np.float32)


# ---- conformance ---------------------------------------------------------------------------------

_CONFORMANCE = {}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_conformance(check):
    if "c" not in _CONFORMANCE:
        _CONFORMANCE["c"] = Conformance(KerasBackend)
    check(_CONFORMANCE["c"])


def build_float64(spec, weights):
    """The spec built by KerasBackend in float64 (see backends.keras_float64)."""
    with keras_float64():
        return KerasBackend.build(spec, weights)


def test_float64_model_matches_float64_reference(monkeypatch):
    """A float64 model: the input is cast in the graph, objective data follows the model dtype,
    results come back float32, and everything equals the float64 numpy reference to 1e-6."""
    spec = tiny_spec()
    model, _ = build_float64(spec, random_weights(spec, 0))
    assert model.compute_dtype == "float64" and model.get_layer("conv1").kernel.dtype == "float64"
    assert keras.config.floatx() == "float32" and keras.config.dtype_policy().name == "float32"
    float64_conformance(KerasBackend, build_float64, monkeypatch)


# ---- import and detection ----------------------------------------------------------------------


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, polyviz_keras, polyviz.registry as r; r.refresh(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules); "
        "assert not polyviz_keras.KerasBackend.claims(object()); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_detection_and_version(cnn):
    backend = backend_for(cnn)
    assert isinstance(backend, KerasBackend)
    assert KerasBackend.framework_version().startswith(f"keras {keras.__version__} / tensorflow ")
    assert backend.input_shape == (8, 8, 3)


def test_subclassed_model_gets_what_needs_no_layer():
    """Issue 14 item 3 (was: refused): forward and input gradients work, layer methods are refused
    naming what works (tests/test_keras_structures.py has the full check)."""
    from polyviz.errors import CapabilityError

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(keras.ops.mean(x, axis=(1, 2)))

    net = Net()
    x = np.random.default_rng(0).random((1, 4, 4, 3)).astype(np.float32)
    net(x)
    assert KerasBackend.claims(net)
    backend = KerasBackend(net)
    np.testing.assert_allclose(backend.forward(x), net(x).numpy(), rtol=1e-6)
    with pytest.raises(CapabilityError, match="subclassed.*What works"):
        backend.layer_weights("dense")


# ---- forward, logits, gradients -------------------------------------------------------------------


def test_forward_and_gradient_match_gradient_tape(cnn, x8):
    backend = KerasBackend(cnn)
    close(backend.forward(x8), cnn(x8, training=False).numpy())
    targets = [0, 2, 1]
    values, grad = backend.input_gradient(x8, ClassScore(targets))
    xt = tf.constant(x8)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = cnn(xt, training=False)
        score = tf.gather(out, np.array(targets)[:, None], batch_dims=1)[:, 0]
    expected = tape.gradient(score, xt).numpy()
    close(values, score.numpy())
    close(grad, expected)


def test_gradient_matches_finite_differences(cnn, x8):
    backend = KerasBackend(cnn)
    x = x8[:1].astype(np.float64)
    _, grad = backend.input_gradient(x.astype(np.float32), ClassScore(1))
    rng = np.random.default_rng(1)
    eps = 1e-2
    for _ in range(5):
        idx = tuple(rng.integers(0, s) for s in x.shape)
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (cnn(plus.astype(np.float32))[0, 1] - cnn(minus.astype(np.float32))[0, 1]).numpy() / (2 * eps)
        assert abs(grad[idx] - numeric) < 2e-2 * max(1.0, abs(numeric))


@pytest.mark.parametrize("final", ["dense", "activation", "softmax_layer"])
def test_logits_of_softmax_models(final):
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 4, 2))
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(5, activation="softmax" if final == "dense" else None, name="head")
    out = dense(flat)
    if final == "activation":
        out = keras.layers.Activation("softmax")(out)
    elif final == "softmax_layer":
        out = keras.layers.Softmax()(out)
    model = keras.Model(inp, out)
    x = RNG.normal(size=(2, 4, 4, 2)).astype(np.float32)
    kernel, bias = dense.get_weights()
    logits = x.reshape(2, -1) @ kernel + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    before = KerasBackend.state_fingerprint(model)
    close(KerasBackend(model).forward(x), logits)
    close(KerasBackend(model, logits=False).forward(x), probs)
    values, grad = KerasBackend(model).input_gradient(x, ClassScore([3, 0]))
    close(values, logits[[0, 1], [3, 0]])
    close(grad[0].ravel(), kernel[:, 3])
    close(grad[1].ravel(), kernel[:, 0])
    fp_equal(before, KerasBackend.state_fingerprint(model))


def test_logits_through_a_nested_softmax_model():
    keras.utils.set_random_seed(7)
    inner = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax", name="cls")])
    inp = keras.Input((4, 4, 2))
    model = keras.Model(inp, inner(inp))
    x = RNG.normal(size=(2, 4, 4, 2)).astype(np.float32)
    kernel, bias = inner.get_layer("cls").get_weights()
    backend = KerasBackend(model)
    assert "sequential/cls" in backend.layer_names() or any(n.endswith("/cls") for n in backend.layer_names())
    close(backend.forward(x), x.reshape(2, -1) @ kernel + bias)
    close(KerasBackend(model, logits=False).forward(x), model(x).numpy())


def test_layer_objectives_match_gradient_tape(cnn, x8):
    backend = KerasBackend(cnn)
    sub = keras.Model(cnn.input, [cnn.get_layer("relu2").output, cnn.get_layer("fc1").output])
    ref = RNG.normal(size=(4, 4, 5)).astype(np.float32)
    cases = [
        (ChannelMean("relu2", [0, 4, 2]), lambda a, f: tf.gather(tf.reduce_mean(a, (1, 2)), [[0], [4], [2]], batch_dims=1)[:, 0]),
        (ChannelMean("fc1", 5), lambda a, f: f[:, 5]),
        (Neuron("relu2", (1, 2, 3)), lambda a, f: a[:, 1, 2, 3]),
        (LayerNorm("relu2", (1, 3)), lambda a, f: tf.reduce_mean(tf.gather(a, [1, 3], axis=-1) ** 2, (1, 2, 3))),
        (LayerDistance("relu2", ref), lambda a, f: tf.reduce_sum((a - ref) ** 2, (1, 2, 3))),
    ]
    for objective, fn in cases:
        xt = tf.constant(x8)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            a, f = sub(xt, training=False)
            v = fn(a, f)
        expected = tape.gradient(v, xt).numpy()
        values, grad = backend.input_gradient(x8, objective)
        close(values, v.numpy())
        close(grad, expected)
    w = RNG.normal(size=(3,)).astype(np.float32)
    values, _ = backend.input_gradient(x8, OutputWeighting(w))
    close(values, cnn(x8).numpy() @ w)
    values, _ = backend.input_gradient(x8, NativeCallable(lambda out: tf.reduce_max(out, axis=1)))
    close(values, cnn(x8).numpy().max(1))


# ---- nested models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transfer():
    keras.utils.set_random_seed(2)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    inp = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(base(inp))
    out = keras.layers.Dense(4, activation="softmax", name="head")(h)
    return keras.Model(inp, out), base


def test_nested_model_layers_and_activations(transfer):
    model, base = transfer
    backend = KerasBackend(model)
    names = backend.layer_names()
    assert "vgg16" in names and "vgg16/block5_conv3" in names and "head" in names
    assert not any("input" in n.lower() for n in names)
    info = backend.layer_info("vgg16/block5_conv3")
    assert info.output_shape == (2, 2, 512) and info.type == "Conv2D" and info.params == 3 * 3 * 512 * 512 + 512
    x = RNG.normal(size=(2, 32, 32, 3)).astype(np.float32)
    acts = backend.layer_activations(x, ["vgg16/block5_conv3", "vgg16"], include_output=True)
    inner = keras.Model(base.input, base.get_layer("block5_conv3").output)
    close(acts["vgg16/block5_conv3"], inner(x).numpy(), rtol=1e-4, atol=1e-4)
    close(acts["vgg16"], base(x).numpy(), rtol=1e-4, atol=1e-4)
    gap = acts["vgg16"].mean(axis=(1, 2))
    kernel, bias = model.get_layer("head").get_weights()
    close(acts[OUTPUT], gap @ kernel + bias, rtol=1e-4, atol=1e-4)


def test_nested_layer_gradients_match_gradient_tape(transfer):
    model, base = transfer
    backend = KerasBackend(model)
    before = KerasBackend.state_fingerprint(model)
    x = RNG.normal(size=(2, 32, 32, 3)).astype(np.float32)
    res = backend.layer_gradients(x, ["vgg16/block5_conv3"], ClassScore([1, 3]))
    inner = keras.Model(base.input, base.get_layer("block5_conv3").output)
    a = tf.constant(inner(x).numpy())
    kernel, bias = model.get_layer("head").get_weights()
    with tf.GradientTape() as tape:
        tape.watch(a)
        h = tf.reduce_mean(base.get_layer("block5_pool")(a), axis=(1, 2))
        logits = h @ kernel + bias
        score = tf.gather(logits, [[1], [3]], batch_dims=1)[:, 0]
    close(res.values, score.numpy(), atol=1e-4)
    close(res.activations["vgg16/block5_conv3"], a.numpy(), atol=1e-4)
    close(res.gradients["vgg16/block5_conv3"], tape.gradient(score, a).numpy(), atol=1e-5)
    fp_equal(before, KerasBackend.state_fingerprint(model))


# ---- relu rules, hand-written backward ----------------------------------------------------------------


def test_guided_and_deconvnet_match_hand_backward():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((3, 3, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(7, name="d1"),
            keras.layers.Activation("relu", name="act1"),
            keras.layers.Dense(6, activation="relu", name="d2"),
            keras.layers.Dense(4, name="out"),
        ]
    )
    w1, b1 = model.get_layer("d1").get_weights()
    w2, b2 = model.get_layer("d2").get_weights()
    w3, _ = model.get_layer("out").get_weights()
    x = RNG.normal(size=(5, 3, 3, 2)).astype(np.float32)
    targets = np.array([0, 1, 2, 3, 1])
    z1 = x.reshape(5, -1) @ w1 + b1
    z2 = np.maximum(z1, 0) @ w2 + b2
    backend = KerasBackend(model)
    before = KerasBackend.state_fingerprint(model)
    for rule in (None, "guided", "deconvnet"):
        g = w3[:, targets].T  # d score / d relu(z2)

        def relu_back(g, z, rule=rule):
            if rule == "deconvnet":
                return np.maximum(g, 0)
            g = g * (z > 0)
            return np.maximum(g, 0) if rule == "guided" else g

        g = relu_back(g, z2) @ w2.T
        g = relu_back(g, z1) @ w1.T
        _, grad = backend.input_gradient(x, ClassScore(targets.tolist()), Rule(relu=rule))
        close(grad.reshape(5, -1), g)
    fp_equal(before, KerasBackend.state_fingerprint(model))


def test_rule_on_other_relu_layers_restores_the_model():
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.SeparableConv2D(3, 3, activation="relu", name="sep")(inp)
    out = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    x = RNG.normal(size=(2, 6, 6, 2)).astype(np.float32)
    backend = KerasBackend(model)
    before = KerasBackend.state_fingerprint(model)
    z = keras.ops.convert_to_numpy(
        keras.Model(inp, h)(x)
    )
    res = backend.layer_gradients(x, ["sep"], ClassScore(0), Rule(relu="guided"))
    close(res.activations["sep"], z)
    fp_equal(before, KerasBackend.state_fingerprint(model))
    assert model.get_layer("sep").activation is keras.activations.relu

    def boom(out):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        backend.input_gradient(x, NativeCallable(boom), Rule(relu="deconvnet"))
    fp_equal(before, KerasBackend.state_fingerprint(model))


# ---- compiled functions ---------------------------------------------------------------------------


def test_no_retracing_for_new_targets_and_batch_sizes(cnn):
    backend = KerasBackend(cnn)
    x = RNG.normal(size=(5, 8, 8, 3)).astype(np.float32)
    backend.input_gradient(x[:2], ClassScore([0, 1]))
    backend.layer_gradients(x[:2], ["conv1"], ChannelMean("relu2", 1), Rule(relu="guided"))
    backend.forward(x[:1])
    traces = sum(_functions.TRACES.values())
    for n in (1, 3, 5):
        backend.input_gradient(x[:n], ClassScore(list(range(n % 3)) + [2] * (n - n % 3)))
        backend.input_gradient(x[:n], ClassScore(n % 3))
        backend.layer_gradients(x[:n], ["conv1"], ChannelMean("relu2", [n % 5] * n), Rule(relu="guided"))
        backend.forward(x[:n])
    backend.masked_scores(x[:1], Boxes(np.array([[0, 0, 2, 2]])))
    assert sum(_functions.TRACES.values()) == traces


def test_cache_dies_with_the_model(x8):
    model = small_cnn(seed=5)
    KerasBackend(model).input_gradient(x8, ClassScore(0))
    assert model in _functions._CACHE
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# ---- masked scores ---------------------------------------------------------------------------------


def test_masked_scores_match_numpy_masks(cnn, x8):
    backend = KerasBackend(cnn)
    rng = np.random.default_rng(7)
    specs = [
        Boxes(np.array([[0, 0, 3, 3], [2, 4, 8, 8], [-1, 5, 4, 9]])),
        FeatureGroups(rng.integers(0, 3, size=(8, 8)), rng.random((4, 3)).astype(np.float32)),
        LowResMasks(rng.random((40, 3, 3)).astype(np.float32), normalize=True),
        LowResMasks(np.ones((2, 2, 2), np.float32), normalize=True),
        LowResMasks(rng.random((3, 2, 3)).astype(np.float32), mode="nearest"),
        LowResMasks(rng.random((2, 3, 3)).astype(np.float32), upsampled_size=(11, 10), offsets=np.array([[1, 2], [3, 0]])),
    ]
    baseline = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
    for spec in specs:
        m = len(spec)
        index = np.arange(m) % 3
        full = materialize_masks(spec, 8, 8)[..., None]
        expected = cnn(x8[index] * full + baseline[index] * (1 - full)).numpy()
        close(backend.masked_scores(x8, spec, baseline, sample_index=index), expected, atol=1e-5)
        targets = np.arange(m) % 3
        got = backend.masked_scores(x8, spec, 0.25, sample_index=index, objective=ClassScore(targets.tolist()))
        expected = cnn(x8[index] * full + 0.25 * (1 - full)).numpy()[np.arange(m), targets]
        close(got, expected, atol=1e-5)


# ---- build and export ------------------------------------------------------------------------------


def numpy_forward(spec: NetworkSpec, weights, x):
    """A plain numpy forward pass of a VGG-style spec (the independent reference)."""
    a = x.astype(np.float64)
    for layer in spec.layers:
        cfg = layer.config
        if layer.kind == "conv2d":
            k = weights[layer.name]["kernel"].astype(np.float64)
            kh, kw = k.shape[:2]
            pad = cfg["padding"]
            ph, pw = ((kh // 2, kw // 2) if pad == "same" else (0, 0)) if isinstance(pad, str) else pad
            a = np.pad(a, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
            h, w = a.shape[1] - kh + 1, a.shape[2] - kw + 1
            out = np.zeros((a.shape[0], h, w, k.shape[-1]))
            for i in range(kh):
                for j in range(kw):
                    out += np.einsum("nhwc,cd->nhwd", a[:, i : i + h, j : j + w], k[i, j])
            a = out + weights[layer.name]["bias"]
            if cfg.get("activation") == "relu":
                a = np.maximum(a, 0)
        elif layer.kind == "relu":
            a = np.maximum(a, 0)
        elif layer.kind == "maxpool2d":
            n, h, w, c = a.shape
            a = a[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        elif layer.kind == "flatten":
            a = a.reshape(len(a), -1)
        elif layer.kind == "global_avgpool":
            a = a.mean(axis=(1, 2))
        elif layer.kind == "dense":
            a = a @ weights[layer.name]["kernel"] + weights[layer.name]["bias"]
            if cfg.get("activation") == "relu":
                a = np.maximum(a, 0)
    return a


def small_spec():
    spec = vgg_spec([[4], [6]], input_shape=(10, 10, 3), dense=(8,), classes=5, dropout=0.5)
    layers = list(spec.layers)
    layers[2] = LayerSpec("conv2d", "block2_conv1", {**layers[2].config, "padding": (1, 1), "activation": None})
    layers.insert(3, LayerSpec("relu", "block2_relu"))
    return NetworkSpec(spec.input_shape, tuple(layers))


def test_build_matches_numpy_and_export_round_trips():
    spec = small_spec()
    weights = random_weights(spec, seed=3)
    model, names = KerasBackend.build(spec, weights)
    assert names == {layer.name: layer.name for layer in spec.layers}
    x = RNG.normal(size=(2, 10, 10, 3)).astype(np.float32)
    close(KerasBackend(model).forward(x), numpy_forward(spec, weights, x), atol=1e-4)
    spec2, weights2, names2 = KerasBackend.export(model)
    assert spec2 == spec
    assert names2 == names
    for name, values in weights.items():
        for key, value in values.items():
            assert np.array_equal(weights2[name][key], value)


def test_build_identity_adaptive_pool_and_refusal():
    spec = vgg_spec([[4]], input_shape=(8, 8, 3), dense=(), classes=3, adaptive_pool=(4, 4), classifier_activation="softmax")
    model, names = KerasBackend.build(spec, random_weights(spec))
    assert "avgpool" not in names and names["predictions"] == "predictions"
    spec2, _, _ = KerasBackend.export(model)
    assert spec2.layer("predictions").config["activation"] == "softmax"
    bad = vgg_spec([[4]], input_shape=(8, 8, 3), dense=(), classes=3, adaptive_pool=(2, 2))
    with pytest.raises(ModelError, match="avgpool"):
        KerasBackend.build(bad)


def test_export_refuses_unsupported_layers():
    inp = keras.Input((8, 8, 3))
    out = keras.layers.LayerNormalization(name="ln")(inp)  # BatchNormalization converts since issue 15
    with pytest.raises(ModelError, match="'ln' \\(LayerNormalization\\)"):
        KerasBackend.export(keras.Model(inp, out))


@pytest.mark.slow
def test_export_keras_vgg16_names():
    model = keras.applications.VGG16(weights=None)
    spec, weights, names = KerasBackend.export(model)
    assert [layer.name for layer in spec.layers][:3] == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert names["block5_conv3"] == "block5_conv3" and names["predictions"] == "predictions"
    assert spec.layer("predictions").config["activation"] == "softmax"
    assert len([s for s in spec.layers if s.kind == "conv2d"]) == 13
    assert weights["fc1"]["kernel"].shape == (25088, 4096)


# ---- zoo ---------------------------------------------------------------------------------------------


def test_vgg_missing_weights_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        KerasBackend.vgg("vgg16", "imagenet")
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in message and str(tmp_path) in message and "https://" in message
    with pytest.raises(WeightsNotFoundError, match="nowhere.weights.h5"):
        KerasBackend.vgg("vgg19", tmp_path / "nowhere.weights.h5")


@pytest.mark.slow
def test_vgg_imagenet_from_keras_home(tmp_path, monkeypatch):
    from keras.src.legacy.saving import legacy_h5_format

    h5py = pytest.importorskip("h5py")
    keras.utils.set_random_seed(11)
    source = keras.applications.VGG16(weights=None)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with h5py.File(models_dir / "vgg16_weights_tf_dim_ordering_tf_kernels.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = KerasBackend.vgg("vgg16", "imagenet")
    for name in ("block1_conv1", "block5_conv3", "predictions"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            assert np.array_equal(a, b)
    # and through a .weights.h5 path
    path = tmp_path / "vgg.weights.h5"
    source.save_weights(path)
    model = KerasBackend.vgg("vgg16", path)
    assert np.array_equal(model.get_layer("fc2").get_weights()[0], source.get_layer("fc2").get_weights()[0])


# ---- errors and safety ------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument(cnn, x8):
    backend = KerasBackend(cnn)
    before = KerasBackend.state_fingerprint(cnn)
    with pytest.raises(InputError, match="channels-first"):
        backend.forward(np.transpose(x8, (0, 3, 1, 2)))
    with pytest.raises(InputError, match="rank"):
        backend.forward(x8[0])
    nan = x8.copy()
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        backend.input_gradient(nan, ClassScore(0))
    with pytest.raises(LayerError, match="Did you mean 'conv1'"):
        backend.layer_activations(x8, ["conv_1"])
    with pytest.raises(TargetError, match="target"):
        backend.input_gradient(x8, ClassScore(3))
    with pytest.raises(TargetError, match="channel"):
        backend.input_gradient(x8, ChannelMean("conv1", 4))
    fp_equal(before, KerasBackend.state_fingerprint(cnn))


def test_model_errors_become_input_errors():
    inp = keras.Input((None, None, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 5)(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    backend = KerasBackend(model)
    assert backend.forward(np.zeros((1, 9, 9, 3), np.float32)).shape == (1, 2)
    with pytest.raises(InputError, match="^x: ") as info:
        backend.forward(np.zeros((1, 3, 3, 3), np.float32))
    assert info.value.__cause__ is not None


def test_state_unchanged_after_every_call(cnn, x8):
    backend = KerasBackend(cnn)
    before = KerasBackend.state_fingerprint(cnn)
    backend.forward(x8)
    backend.layers()
    backend.layer_weights("conv1")
    backend.layer_activations(x8, ["conv1", "fc1"], include_output=True)
    for rule in (None, "guided", "deconvnet"):
        backend.input_gradient(x8, ClassScore(1), Rule(relu=rule))
        backend.layer_gradients(x8, ["relu2"], ClassScore(2), Rule(relu=rule))
    backend.masked_scores(x8[:1], Boxes(np.array([[0, 0, 2, 2]])))
    backend.layer_masked_scores(x8[:1], "conv2", np.ones((2, 5), np.float32))
    fp_equal(before, KerasBackend.state_fingerprint(cnn))
    assert cnn.get_layer("conv1").activation is keras.activations.relu


def test_layers_listing_and_weights(cnn):
    infos = {i.name: i for i in KerasBackend(cnn).layers()}
    assert list(infos) == ["conv1", "pool1", "conv2", "relu2", "flatten", "fc1", "predictions"]
    assert infos["conv1"].output_shape == (8, 8, 4) and infos["conv1"].params == 3 * 3 * 3 * 4 + 4
    assert infos["fc1"].output_shape == (6,) and infos["fc1"].trainable
    w = KerasBackend(cnn).layer_weights("fc1")
    assert set(w) == {"kernel", "bias"}
    assert np.array_equal(w["kernel"], cnn.get_layer("fc1").kernel.numpy())


def test_sequential_model_and_preprocess_gradient():
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, name="d")])
    from polyviz.preprocess import Preprocess

    pre = Preprocess.caffe(1.0)
    x = RNG.random((2, 4, 4, 3)).astype(np.float32)
    backend = KerasBackend(model, preprocess=pre)
    close(backend.forward(x), model(pre.apply(x)).numpy(), rtol=1e-4, atol=1e-3)
    _, grad = backend.input_gradient(x, ClassScore(1))
    kernel = model.get_layer("d").kernel.numpy()[:, 1].reshape(4, 4, 3)
    close(grad[0], kernel[..., ::-1] * 255.0, rtol=1e-5)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="tensorflow backend only")
def test_keras_backend_name_is_tensorflow():
    assert keras.backend.backend() == "tensorflow"


def test_shared_layer_is_reported_not_mixed_up():
    import keras

    from polyviz.errors import LayerError

    inp = keras.Input((6, 6, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    out = keras.layers.Dense(2)(keras.layers.Flatten()(shared(shared(inp))))
    model = keras.Model(inp, out)
    backend = KerasBackend(model)
    x = np.zeros((1, 6, 6, 3), np.float32)
    with pytest.raises(LayerError, match="'shared' is called more than once"):
        backend.layer_activations(x, ["shared"])
    assert backend.forward(x).shape == (1, 2)  # the model itself still runs
