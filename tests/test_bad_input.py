"""Bad input is refused (or warned about) once, centrally, with a one-line polyviz error naming the
argument, in every backend (issue 12, item 4): integer / non-array ``x``, values far outside the
declared preprocessing's range, out-of-range or malformed targets for every method, LRP rule
parameters, and a layout mistake reported with the shape the caller passed."""

import warnings
from pathlib import Path

import numpy as np
import pytest

import polyviz
from polyviz.errors import InputError, InputRangeWarning, PolyvizWarning, TargetError
from polyviz.models.spec import random_weights
from polyviz.protocol import LRPRule
from polyviz.registry import backend_class
from polyviz.testing import tiny_spec

CLASSES = 5


def model_of(bk):
    """The tiny network (12x12x3 in, 5 classes) in backend ``bk``."""
    spec = tiny_spec(classes=CLASSES)
    model, _ = backend_class(bk).build(spec, random_weights(spec, 0))
    return model


def native(bk, x):
    """A channels-last batch (or image) in the native layout of backend ``bk``."""
    if backend_class(bk).native_layout == "NCHW":
        return np.moveaxis(x, -1, -3)
    return x


def images(n=2, scale=1.0):
    return (np.random.default_rng(0).uniform(size=(n, 12, 12, 3)) * scale).astype(np.float32)


def one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


# ---- dtype ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, np.uint16])
def test_integer_images_are_refused_with_the_conversion_to_make(bk, dtype):
    model = model_of(bk)
    x = native(bk, images(scale=255).astype(dtype))
    with pytest.raises(InputError) as exc:
        polyviz.explain(model, x, "saliency", target=0)
    text = one_line(exc)
    assert text.startswith("x: ") and np.dtype(dtype).name in text and "astype('float32') / 255" in text
    # the same check guards every public entry that takes images
    with pytest.raises(InputError, match=r"^x: integer images"):
        polyviz.activations(model, x, "conv1")
    from polyviz.metrics import deletion_auc

    with pytest.raises(InputError, match=r"^x: integer images"):
        deletion_auc(model, x, 0, method="saliency", progress=False)


def test_integer_torch_tensors_are_refused():
    torch = pytest.importorskip("torch")
    model = model_of("torch")
    x = torch.from_numpy(native("torch", images(scale=255).astype(np.uint8)))
    with pytest.raises(InputError, match=r"^x: integer images \(uint8\)"):
        polyviz.explain(model, x, "saliency", target=0)
    ok = polyviz.explain(model, torch.from_numpy(native("torch", images())).double(), "saliency", target=0)
    assert ok.attribution.dtype == np.float32


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda x: x > 0.5, "bool"),
        (lambda x: x.astype(np.complex64), "complex"),
        (lambda x: x.astype(object), "dtype object"),
        (lambda x: x.astype("U8"), "dtype <U8"),
    ],
    ids=["bool", "complex", "object", "str-array"],
)
def test_non_real_arrays_are_refused(bk, make, words):
    model = model_of(bk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a ComplexWarning on the way
        with pytest.raises(InputError) as exc:
            polyviz.explain(model, make(native(bk, images())), "saliency", target=0)
    text = one_line(exc)
    assert text.startswith("x: ") and words in text


@pytest.mark.parametrize(
    "x, words",
    [
        ("cat.png", "got a str ('cat.png')"),
        (b"\x89PNG", "got a bytes"),
        (Path("cat.png"), f"got a {type(Path('cat.png')).__name__}"),
        (None, "got None"),
        ([[0.0, 1.0], [1.0]], "got a list that is not a rectangular numeric array"),
        ({"x": 1}, "got an array of dtype object"),
    ],
    ids=["str", "bytes", "path", "none", "ragged", "dict"],
)
def test_x_that_is_not_an_array_gets_a_one_line_error_naming_x(bk, x, words):
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), x, "saliency", target=0)
    text = one_line(exc)
    assert text.startswith("x: expected a float image array") and words in text, text


# ---- range -------------------------------------------------------------------------------------


