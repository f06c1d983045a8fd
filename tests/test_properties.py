"""Property-based tests of the public API (issue 12, item 9).

For every method of ``polyviz.methods()``, on a tiny conv net in each installed backend, hypothesis
draws shapes, dtypes, value ranges, layouts, targets, layers, batch sizes and method options (valid
and invalid). Whatever it draws, the outcome is one of two things:

* a valid :class:`~polyviz.Explanation`: finite float32 values of the right shape in the caller's
  layout, one valid target per sample; or
* a :class:`~polyviz.errors.PolyvizError` with a one-line message,

and the model is left exactly as it was (weights, buffers, training flags, hooks, requires_grad:
``Backend.state_fingerprint``). Bounded and derandomised, so that it runs in seconds in CI.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import polyviz  # noqa: E402
from backends import ALL  # noqa: E402
from polyviz.errors import CapabilityError, PolyvizError  # noqa: E402
from polyviz.explanation import Explanation  # noqa: E402
from polyviz.registry import backend_class  # noqa: E402

CLASSES = 5
#: Spatial size of the Keras model (its input shape is fixed); the torch model takes any size.
KERAS_SIZE = 16
METHODS = polyviz.methods()
METHOD_NAMES = sorted(METHODS)
#: Options whose defaults cost hundreds of forward passes: always given a small value.
CHEAP = {"n_samples": 3, "n_masks": 6, "n_steps": 3}

#: Examples per test and backend; POLYVIZ_HYPOTHESIS_EXAMPLES=2000 (and POLYVIZ_HYPOTHESIS_RANDOM=1 for
#: fresh draws) runs a deeper search by hand.
EXAMPLES = int(os.environ.get("POLYVIZ_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("POLYVIZ_HYPOTHESIS_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

_models: dict[str, object] = {}


def torch_model():
    """Conv, ReLU, pool, conv, ReLU, global pooling, dropout, dense; left in train mode, so that
    the fingerprint also checks that training flags are restored."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.25), nn.Linear(6, CLASSES),
    )
    return model.train()


def keras_model(size: int | None = KERAS_SIZE, dropout: bool = True):
    """The tiny Keras net; ``size=None`` gives Input((None, None, 3)), a dynamic input size whose
    layer shapes are known only for a given x (that variant has no Dropout)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    if dropout:
        h = keras.layers.Dropout(0.25, name="drop")(h)
    out = keras.layers.Dense(CLASSES, name="fc")(h)
    return keras.Model(inp, out)


def keras_dynamic_model():
    return keras_model(None, dropout=False)


def model_for(backend: str):
    if backend not in _models:
        _models[backend] = {"torch": torch_model, "keras": keras_model, "keras-dynamic": keras_dynamic_model}[backend]()
    return _models[backend]


_layer_names: dict[str, tuple[list[str], list[str]]] = {}


def layer_names(backend: str) -> tuple[list[str], list[str]]:
    """(every layer, the layers with a spatial map) of the backend's model, learnt once at 16x16
    (torch learns shapes from a probe at the last input size: fixed here, so that the strategies
    draw from the same lists in every example)."""
    if backend not in _layer_names:
        be = polyviz.backend_for(model_for(backend))
        be.check_x(np.zeros((1, 16, 16, 3), np.float32))
        spatial = [info.name for info in be.layers() if info.spatial and info.type not in ("Sequential", "Functional")]
        _layer_names[backend] = (be.layer_names(), spatial)
    return _layer_names[backend]


def same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), set(before) ^ set(after)
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            assert np.array_equal(a, b), f"model state changed: {key}"
        else:
            assert a is b or a == b, f"model state changed: {key}: {a!r} -> {b!r}"


# ---- strategies ------------------------------------------------------------------------------
# Every strategy takes ``valid``: True draws only calls that must succeed (the property then asks
# for an Explanation), False also draws invalid values (the property then also accepts a
# PolyvizError). Valid and invalid draws are about half and half.


def pick(draw, valid: bool, good: list, bad: list):
    """One of ``good`` (weighted 3:1 against ``bad``), or only ``good`` when ``valid``."""
    return draw(st.sampled_from(good if valid else good * 3 + bad))


@st.composite
def images_and_layout(draw, backend: str, valid: bool, method: str):
    """(x, layout argument, caller layout, batched, (n, h, w, c)) with x in the caller's layout."""
    n = draw(st.integers(2 if valid and method == "feature_permutation" else 1, 2))
    if backend == "keras":
        size = pick(draw, valid, [(KERAS_SIZE, KERAS_SIZE)], [(12, 16), (24, 24), (16, 0)])
    else:
        sides = list(range(8, 25))
        size = (pick(draw, valid, sides, [0, 1, 2, 3, 5]), pick(draw, valid, sides, [0, 1, 3]))
    c = pick(draw, valid, [3], [1, 4])
    native = backend_class(backend).native_layout
    given_layout = draw(st.sampled_from([None, "NHWC", "NCHW"]))
    layout = given_layout or native
    batched = True if valid and method == "feature_permutation" else draw(st.sampled_from([True, True, False]))
    values = pick(draw, valid, ["unit", "unit", "unit", "const", "tiny", "normal"], ["255", "nan", "huge", "inf"])
    dtype = pick(draw, valid, ["float32", "float32", "float64", "float16"], ["uint8", "int64", "bool"])
    if values in ("nan", "inf", "huge") and dtype not in ("float32", "float64", "float16"):
        values = "unit"
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.uniform(size=(n, *size, c))
    if values == "255":
        x = x * 255
    elif values == "normal":
        x = rng.normal(size=x.shape) * 2
    elif values == "nan":
        x.flat[:1] = np.nan
    elif values == "const":
        x = np.full_like(x, 0.5)
    elif values == "tiny":
        x = x * 1e-30
    elif values == "huge":
        x = x * 1e30
    elif values == "inf":
        x.flat[-1:] = np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        x = x > 0.5 if dtype == "bool" else x.astype(dtype)
    if layout == "NCHW":
        x = np.moveaxis(x, -1, 1)
    if not batched:
        x = x[0]
    container = draw(st.sampled_from(["numpy", "numpy", "tensor", "list"]))
    if container == "tensor":
        x = framework_tensor(backend, x)
    elif container == "list":
        x = x.tolist()
    return x, given_layout, layout, batched, (n if batched else 1, *size, c)


