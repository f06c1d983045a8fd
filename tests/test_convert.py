"""VGG models in both frameworks, and conversion between them (the cross-framework foundation)."""

import numpy as np
import pytest

import polyviz
from backends import ALL, both_frameworks, rel
from polyviz.errors import WeightsNotFoundError
from polyviz.models import convert

pytestmark = [both_frameworks, pytest.mark.slow]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


def logits(model, x_nhwc):
    return polyviz.backend_for(model).forward(x_nhwc)


def test_torchvision_vgg16_to_keras_and_back(images):
    import torch
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    to_keras = convert(tv, to="keras")
    back = convert(to_keras.model, to="torch")
    assert to_keras.layer_map["features.29"] == "block5_conv3"
    assert to_keras.layer_map["features.30"] == "block5_pool"
    assert to_keras.layer_map["classifier.6"] == "predictions"
    assert back.layer_map["block5_conv3"] == "features.29"
    reference = logits(tv, images)
    with torch.no_grad():  # the reference computed by torch itself, without polyviz
        direct = tv(torch.tensor(images).permute(0, 3, 1, 2)).numpy()
    assert rel(reference, direct) < 1e-5  # float32 round-off between batch layouts
    assert rel(logits(to_keras.model, images), reference) < 1e-4
    assert rel(logits(back.model, images), reference) < 1e-4
    # the mapped layers hold the same activations in both frameworks
    acts_t = polyviz.backend_for(tv).layer_activations(images, ["features.29"])["features.29"]
    acts_k = polyviz.backend_for(to_keras.model).layer_activations(images, ["block5_conv3"])["block5_conv3"]
    assert rel(acts_k, acts_t) < 1e-4


def test_keras_vgg16_to_torch(images):
    import keras

    keras.utils.set_random_seed(0)
    kv = keras.applications.VGG16(weights=None)
    converted = convert(kv, to="torch")
    assert converted.layer_map["block5_conv3"] == "features.29"
    probs = np.asarray(kv(images, training=False))
    torch_logits = logits(converted.model, images)
    e = np.exp(torch_logits - torch_logits.max(axis=1, keepdims=True))
    assert rel(e / e.sum(axis=1, keepdims=True), probs) < 1e-4  # softmax of torch logits = keras probabilities
    assert rel(logits(kv, images), torch_logits) < 1e-4  # the keras backend scores pre-softmax logits


def test_seeded_vgg16_is_the_same_function_in_both_frameworks(images):
    t = polyviz.models.vgg16("torch", seed=3)
    k = polyviz.models.vgg16("keras", seed=3)
    assert rel(logits(k, images), logits(t, images)) < 1e-4
    assert type(t).__name__ != "Functional" and k.get_layer("block5_conv3") is not None


@pytest.mark.parametrize("backend", ALL)
def test_imagenet_weights_absent_fail_fast_naming_the_file(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"vgg16.*\.(pth|h5)"):
        polyviz.models.vgg16(backend, weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match="no_such_file"):
        polyviz.models.vgg16(backend, weights=str(tmp_path / "no_such_file.bin"))