def test_values_far_outside_the_declared_range_warn_once_per_call(bk):
    model = model_of(bk)
    x = native(bk, images(scale=255))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = polyviz.explain(model, x, "smoothgrad", target=0, n_samples=3, preprocess="torchvision", progress=False)
    ours = [w for w in caught if issubclass(w.category, PolyvizWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert issubclass(ours[0].category, InputRangeWarning) and issubclass(InputRangeWarning, UserWarning)
    text = str(ours[0].message)
    assert "\n" not in text and text.startswith("x: values in [") and "[0, 1]" in text and "254" in text
    assert np.isfinite(e.attribution).all()  # a warning, not a refusal

    # standardised input given to a model that normalises itself: also far outside [0, 1]
    with pytest.warns(InputRangeWarning, match=r"\[0, 1\]"):
        polyviz.explain(model, native(bk, images() * 4 - 2), "saliency", target=0, preprocess="torchvision")
    # [0, 255] images are right for a model declared with input_range=255; [0, 1] ones for the default
    with warnings.catch_warnings():
        warnings.simplefilter("error", PolyvizWarning)
        polyviz.explain(model, x, "saliency", target=0, preprocess=polyviz.Preprocess.torchvision(255))
        polyviz.explain(model, native(bk, images()), "saliency", target=0, preprocess="torchvision")
        polyviz.explain(model, x, "saliency", target=0)  # no preprocessing declared: no range to check


def test_a_metric_that_re_explains_perturbed_copies_warns_once(bk):
    """max_sensitivity explains x and n perturbed copies of it: one warning about x, not n + 1."""
    from polyviz.metrics import max_sensitivity

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        max_sensitivity(model_of(bk), native(bk, images(1, scale=255)), 0, method="saliency", n_perturb_samples=3,
                        preprocess="torchvision", progress=False)
    assert len([w for w in caught if issubclass(w.category, InputRangeWarning)]) == 1


# ---- targets -------------------------------------------------------------------------------------


BAD_TARGETS = [
    (CLASSES, f"class index {CLASSES} is out of range for a model with {CLASSES} outputs"),
    (99, f"class index 99 is out of range for a model with {CLASSES} outputs"),
    ([0, CLASSES + 3], f"class index {CLASSES + 3} is out of range"),
    (-1, "must be >= 0"),
    (1.5, "expected integer class indices"),
    (np.float64(2.0), "expected integer class indices"),
    ([0], "one int per sample (2)"),
    ([0, 1, 2], "one int per sample (2)"),
    ([[0, 1]], "one int per sample (2)"),
    ("1", "got '1'"),
    ([0, None], "expected integer class indices"),
    (True, "expected integer class indices"),
]


def test_a_bad_target_is_refused_once_centrally_by_every_method(bk):
    """Out of range (the bare IndexError of occlusion, RISE, feature ablation and permutation),
    negative, non-integer or of the wrong length: a one-line TargetError before any method work."""
    model = model_of(bk)
    x = native(bk, images(2))
    capabilities = backend_class(bk).capabilities
    failures = []
    for method, info in sorted(polyviz.methods().items()):
        if not set(info["capabilities"]) <= set(capabilities):
            continue  # the numpy backend has no LRP / DeepLIFT: refused for that reason instead
        for target, words in BAD_TARGETS:
            try:
                polyviz.explain(model, x, method, target=target, progress=False)
            except TargetError as exc:
                text = str(exc)
                if not (text.startswith("target: ") and words in text and "\n" not in text):
                    failures.append(f"{method} {target!r}: {text}")
            except Exception as exc:  # noqa: BLE001 - the point is which one
                failures.append(f"{method} {target!r}: {type(exc).__name__}: {str(exc)[:120]}")
            else:
                failures.append(f"{method} {target!r}: accepted")
    assert not failures, "\n".join(failures)


# ---- layout ------------------------------------------------------------------------------------


def test_a_layout_mistake_names_the_shape_the_caller_passed(bk):
    """A channels-last batch given to a torch model (or channels-first to Keras), batched or one
    image: the error names the shape the caller passed, not a transposed one, and the layout= fix."""
    model = model_of(bk)
    layout = backend_class(bk).native_layout
    other = "NCHW" if layout == "NHWC" else "NHWC"
    x = images(4)  # channels-last
    batch = np.moveaxis(x, -1, -3) if layout == "NHWC" else x  # the other layout
    for wrong in (batch, batch[0]):
        with pytest.raises(InputError) as exc:
            polyviz.explain(model, wrong, "saliency", target=0)
        text = one_line(exc)
        assert text.startswith("x: ") and str(tuple(wrong.shape)) in text and f"layout={other!r}" in text, text
        e = polyviz.explain(model, wrong, "saliency", target=0, layout=other)
        assert e.attribution.shape == (wrong.shape if wrong.ndim == 4 else (1, *wrong.shape))


# ---- LRP rule parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"name": "epsilon", "epsilon": -1.0}, "epsilon"),
        ({"name": "epsilon", "epsilon": 0.0}, "epsilon"),
        ({"name": "zero", "epsilon": float("nan")}, "epsilon"),
        ({"name": "epsilon", "epsilon": float("inf")}, "epsilon"),
        ({"name": "epsilon", "epsilon": "0.25"}, "epsilon"),
        ({"name": "gamma", "gamma": -0.25}, "gamma"),
        ({"name": "gamma", "gamma": float("nan")}, "gamma"),
        ({"name": "alpha_beta", "alpha": 0.5, "beta": -0.5}, "beta"),
        ({"name": "alpha_beta", "alpha": 2.0, "beta": 0.0}, "alpha"),
        ({"name": "alpha_beta", "alpha": float("inf"), "beta": float("inf")}, "alpha"),
        ({"name": "zbox", "low": 1.0, "high": 0.0}, "low"),
        ({"name": "zbox", "low": 0.5, "high": 0.5}, "low"),
        ({"name": "zbox", "low": (0.0, 0.0, 0.0), "high": (1.0, 1.0)}, "low"),
        ({"name": "zbox", "low": (0.0, float("nan"), 0.0), "high": 1.0}, "low"),
        ({"name": "zbox", "low": 0.0, "high": []}, "high"),
    ],
)
def test_lrp_rule_parameters_are_validated(kwargs, name):
    with pytest.raises(InputError) as exc:
        LRPRule(**kwargs)
    assert one_line(exc).startswith(f"{name}: "), str(exc.value)


