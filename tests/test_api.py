"""The public API around the techniques: methods(), explain()'s argument handling, layouts,
targets, Explanation rendering. Runs on the framework-free reference backend and on every
installed backend."""

import numpy as np
import pytest
from numpy_backend import NumpyBackend

import polyviz
from backends import ALL
from polyviz import registry
from polyviz.errors import InputError, LayerError, TargetError
from polyviz.models.spec import random_weights
from polyviz.registry import backend_class
from polyviz.testing import tiny_spec


@pytest.fixture
def numpy_model(monkeypatch):
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    spec = tiny_spec()
    model, names = NumpyBackend.build(spec, random_weights(spec, 0))
    return model


def built(backend):
    spec = tiny_spec()
    model, names = backend_class(backend).build(spec, random_weights(spec, 0))
    return model, names


def images(n=3):
    return np.random.default_rng(0).normal(size=(n, 12, 12, 3)).astype(np.float32)


def test_methods_lists_every_catalog_method_with_needs():
    listed = polyviz.methods()
    expected = {
        "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "gradient_shap",
        "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "gradcam_plus_plus", "xgradcam",
        "hirescam", "layercam", "scorecam", "ablationcam", "eigencam", "cam", "occlusion",
        "layer_guided_backprop",
    }
    assert expected <= set(listed), expected - set(listed)
    assert listed["gradcam"]["needs_layer"] and not listed["saliency"]["needs_layer"]
    assert all(info["description"] for info in listed.values())
    assert callable(polyviz.gradcam) and polyviz.gradcam.__name__ == "gradcam"


def test_unknown_method_and_option_get_did_you_mean(numpy_model):
    with pytest.raises(InputError, match=r"method: unknown method 'gradcamm'.*'gradcam'"):
        polyviz.explain(numpy_model, images(), "gradcamm")
    with pytest.raises(InputError, match=r"n_step: not an option.*'n_steps'"):
        polyviz.explain(numpy_model, images(), "integrated_gradients", n_step=5)
    with pytest.raises(AttributeError):
        polyviz.no_such_method  # noqa: B018


def test_bad_arguments_name_the_argument(numpy_model):
    x = images()
    with pytest.raises(InputError, match="batch_size"):
        polyviz.explain(numpy_model, x, "saliency", batch_size=0)
    with pytest.raises(TargetError, match="target"):
        polyviz.explain(numpy_model, x, "saliency", target=[0, 1])
    with pytest.raises(TargetError, match="target"):
        polyviz.explain(numpy_model, x, "saliency", target=-1)
    with pytest.raises(LayerError, match="layer"):
        polyviz.explain(numpy_model, x, "gradcam", layer="conv9")
    with pytest.raises(InputError, match="layout"):
        polyviz.explain(numpy_model, x, "saliency", layout="CHW")
    with pytest.raises(InputError, match=r"x: .*rank 2"):
        polyviz.explain(numpy_model, x[0, 0], "saliency")


def test_target_defaults_to_the_predicted_class(numpy_model):
    x = images()
    logits = polyviz.backend_for(numpy_model).forward(x)
    explanation = polyviz.explain(numpy_model, x, "saliency", progress=False)
    np.testing.assert_array_equal(explanation.target, logits.argmax(1))


def test_one_image_and_nchw_layout_round_trip(numpy_model):
    x = images(1)
    nhwc = polyviz.explain(numpy_model, x[0], "saliency", target=2)
    nchw = polyviz.explain(numpy_model, x[0].transpose(2, 0, 1), "saliency", target=2, layout="NCHW")
    assert nhwc.attribution.shape == (1, 12, 12, 3) and nchw.attribution.shape == (1, 3, 12, 12)
    np.testing.assert_allclose(nchw.attribution.transpose(0, 2, 3, 1), nhwc.attribution, rtol=1e-6)
    assert nhwc.attribution.dtype == np.float32


def test_default_layer_is_the_last_spatial_leaf(numpy_model):
    explanation = polyviz.explain(numpy_model, images(), "gradcam", target=1)
    assert explanation.layer == "pool2"
    assert explanation.layer_attribution.shape == (3, 3, 3) and explanation.attribution.shape == (3, 12, 12)


def test_cam_on_a_dense_layer_is_refused(numpy_model):
    with pytest.raises(LayerError, match="fc1"):
        polyviz.explain(numpy_model, images(), "gradcam", layer="fc1", target=0)


def test_explanation_render_and_save(numpy_model, tmp_path):
    explanation = polyviz.explain(numpy_model, images(), "gradcam", target=[0, 1, 2])
    picture = explanation.render(1)
    assert picture.shape == (12, 12, 3) and picture.dtype == np.uint8
    path = explanation.save(tmp_path / "gradcam.png", index=2)
    assert path.stat().st_size > 0 and explanation._repr_png_()[:4] == b"\x89PNG"
    saliency = polyviz.explain(numpy_model, images(), "saliency", target=0)
    assert saliency.render(0, sign="all").shape == (12, 12, 3)
    with pytest.raises(InputError, match="sign"):
        saliency.render(0, sign="both")


@pytest.mark.parametrize("backend", ALL)
def test_framework_tensors_are_accepted(backend):
    model, _ = built(backend)
    x = images(2)
    if backend == "torch":
        import torch

        tensor = torch.tensor(x.transpose(0, 3, 1, 2))
        expected = polyviz.explain(model, x.transpose(0, 3, 1, 2), "saliency", target=1).attribution
    else:
        import tensorflow as tf

        tensor = tf.constant(x)
        expected = polyviz.explain(model, x, "saliency", target=1).attribution
    got = polyviz.explain(model, tensor, "saliency", target=1).attribution
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_image_options_follow_the_callers_layout(backend):
    """A baseline image is given in the same layout as x (NCHW for torch users)."""
    model, _ = built(backend)
    x = images(2)
    base = np.random.default_rng(1).random((12, 12, 3)).astype(np.float32)
    nhwc = polyviz.explain(model, x, "integrated_gradients", target=1, baseline=base, n_steps=4, layout="NHWC")
    nchw = polyviz.explain(model, x.transpose(0, 3, 1, 2), "integrated_gradients", target=1,
                           baseline=base.transpose(2, 0, 1), n_steps=4, layout="NCHW", method="riemann_middle")
    nhwc_mid = polyviz.explain(model, x, "integrated_gradients", target=1, baseline=base, n_steps=4, layout="NHWC",
                               method="riemann_middle")
    np.testing.assert_allclose(nchw.attribution.transpose(0, 2, 3, 1), nhwc_mid.attribution, rtol=1e-5, atol=1e-7)
    assert not np.allclose(nhwc.attribution, nhwc_mid.attribution)  # the quadrature option is honoured
