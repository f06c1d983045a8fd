"""Keras models as users build them (issue 14, item 3): functional graphs with raw ops (``x + y``,
``keras.ops`` nodes: keras.applications ConvNeXtTiny), subclassed models, and a backbone sub-model
nested in a functional model. References come from ``tf.GradientTape`` on a functional model built
here from the same symbolic tensors (no polyviz code in the reference)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import polyviz  # noqa: E402
from polyviz.errors import CapabilityError, ModelError  # noqa: E402
from polyviz.registry import backend_class  # noqa: E402


def _gradcam(acts, grads):
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    return np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0.0)


def _tape(model, tensor, x, target):
    """(activation, gradient) of the symbolic ``tensor`` of ``model`` for ``x``, by GradientTape."""
    probe = keras.Model(model.inputs, [tensor, model.output])
    with tf.GradientTape() as tape:
        a, out = probe(tf.constant(x), training=False)
        score = out[:, target]
    return a.numpy(), tape.gradient(score, a).numpy()


def _close(a, b):
    b = np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def convnext():
    keras.utils.set_random_seed(0)
    # logits out: polyviz explains pre-softmax scores, and the tape reference here differentiates the output
    return keras.applications.ConvNeXtTiny(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)


def _op(model, name):
    return next(op for op in model.operations if op.name == name)


def test_convnext_raw_op_layers_work_with_every_layer_method(convnext):
    x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    fp = backend_class("keras").state_fingerprint(convnext)
    cam = polyviz.explain(convnext, x, "gradcam", target=1, progress=False)
    layer = cam.layer
    assert type(_op(convnext, layer)).__name__ == "Add"  # the raw x + y that ends the last block
    target, reference = next(
        (t, r) for t in range(10) if (r := _gradcam(*_tape(convnext, _op(convnext, layer).output, x, t))).max() > 0
    )
    cam = polyviz.explain(convnext, x, "gradcam", target=target, progress=False)
    _close(cam.layer_attribution, reference)
    a, g = _tape(convnext, _op(convnext, layer).output, x, target)
    _close(polyviz.activations(convnext, x, layer)[layer], a)
    lga = polyviz.explain(convnext, x, "layer_gradient_x_activation", target=target, layer=layer, progress=False)
    _close(lga.attribution, a * g)
    for method, options in (("gradcam_plus_plus", {}), ("layercam", {}), ("scorecam", {"max_channels": 8})):
        e = polyviz.explain(convnext, x, method, target=target, progress=False, **options)
        assert np.isfinite(e.attribution).all()
    small = next(op.name for op in convnext.operations if type(op).__name__ == "Add")  # stage 0 (96 channels)
    rows = polyviz.summary(convnext, print_table=False)
    assert any(row.name == layer for row in rows)
    from polyviz.render.grids import activation_grid

    assert activation_grid(polyviz.activations(convnext, x, small)[small], channels=8).ndim == 3
    with pytest.raises(CapabilityError, match="no LRP rule"):  # LRP's rules are #9's: a clean refusal
        polyviz.explain(convnext, x, "lrp", target=target, progress=False)
    after = backend_class("keras").state_fingerprint(convnext)
    assert fp.keys() == after.keys()
    assert all(np.array_equal(fp[k], after[k]) if isinstance(fp[k], np.ndarray) else fp[k] == after[k] for k in fp)


@pytest.mark.slow
def test_convnext_raw_op_layers_with_the_multi_pass_layer_methods(convnext):
    x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    for method, options in (("layer_integrated_gradients", {"n_steps": 4}), ("layer_conductance", {"n_steps": 4}),
                            ("ablationcam", {})):
        e = polyviz.explain(convnext, x, method, target=1, progress=False, **options)
        assert np.isfinite(e.attribution).all()


class Subclassed(keras.Model):
    """A subclassed model with a functional backbone attribute, as users write them."""

    def __init__(self):
        super().__init__()
        inner = keras.Input((12, 12, 3))
        self.backbone = keras.Model(
            inner, keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inner), name="bb")
        self.conv = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.fc = keras.layers.Dense(5, name="fc")

    def call(self, x, training=False):
        return self.fc(self.pool(self.conv(self.backbone(x))))


def test_subclassed_model_runs_every_method_that_names_no_layer():
    keras.utils.set_random_seed(0)
    model = Subclassed()
    x = np.random.default_rng(0).random((2, 12, 12, 3), dtype=np.float32)
    with pytest.raises(ModelError, match="not built yet"):
        polyviz.explain(model, x, "saliency", target=1, progress=False)
    model(x)  # built by the user
    fp = backend_class("keras").state_fingerprint(model)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = model(xt)[:, 1]
    grad = tape.gradient(score, xt).numpy()
    e = polyviz.explain(model, x, "input_x_gradient", target=1, progress=False)
    _close(e.attribution, grad * x)
    for method, options in (("integrated_gradients", {"n_steps": 4}), ("smoothgrad", {"n_samples": 2}),
                            ("occlusion", {"window": 4, "stride": 4}), ("rise", {"n_masks": 8})):
        out = polyviz.explain(model, x, method, target=1, progress=False, **options)
        assert np.isfinite(out.attribution).all()
    predicted = polyviz.explain(model, x, "saliency", progress=False).target
    np.testing.assert_array_equal(predicted, model(x).numpy().argmax(-1))
    after = backend_class("keras").state_fingerprint(model)
    assert all(np.array_equal(fp[k], after[k]) if isinstance(fp[k], np.ndarray) else fp[k] == after[k] for k in fp)


def test_subclassed_model_layers_by_attribute_path():
    """Layers reached by attribute path (``conv``; ``bb/c1`` inside the functional backbone):
    activations and Grad-CAM equal GradientTape on the model's layers called by hand; what needs
    to change a layer's output is refused, saying what works."""
    keras.utils.set_random_seed(0)
    model = Subclassed()
    x = np.random.default_rng(0).random((1, 12, 12, 3), dtype=np.float32)
    model(x)
    fp = backend_class("keras").state_fingerprint(model)
    with tf.GradientTape(persistent=True) as tape:
        inner = model.backbone(tf.constant(x))
        tape.watch(inner)
        a = model.conv(inner)
        tape.watch(a)
        out = model.fc(model.pool(a))
        scores = [out[:, t] for t in range(5)]
    for layer, act in (("conv", a), ("bb/c1", inner)):
        target, reference = next(
            (t, r) for t in range(5) if (r := _gradcam(act.numpy(), tape.gradient(scores[t], act).numpy())).max() > 0)
        e = polyviz.explain(model, x, "gradcam", target=target, layer=layer, progress=False)
        _close(e.layer_attribution, reference)
        _close(polyviz.activations(model, x, layer)[layer], act.numpy())
    assert polyviz.explain(model, x, "scorecam", target=1, layer="conv", progress=False).attribution.shape == (1, 12, 12)
    assert polyviz.explain(model, x, "gradcam", target=1, progress=False).layer == "conv"  # the default
    for method in ("ablationcam", "guided_backprop", "layer_integrated_gradients"):
        with pytest.raises(CapabilityError, match="subclassed.*What works: every method that names no layer"):
            polyviz.explain(model, x, method, target=1, layer="conv", progress=False)
    after = backend_class("keras").state_fingerprint(model)
    assert all(np.array_equal(fp[k], after[k]) if isinstance(fp[k], np.ndarray) else fp[k] == after[k] for k in fp)


def test_nested_backbone_layers_are_named_by_path():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inner_in)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h)
    h = keras.layers.Add(name="res")([h, keras.layers.Conv2D(8, 1, name="skip")(inner_in)])
    backbone = keras.Model(inner_in, keras.ops.relu(h), name="backbone")
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).random((1, 16, 16, 3), dtype=np.float32)
    e = polyviz.explain(model, x, "gradcam", target=2, layer="backbone/res", progress=False)
    flat = keras.Model(inner_in, [backbone.get_layer("res").output, backbone.output])  # the inner graph alone
    with tf.GradientTape() as tape:
        a, feats = flat(tf.constant(x))
        tape.watch(a)
        # the rest of the outer model applied to the backbone's output, which is relu(a)
        score = model.layers[-1](model.layers[-2](keras.ops.relu(a)))[:, 2]
    reference = _gradcam(a.numpy(), tape.gradient(score, a).numpy())
    _close(e.layer_attribution, reference)
    assert polyviz.explain(model, x, "gradcam", target=2, progress=False).layer.startswith("backbone/")