def framework_tensor(backend: str, x: np.ndarray):
    """``x`` as a torch tensor or a TensorFlow tensor (what a user of that framework passes)."""
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x))
    import tensorflow as tf

    return tf.constant(x)


def image_like(draw, valid: bool, layout: str, shape: tuple[int, ...], many: bool):
    """A baseline: a scalar, one image, one per sample (or a few for ``many``), or a wrong one."""
    n, h, w, c = shape
    kind = pick(draw, valid, ["scalar", "scalar", "image", "batch"], ["wrong", "nan", "str"])
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if kind == "scalar":
        return draw(st.sampled_from([0.0, 0.5, -1.0, 1]))
    if kind == "nan":
        return float("nan")
    if kind == "str":
        return "black"
    if kind == "image":
        arr = rng.uniform(size=(h, w, c))
    elif kind == "batch":
        arr = rng.uniform(size=(draw(st.integers(1, 3)) if many else n, h, w, c))
    else:
        arr = rng.uniform(size=(h + 1, w, c))
    arr = arr.astype(np.float32)
    return np.moveaxis(arr, -1, -3) if layout == "NCHW" else arr


def option_value(draw, valid: bool, name: str, default, layout: str, shape, layers: list[str]):
    """A value for the method option ``name`` (only valid ones when ``valid``)."""
    n, h, w, c = shape
    p = lambda good, bad: pick(draw, valid, good, bad)  # noqa: E731
    if name in CHEAP:
        return p([2, CHEAP[name]], [0, -2, 2.5, "3"])
    if name in ("baseline", "baselines"):
        return image_like(draw, valid, layout, shape, many=name == "baselines")
    if name == "patch_size":
        return p([2, 4, (3, 5), min(h, w)], [0, -1, "4", None])
    if name == "n_segments":
        return p([1, 4, 9], [0, -1, 2.5])
    if name == "grid":
        return p([1, 2, 3], [0, -1, 100])
    if name == "channel":
        return p([0, 3, list(range(n))], [-1, 6, 1.5, None, "1"])
    if name in ("window", "stride"):
        return p([(4, 4), (3, 5), 4, (1, 2)], [(0, 4), (30, 30), -1, "big"])
    if name == "upsample":
        return p(["bilinear", "nearest"], ["bicubic", 3])
    if name == "features":
        return p(["superpixels", "patches", "pixels", np.arange(h * w).reshape(h, w) % 4],
                 ["blobs", np.zeros((h + 1, w), int), np.full((h, w), 0.5)])
    if name == "method":
        return p(["gausslegendre", "riemann_left", "riemann_trapezoid"], ["simpson", 1])
    if name == "score":
        return p(["softmax", "logit"], ["prob"])
    if name == "kind":
        return p(["mean", "square", "variance"], ["median"])
    if name == "position":
        return p(["mean", "max"], ["min"])
    if name == "base":
        return p(["saliency", "integrated_gradients", "input_x_gradient", "guided_backprop"], ["gradcam", "nope"])
    if name == "base_options":
        return p([None, {}], [{"bogus": 1}, "x"])
    if name == "rule":
        return p(["epsilon", "zero", "gamma", "alpha_beta", "composite"], ["z+", None])
    if name == "rules":
        return p([None, {"dense": "epsilon"}, {"conv2d": "gamma"}], [{"nope": "gamma"}, {"conv2d": "bogus"}, "gamma"])
    if name == "bounds":
        return p([None, (-20.0, 300.0)], [(1.0, 0.0), (0.2, 0.4), "x", (0.0, float("inf"))])
    if name == "neuron":
        return p([(0, 0, 0), (1, 1, 2)], [None, (0,), (99, 0, 0), "a"])
    if name == "fc_layer":
        return p([None], ["nope", *layers[:3]])
    if name in ("epsilon", "gamma", "stdevs", "noise_level", "compactness", "kernel_width", "eps"):
        return p([default, 0.5, 1.0], [0.0, -1.0, float("nan"), float("inf"), "1"])
    if name in ("alpha", "p"):
        return p([default, 1.0], [0.0, -1.0, float("nan"), 2.5])
    if name == "beta":
        return p([default], [-1.0, float("nan"), 1.0])
    if isinstance(default, bool):
        return p([True, False], [1, "yes"])
    raise AssertionError(f"no strategy for option {name!r} (default {default!r}): add one")


