"""Axiomatic metrics against closed forms on a bias-free linear model f(x) = <W_t, x> (where
gradient x input is exactly complete and sensitive only where x is non-zero), in every backend,
and input invariance's closed forms (the gradient does not move; gradient x input moves by
shift x gradient). Quantus' Completeness / InputInvariance return booleans (exact float equality;
a first-layer bias edit that is not the same function at a padded border), so they are no oracle."""

import numpy as np
import pytest

import polyviz
import polyviz.metrics as M
from backends import ALL, build
from polyviz.errors import InputError
from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights, vgg_spec
from polyviz.registry import backend_class

KW = {"layout": "NHWC", "progress": False}
EPS32 = float(np.finfo(np.float32).eps)


def linear(backend, shape=(6, 6, 3), classes=3):
    spec = NetworkSpec(shape, (LayerSpec("flatten", "flat"),
                              LayerSpec("dense", "fc", {"units": classes, "activation": None, "use_bias": False})))
    weights = random_weights(spec, 0)
    weights["fc"].pop("bias", None)
    model = backend_class(backend).build(spec, weights)[0]
    return model, np.asarray(weights["fc"]["kernel"], np.float64).reshape(*shape, classes)


def inputs(n=3, shape=(6, 6, 3)):
    x = np.random.default_rng(2).uniform(0.2, 1.0, (n, *shape)).astype(np.float32)
    x[:, :2, :3] = 0.0  # 6 pixels the model cannot be sensitive to
    return x


@pytest.mark.parametrize("backend", ALL)
def test_completeness_closed_form(backend):
    model, kernel = linear(backend)
    x = inputs()
    t = np.array([0, 1, 2])
    wt = np.moveaxis(kernel[..., t], -1, 0)  # (N, H, W, C): W of each sample's target
    terms = np.abs(x * wt).reshape(3, -1).sum(axis=1)
    p = x[0].size
    bound = 2 * p * EPS32 * (terms + np.abs(wt).reshape(3, -1).sum(axis=1))  # float32 summation bound
    for method in ("input_x_gradient", "integrated_gradients"):
        gap = M.completeness(model, x, t, method=method, **KW)
        assert np.all(gap <= bound), (method, gap, bound)
    # saliency sums to sum(W_t), the logit moves by <W_t, x>
    want = np.abs(wt.reshape(3, -1).sum(axis=1) - (x * wt).reshape(3, -1).sum(axis=1))
    gap = M.completeness(model, x, t, method="saliency", **KW)
    assert np.all(np.abs(gap - want) <= bound)
    rel = M.completeness(model, x, t, method="saliency", relative=True, **KW)
    np.testing.assert_allclose(rel, want / np.abs((x * wt).reshape(3, -1).sum(axis=1)), rtol=1e-4)
    with pytest.raises(InputError, match="score"):
        M.completeness(model, x, t, score="softmax", **KW)


@pytest.mark.parametrize("backend", ALL)
def test_non_sensitivity_closed_form(backend):
    model, _ = linear(backend)
    x = inputs()
    t = np.array([0, 1, 2])
    # gradient x input is zero exactly where the model is insensitive (x = 0): no violation
    np.testing.assert_array_equal(M.non_sensitivity(model, x, t, method="input_x_gradient", **KW), 0)
    # the gradient is not zero there: the 6 zero pixels violate, per pixel or per 2 x 2 patch
    np.testing.assert_array_equal(M.non_sensitivity(model, x, t, method="saliency", **KW), 6)
    np.testing.assert_array_equal(M.non_sensitivity(model, x, t, method="saliency", patch_size=2, **KW), 1)
    np.testing.assert_array_equal(M.non_sensitivity(model, x, t, method="input_x_gradient", patch_size=2,
                                                    batch_size=5, **KW), 0)


@pytest.mark.parametrize("backend", ALL)
def test_input_invariance_closed_form(backend):
    spec = vgg_spec([[4]], input_shape=(8, 8, 3), dense=(8,), classes=3)
    model, _ = build(backend, spec, seed=0)
    before = backend_class(backend).state_fingerprint(model)
    x = np.random.default_rng(1).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    layout = "NCHW" if backend == "torch" else "NHWC"
    xn = x.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else x
    kw = {"progress": False, "target": 0}
    assert np.all(M.input_invariance(model, xn, method="saliency", **kw) <= 1e-5)
    grad = np.asarray(polyviz.explain(model, xn, "saliency", layout="NCHW" if layout == "NCHW" else "NHWC",
                                      progress=False, target=0).attribution, np.float64)
    for shift in (-1.0, 0.5):
        want = np.linalg.norm((shift * grad).reshape(3, -1), axis=1) / np.linalg.norm(
            (xn.astype(np.float64) * grad).reshape(3, -1), axis=1)
        got = M.input_invariance(model, xn, method="input_x_gradient", input_shift=shift, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    after = backend_class(backend).state_fingerprint(model)
    for key, value in before.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(after[key]), err_msg=key)
