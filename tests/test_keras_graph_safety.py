"""The Keras backend never mutates a user's layer, also when calls overlap (issue 12, item 3), and
reaches Keras only through public APIs or one guarded, documented shim (item 8)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import polyviz  # noqa: E402
from polyviz.errors import PolyvizError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


class WatchedDepthwise(keras.layers.DepthwiseConv2D):
    """A DepthwiseConv2D (its ``call`` untouched) that records every assignment that changes one of
    its attributes once ``watch`` is on: the layer must be left alone, not even for a moment.
    (Keras' own ``Layer.__call__`` re-assigns ``built``/``_called`` to their current values.)"""

    def __setattr__(self, name, value):
        if getattr(self, "watch", False):
            missing = object()
            current = getattr(self, name, missing)
            if current is missing or (current is not value and not _same(current, value)):
                self.writes.append(name)
        super().__setattr__(name, value)


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def depthwise_model(layer_cls=keras.layers.DepthwiseConv2D, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layer_cls(3, padding="same", activation="relu", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(5, 3, padding="same", activation="relu", name="separable")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


def repro_model(seed: int) -> keras.Model:
    """The issue's repro, as small as it gets: a fused-ReLU depthwise conv, pooling, a head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def tape_gradient(model: keras.Model, x: np.ndarray, target: int) -> np.ndarray:
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt, training=False)[:, target])
    return tape.gradient(score, xt).numpy()


def _concurrently(model: keras.Model, x: np.ndarray, methods: tuple[str, ...]) -> dict[str, object]:
    """Each method explained in its own thread, all started together: {method: values or exception}."""
    barrier = threading.Barrier(len(methods))
    results: dict[str, object] = {}

    def explain(method: str) -> None:
        barrier.wait()
        try:
            results[method] = polyviz.explain(model, x, method, target=1, progress=False).attribution
        except Exception as exc:  # reported by the caller
            results[method] = exc

    threads = [threading.Thread(target=explain, args=(m,)) for m in methods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_guided_backprop_never_leaks_into_saliency():
    """The issue's repro: a ``DepthwiseConv2D(activation="relu")``, guided backprop and saliency
    traced at the same time from two threads, on a fresh model each trial: saliency equals the plain
    ``tf.GradientTape`` gradient every time (it was 86% wrong in 4 of 10 trials, and stayed wrong)."""
    x = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    bad = []
    for trial in range(20):
        model = repro_model(trial)
        expected = tape_gradient(model, x, 1)
        results = _concurrently(model, x, ("guided_backprop", "saliency"))
        saliency = results["saliency"]
        assert isinstance(saliency, np.ndarray), saliency
        assert isinstance(results["guided_backprop"], np.ndarray), results["guided_backprop"]
        if not np.allclose(saliency, expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max())):
            bad.append(trial)
        # and later calls (cached traces) too
        again = polyviz.explain(model, x, "saliency", target=1, progress=False).attribution
        np.testing.assert_allclose(again, expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max()))
    assert not bad, f"saliency differed from the tape gradient in trials {bad}"


def test_mixed_methods_concurrently_give_sequential_results_and_leave_the_model():
    """Several method families at once on one Keras model (fused-ReLU depthwise and separable convs,
    BatchNormalization, Dropout): each result equals the single-threaded one, the model's
    fingerprint (weights, activations, trainable flags, dtype policies) is unchanged."""
    from polyviz_keras import KerasBackend

    def make() -> keras.Model:
        keras.utils.set_random_seed(5)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
        x = keras.layers.Dropout(0.5, name="drop")(x)
        x = keras.layers.SeparableConv2D(5, 3, padding="same", activation="relu", name="separable")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))

    xs = np.random.default_rng(3).uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    methods = ("saliency", "guided_backprop", "deconvnet", "deeplift", "integrated_gradients", "gradcam")
    twin = make()  # the single-threaded answers, from an identical model (its own traces)
    expected = {m: polyviz.explain(twin, xs, m, target=1, progress=False).attribution for m in methods}
    model = make()  # fresh: its functions are traced while the calls overlap
    before = KerasBackend.state_fingerprint(model)
    for _ in range(2):
        got = _concurrently(model, xs, methods)
        for m in methods:
            assert isinstance(got[m], np.ndarray), (m, got[m])
            np.testing.assert_allclose(got[m], expected[m], rtol=1e-5, atol=1e-7, err_msg=m)
    after = KerasBackend.state_fingerprint(model)
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], np.ndarray):
            assert np.array_equal(before[key], after[key]), key
        else:
            assert before[key] == after[key], key


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "deeplift", "saliency", "gradcam", "lrp"])
def test_no_layer_attribute_is_set_during_a_call(method):
    """No attribute of the user's layer is assigned during a call (the fused-activation layer's
    pre-activation is computed without touching it), whatever the call's outcome."""
    model = depthwise_model(WatchedDepthwise)
    layer = model.get_layer("depthwise")
    activation = layer.activation
    x = np.random.default_rng(1).uniform(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    model(x)  # Keras' first-call bookkeeping happens here, not in polyviz
    layer.writes = []
    layer.watch = True
    try:
        polyviz.explain(model, x, method, target=0, progress=False, **({"layer": "depthwise"} if method == "gradcam" else {}))
    except PolyvizError:
        pass  # LRP refuses a depthwise conv: the layer must be left alone all the same
    finally:
        object.__setattr__(layer, "watch", False)
    assert layer.writes == [], f"{method} assigned {layer.writes} on the user's layer"
    assert layer.activation is activation


def test_pre_activation_matches_every_fused_layer_type_and_refuses_unknown_calls():
    """The pre-activation of each supported layer type is its output with activation=None, computed
    by the layer's own call on a read-only view; a layer that overrides ``call`` is refused."""
    from polyviz_keras._graph import FUSED_ACTIVATION_LAYERS, pre_activation

    rng = np.random.default_rng(2)
    x2 = tf.constant(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    x1 = tf.constant(rng.normal(size=(2, 8, 4)).astype(np.float32))
    x3 = tf.constant(rng.normal(size=(2, 4, 4, 4, 4)).astype(np.float32))
    made = {
        "Dense": (keras.layers.Dense(3), x2),
        "EinsumDense": (keras.layers.EinsumDense("abcd,de->abce", output_shape=(8, 8, 3), bias_axes="e"), x2),
        "Conv1D": (keras.layers.Conv1D(3, 3, padding="causal"), x1),
        "Conv2D": (keras.layers.Conv2D(3, 3, strides=2), x2),
        "Conv3D": (keras.layers.Conv3D(3, 3), x3),
        "Conv1DTranspose": (keras.layers.Conv1DTranspose(3, 3), x1),
        "Conv2DTranspose": (keras.layers.Conv2DTranspose(3, 3, strides=2), x2),
        "Conv3DTranspose": (keras.layers.Conv3DTranspose(3, 3), x3),
        "DepthwiseConv1D": (keras.layers.DepthwiseConv1D(3, depth_multiplier=2), x1),
        "DepthwiseConv2D": (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), x2),
        "SeparableConv1D": (keras.layers.SeparableConv1D(3, 3), x1),
        "SeparableConv2D": (keras.layers.SeparableConv2D(3, 3, padding="same"), x2),
    }
    assert {cls.__name__ for cls in FUSED_ACTIVATION_LAYERS} == set(made)
    for name, (linear, x) in made.items():
        linear(x)  # build
        fused = type(linear).from_config({**linear.get_config(), "activation": "relu"})
        fused(x)
        fused.set_weights([w + 0.1 for w in linear.get_weights()])  # non-zero biases
        linear.set_weights(fused.get_weights())
        got = pre_activation(fused, x)
        np.testing.assert_allclose(got.numpy(), linear(x).numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
        assert fused.activation is keras.activations.relu

    class Custom(keras.layers.Dense):
        def call(self, inputs):
            return self.activation(inputs @ self.kernel) * 2.0

    custom = Custom(3, activation="relu")
    custom(x2)
    with pytest.raises(PolyvizError, match="fused activation polyviz cannot separate"):
        pre_activation(custom, x2)


# ---------------------------------------------------------------------------------------------
# item 8: no private framework internals outside the shim
# ---------------------------------------------------------------------------------------------
PRIVATE_IMPORT = re.compile(
    r"^\s*(?:from\s+(?:keras\.src|keras\._|tensorflow\.python|tf_keras\.src|torch\._)\S*\s+import"
    r"|import\s+(?:keras\.src|tensorflow\.python|tf_keras\.src)\b)",
    re.MULTILINE,
)
#: The one module allowed to reach framework internals; it guards and documents each use.
SHIM = ROOT / "backends" / "polyviz_keras" / "_internals.py"


def test_no_private_framework_imports_outside_the_shim():
    offenders = []
    for folder in ("backends", "polyviz"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == SHIM:
                continue
            for match in PRIVATE_IMPORT.finditer(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert not offenders, "private framework imports (use public APIs or the shim):\n" + "\n".join(offenders)


def test_the_shim_fails_with_one_line_naming_the_keras_version():
    """A Keras without the internals polyviz needs gives a one-line CapabilityError naming the
    installed version, not an AttributeError."""
    from polyviz_keras import _internals

    from polyviz.errors import CapabilityError

    class NoGraph:
        pass

    class OldGraph:
        def _run_through_graph(self, inputs):
            return inputs

    for graph in (NoGraph(), OldGraph()):
        with pytest.raises(CapabilityError) as info:
            _internals.run_through_graph(graph, None, lambda op: op)
        message = str(info.value)
        assert "\n" not in message and f"Keras {keras.__version__}" in message
    with pytest.raises(CapabilityError, match="_inbound_nodes"):
        _internals.call_count(NoGraph())


def test_the_shim_is_guarded_and_documented():
    """The shim imports no private module at import time and says what it uses and why."""
    text = SHIM.read_text(encoding="utf-8")
    assert not PRIVATE_IMPORT.search(text), "the shim must reach internals through getattr, guarded"
    assert '"""' in text.split("\n", 1)[0] + text.split("\n", 2)[1]
