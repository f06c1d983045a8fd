"""polyviz saliency against tf-keras-vis' Saliency on Keras models: raw, and after tf-keras-vis'
own post-processing (max of |gradient| over channels, min-max normalised)."""

import numpy as np
import pytest

import polyviz
from backends import INSTALLED
from polyviz.models.spec import random_weights, vgg_spec
from polyviz.registry import backend_class

pytestmark = pytest.mark.skipif("keras" not in INSTALLED, reason="keras is not installed")


def pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def softmax_model():
    spec = vgg_spec([[4], [8, 8]], input_shape=(16, 16, 3), dense=(16,), classes=6, classifier_activation="softmax")
    model, _ = backend_class("keras").build(spec, random_weights(spec, 2))
    return model


def test_saliency_matches_tf_keras_vis(softmax_model):
    pytest.importorskip("tf_keras_vis")
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    targets = [1, 4, 2]
    theirs = Saliency(softmax_model, model_modifier=ReplaceToLinear(), clone=True)
    raw = np.asarray(theirs(CategoricalScore(targets), x, gradient_modifier=None, keepdims=True, normalize_map=False))
    ours = polyviz.saliency(softmax_model, x, target=targets, progress=False).attribution  # logits: softmax skipped
    assert pearson(ours, raw) >= 0.999
    np.testing.assert_allclose(ours, raw, rtol=1e-4, atol=1e-6 * np.abs(raw).max())
    default = np.asarray(theirs(CategoricalScore(targets), x))  # max |grad| over channels, normalised per image
    processed = np.asarray(normalize(np.abs(ours).max(axis=-1)))  # per image over (H, W)
    for i in range(3):
        assert pearson(processed[i], default[i]) >= 0.999