def test_valid_lrp_rules_are_kept_as_floats():
    rule = LRPRule("zbox", low=np.zeros(3), high=[1, 1, 1])
    assert rule.low == (0.0, 0.0, 0.0) and rule.high == (1.0, 1.0, 1.0)
    hash(rule)  # usable as a cache key
    assert LRPRule("alpha_beta", alpha=2, beta=1).alpha == 2.0


@pytest.mark.parametrize(
    "options, name",
    [
        ({"epsilon": -1.0}, "epsilon"),
        ({"rule": "gamma", "gamma": -1.0}, "gamma"),
        ({"rule": "alpha_beta", "alpha": 1.0, "beta": -1.0}, "beta"),
        ({"rule": "composite", "bounds": (0.0, float("inf"))}, "bounds"),
        ({"epsilon": "big"}, "epsilon"),
        ({"rules": "gamma"}, "rules"),
    ],
)
def test_lrp_options_are_validated_in_every_backend(bk, options, name):
    if bk == "numpy":
        pytest.skip("the numpy backend has no LRP")
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), native(bk, images(1)), "lrp", target=0, progress=False, **options)
    assert one_line(exc).startswith(f"{name}: "), str(exc.value)


# ---- found by tests/test_properties.py ------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, "1", 1.5, None, True], ids=["negative", "str", "float", "none", "bool"])
def test_a_bad_seed_is_refused_by_name(bk, seed):
    """Was a bare ValueError from numpy (-1, "1") or silently truncated (1.5)."""
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), native(bk, images(1)), "smoothgrad", target=0, seed=seed, n_samples=2,
                        progress=False)
    assert one_line(exc).startswith("seed: expected an int >= 0")


@pytest.mark.parametrize("shape", [(1, 12, 0, 3), (1, 0, 12, 3)])
def test_an_image_with_no_pixels_is_refused(bk, shape):
    """Was a bare ValueError (min of an empty array) or a framework error."""
    x = native(bk, np.zeros(shape, np.float32))
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), x, "saliency", target=0, preprocess="torchvision")
    assert one_line(exc).startswith("x: expected non-empty images")


@pytest.mark.parametrize("channel", [None, "4", 1.5, True], ids=["none", "str", "fraction", "bool"])
def test_a_malformed_channel_is_refused(bk, channel):
    """layer_guided_backprop's channel=None was a bare TypeError; "4" and 1.5 were silently read as 4 and 1."""
    with pytest.raises(TargetError) as exc:
        polyviz.explain(model_of(bk), native(bk, images(1)), "layer_guided_backprop", channel=channel, progress=False)
    assert one_line(exc).startswith("channel: expected")


@pytest.mark.parametrize("method, option", [("integrated_gradients", "baseline"), ("gradient_shap", "baselines"),
                                            ("occlusion", "baseline"), ("feature_ablation", "baseline")])
@pytest.mark.parametrize("value, words", [("black", "got 'black'"), (True, "got True"),
                                          ("int-image", "dtype int64"), ({"a": 1}, "dtype object")],
                         ids=["str", "bool", "int-image", "dict"])
def test_a_bad_baseline_is_refused_by_name_for_every_method_that_takes_one(bk, method, option, value, words):
    """baselines='black' was a bare ValueError ('could not convert string to float')."""
    x = native(bk, images(1))
    if isinstance(value, str) and value == "int-image":
        value = np.zeros(x.shape[1:], np.int64)
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), x, method, target=0, progress=False, **{option: value})
    text = one_line(exc)
    assert text.startswith(f"{option}: expected a number or a float image array") and words in text, text


def test_base_options_must_be_a_mapping(bk):
    """smoothgrad's base_options='x' was a bare ValueError from dict('x')."""
    with pytest.raises(InputError) as exc:
        polyviz.explain(model_of(bk), native(bk, images(1)), "smoothgrad", target=0, n_samples=2, base_options="x",
                        progress=False)
    assert one_line(exc).startswith("base_options: expected a dict")