@st.composite
def calls(draw, backend: str, layers: list[str], spatial: list[str]):
    """One public call: (valid, method, x, kwargs, expected layout, batched, (n, h, w, c))."""
    valid = draw(st.booleans())
    method = draw(st.sampled_from(METHOD_NAMES))
    info = METHODS[method]
    x, given_layout, layout, batched, shape = draw(images_and_layout(backend, valid, method))
    n = shape[0]
    kwargs: dict = {"progress": False, "seed": pick(draw, valid, [0, 1, 2, 3, np.int64(5)], [-1, 1.5, "1", None, True])}
    if given_layout is not None:
        kwargs["layout"] = given_layout
    target = pick(draw, valid, [None, 0, CLASSES - 1, np.int32(2), "list"],
                  [-1, CLASSES, 1.0, "1", [0.5], np.array([[1]]), True, "short"])
    if isinstance(target, str) and target in ("list", "short"):
        target = draw(st.lists(st.integers(0, CLASSES - 1), min_size=n + (target == "short"),
                               max_size=n + (target == "short")))
        if draw(st.booleans()):
            target = np.asarray(target, dtype=draw(st.sampled_from(["int64", "int32", "uint8"])))
    kwargs["target"] = target
    if not valid and draw(st.booleans()):
        kwargs["layer"] = draw(st.sampled_from([*layers, "nope", 3]))
    elif valid and info["needs_layer"] and method != "cam" and draw(st.booleans()):  # CAM: the layer before GAP
        kwargs["layer"] = draw(st.sampled_from(spatial))
    if draw(st.integers(0, 3)) == 0:
        kwargs["batch_size"] = pick(draw, valid, [1, 2, 3], [0, True, 2.0])
    if draw(st.integers(0, 4)) == 0:
        choices = ["torchvision", polyviz.Preprocess.torchvision(255)] if valid else ["torchvision", "caffe", "imagenet"]
        kwargs["preprocess"] = draw(st.sampled_from(choices))
    for name, default in info["options"].items():
        if name == "neuron" and valid:
            kwargs[name] = (0, 0, 0) if "layer" in kwargs else option_value(draw, True, name, default, layout, shape, layers)
        elif name in ("window", "patch_size") and valid and min(shape[1:3]) < 16:
            kwargs[name] = 4 if name == "window" else 2
        elif draw(st.integers(0, 2)) == 0:
            kwargs[name] = option_value(draw, valid, name, default, layout, shape, layers)
        elif name in CHEAP:
            kwargs[name] = CHEAP[name]
    if valid and method == "lrp" and kwargs.get("rule") == "alpha_beta":
        kwargs["alpha"], kwargs["beta"] = 2.0, 1.0
    return valid, method, x, kwargs, layout, batched, shape


# ---- the property --------------------------------------------------------------------------------


def check_call(backend: str, valid: bool, method: str, x, kwargs: dict, layout: str, batched: bool, shape) -> None:
    model = model_for(backend)
    cls = backend_class(backend)
    before = cls.state_fingerprint(model)
    via_function = kwargs.pop("_via_function", False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are allowed; errors are what is checked
            if via_function:
                e = getattr(polyviz, method)(model, x, **kwargs)
            else:
                e = polyviz.explain(model, x, method, **kwargs)
    except PolyvizError as exc:
        text = str(exc)
        event(f"refused: {text.split(':')[0]}")
        assert text and "\n" not in text, f"{type(exc).__name__} is not one line: {text!r}"
        assert "Traceback" not in text
        # a guided backward that meets no rectifier (a layer before the first ReLU) refuses by design
        no_rectifier = isinstance(exc, CapabilityError) and "met no rectifier" in text
        assert not valid or no_rectifier, f"a valid call was refused: {type(exc).__name__}: {text}"
    else:
        event(f"explained: {METHODS[method]['kind']}")
        check_explanation(e, method, layout, batched, shape)
    finally:
        same_state(before, cls.state_fingerprint(model))


def check_explanation(e, method: str, layout: str, batched: bool, shape) -> None:
    n, h, w, c = shape
    assert isinstance(e, Explanation)
    a = e.attribution
    assert isinstance(a, np.ndarray) and a.dtype == np.float32, (type(a), getattr(a, "dtype", None))
    assert np.isfinite(a).all(), f"{method}: non-finite attribution"
    kind = METHODS[method]["kind"]
    if kind == "input":
        assert a.shape == ((n, c, h, w) if layout == "NCHW" else (n, h, w, c)), a.shape
    elif kind == "map":
        assert a.shape == (n, h, w), a.shape
    else:
        assert a.ndim >= 2 and a.shape[0] == n, a.shape
    assert e.layout == layout
    target = np.asarray(e.target)
    assert target.shape == (n,) and ((0 <= target) & (target < CLASSES)).all(), target
    if e.scores is not None:
        assert np.asarray(e.scores).dtype == np.float32


@pytest.mark.parametrize("backend", ALL)
@SETTINGS
@given(data=st.data())
def test_every_call_gives_an_explanation_or_a_one_line_polyviz_error(backend, data):
    layers, spatial = layer_names(backend)
    valid, method, x, kwargs, layout, batched, shape = data.draw(calls(backend, layers, spatial))
    kwargs["_via_function"] = data.draw(st.booleans())
    check_call(backend, valid, method, x, kwargs, layout, batched, shape)


@pytest.mark.parametrize("backend", ALL)
@SETTINGS
@given(data=st.data())
def test_every_method_on_valid_input_gives_a_valid_explanation(backend, data):
    """Valid calls only (float images in [0, 1], native layout, valid targets): an Explanation,
    for every method, whatever the shape, batch and seed."""
    model = model_for(backend)
    method = data.draw(st.sampled_from(METHOD_NAMES))
    n = data.draw(st.integers(2 if method == "feature_permutation" else 1, 2))
    size = (KERAS_SIZE, KERAS_SIZE) if backend == "keras" else (data.draw(st.integers(8, 24)), data.draw(st.integers(8, 24)))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    x = rng.uniform(size=(n, *size, 3)).astype(np.float32)
    layout = backend_class(backend).native_layout
    if layout == "NCHW":
        x = np.moveaxis(x, -1, 1)
    kwargs = {"progress": False, "target": data.draw(st.one_of(st.none(), st.integers(0, CLASSES - 1)))}
    kwargs.update({k: v for k, v in CHEAP.items() if k in METHODS[method]["options"]})
    for name, small in (("patch_size", 4), ("window", (4, 4)), ("stride", (4, 4)), ("grid", 3), ("n_segments", 8),
                        ("neuron", (0, 0, 0))):
        if name in METHODS[method]["options"]:
            kwargs[name] = small
    cls = backend_class(backend)
    before = cls.state_fingerprint(model)
    e = polyviz.explain(model, x, method, **kwargs)
    check_explanation(e, method, layout, True, (n, *size, 3))
    same_state(before, cls.state_fingerprint(model))


@pytest.mark.parametrize("backend", [p for p in ALL if p.values == ("keras",)])
@settings(SETTINGS, max_examples=min(EXAMPLES, 30))
@given(data=st.data())
def test_a_keras_model_with_a_dynamic_input_size_explains_every_method(backend, data):
    """Input((None, None, 3)): layer methods learn the layer's size from x (they refused with 'the
    output shape of ... is unknown' before), at any input size."""
    model = model_for("keras-dynamic")
    method = data.draw(st.sampled_from(METHOD_NAMES))
    n = 2 if method == "feature_permutation" else 1
    size = data.draw(st.sampled_from([(12, 12), (16, 8)]))
    x = np.random.default_rng(0).uniform(size=(n, *size, 3)).astype(np.float32)
    kwargs = {k: v for k, v in {**CHEAP, "patch_size": 4, "window": (4, 4), "stride": (4, 4), "grid": 3,
                                "n_segments": 8, "neuron": (0, 0, 0)}.items() if k in METHODS[method]["options"]}
    before = backend_class("keras").state_fingerprint(model)
    e = polyviz.explain(model, x, method, target=1, progress=False, **kwargs)
    check_explanation(e, method, "NHWC", True, (n, *size, 3))
    same_state(before, backend_class("keras").state_fingerprint(model))


BAD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-3, 3),
    st.sampled_from([True, "1", None, (0.0, 1.0), [0.0, 0.5, 1.0], np.float32(-0.5), []]),
)


def mostly(*good):
    """Usually one of ``good``, sometimes anything (numbers of every kind, and non-numbers)."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), BAD_NUMBERS)


@SETTINGS
@given(name=st.sampled_from(["zero", "epsilon", "gamma", "alpha_beta", "zbox", "epsilon", "z+"]),
       epsilon=mostly(1e-6, 0.25, np.float32(1.0)), gamma=mostly(0.0, 0.25, 1), alpha=mostly(1.0, 2, 3.0),
       beta_offset=st.sampled_from([1.0, 1.0, 1.0, 0.5, 0.0]), low=mostly(0.0, -2.0, (0.0, -1.0, 0.5)),
       high=mostly(1.0, 255, (1.0, 2.0, 3.0)))
def test_an_lrp_rule_is_valid_or_refused_by_name(name, epsilon, gamma, alpha, beta_offset, low, high):
    """Any parameters: either an LRPRule whose numbers obey the LRP bounds (epsilon > 0, gamma >= 0,
    alpha >= 1, beta >= 0, alpha - beta = 1, low < high, all finite floats), or a one-line
    InputError that starts with the parameter's name."""
    from polyviz.errors import InputError
    from polyviz.protocol import LRPRule

    try:
        beta = alpha - beta_offset  # usually alpha - 1, the conserving choice
    except TypeError:
        beta = alpha
    try:
        rule = LRPRule(name, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high)
    except InputError as exc:
        text = str(exc)
        assert "\n" not in text and text.split(":")[0] in ("rule", "epsilon", "gamma", "alpha", "beta", "low", "high")
        event(f"refused: {text.split(':')[0]}")
        return
    event("valid")
    for value in (rule.epsilon, rule.gamma, rule.alpha, rule.beta):
        assert type(value) is float and np.isfinite(value)
    assert rule.epsilon > 0 and rule.gamma >= 0 and rule.alpha >= 1 and rule.beta >= 0
    assert abs(rule.alpha - rule.beta - 1) <= 1e-9 * max(1.0, rule.alpha)
    lows, highs = np.atleast_1d(rule.low), np.atleast_1d(rule.high)
    assert np.isfinite(lows).all() and np.isfinite(highs).all() and (lows < highs).all()
    hash(rule)
