"""VGG models in both frameworks, and conversion between them (the cross-framework foundation).

Each VGG16 test runs on "mini" (VGG16's layer pattern, narrow, 64 px) by default and at 224 px in
the slow set (``python -m pytest -m slow``). Outputs are compared in float64 across frameworks (to
1e-6; measured 0 to 1e-7 after the protocol's float32 rounding) and, in float32, against the round-off each framework shows against its own
float64 run (backends.assert_agree), so that no bound depends on one CPU's float32 kernels."""

import numpy as np
import pytest

import polyviz
from backends import (
    ALL,
    SIZES,
    assert_agree,
    both_frameworks,
    converted_vgg16,
    keras_float64,
    px,
    rel,
    release,
    seeded_vgg16,
)
from polyviz.errors import WeightsNotFoundError
from polyviz.models import convert


def inputs(size):
    return np.random.default_rng(0).normal(size=(2, px(size), px(size), 3)).astype(np.float32)


def logits(model, x_nhwc):
    return polyviz.backend_for(model).forward(x_nhwc)


def within_floor(a32, a64, b32, what):
    """``b32`` (another float32 route to the function of ``a32``: the same framework, same weights)
    is as close to the float64 result as ``a32`` is, up to a factor 3: a round-off bound measured
    here, not a constant."""
    floor = rel(a32, a64)
    assert floor <= 1e-3, f"{what}: float32 vs float64 {floor:.1e}"  # logits are continuous: round-off only
    assert rel(b32, a64) <= max(1e-6, 3 * floor), f"{what}: {rel(b32, a64):.1e} against a floor of {floor:.1e}"


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_torchvision_vgg16_to_keras_and_back(size):
    import torch

    x = inputs(size)
    tv, to_keras = converted_vgg16(size)
    back = convert(to_keras.model, to="torch")
    assert to_keras.layer_map["features.29"] == "block5_conv3"
    assert to_keras.layer_map["features.30"] == "block5_pool"
    assert to_keras.layer_map["classifier.6"] == "predictions"
    assert back.layer_map["block5_conv3"] == "features.29"
    with torch.no_grad():  # the reference computed by torch itself, without polyviz
        direct = tv(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    out32 = {"torch": logits(tv, x), "keras": logits(to_keras.model, x), "back": logits(back.model, x), "direct": direct}
    acts32 = (polyviz.backend_for(tv).layer_activations(x, ["features.29"])["features.29"],
              polyviz.backend_for(to_keras.model).layer_activations(x, ["block5_conv3"])["block5_conv3"])
    del tv, to_keras, back
    release()
    tv64, to_keras64 = converted_vgg16(size, float64=True)
    out64 = {"torch": logits(tv64, x), "keras": logits(to_keras64.model, x)}
    acts64 = (polyviz.backend_for(tv64).layer_activations(x, ["features.29"])["features.29"],
              polyviz.backend_for(to_keras64.model).layer_activations(x, ["block5_conv3"])["block5_conv3"])
    del tv64, to_keras64
    release()
    assert_agree(out32["torch"], out32["keras"], out64["torch"], out64["keras"], "logits")
    # the mapped layers hold the same activations in both frameworks
    assert_agree(*acts32, *acts64, "features.29 / block5_conv3")
    # the round trip and torch without polyviz (another batch layout): torch's own float32 round-off
    within_floor(out32["torch"], out64["torch"], out32["back"], "converted back to torch")
    within_floor(out32["torch"], out64["torch"], out32["direct"], "torch called directly")


def keras_vgg16(size):
    """Keras' own VGG16 application (random init under seed 0; "full") or the mini VGG16 in Keras'
    layout (softmax head), each with a float64 twin holding the same weights."""
    import keras

    if size == "mini":
        return seeded_vgg16("mini", "keras"), seeded_vgg16("mini", "keras", float64=True)
    keras.utils.set_random_seed(0)
    kv = keras.applications.VGG16(weights=None)
    with keras_float64():
        kv64 = keras.applications.VGG16(weights=None)
    kv64.set_weights([w.astype(np.float64) for w in kv.get_weights()])
    return kv, kv64


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_keras_vgg16_to_torch(size):
    x = inputs(size)
    results = {}
    for float64, kv in zip((False, True), keras_vgg16(size), strict=True):
        converted = convert(kv, to="torch")
        assert converted.layer_map["block5_conv3"] == "features.29"
        tmodel = converted.model.double() if float64 else converted.model
        torch_logits = logits(tmodel, x)
        e = np.exp(torch_logits - torch_logits.max(axis=1, keepdims=True))
        results[float64] = {"softmax": e / e.sum(axis=1, keepdims=True), "probs": np.asarray(kv(x, training=False)),
                            "torch": torch_logits, "keras": logits(kv, x)}
        del kv, converted, tmodel
        release()
    r32, r64 = results[False], results[True]
    # the torch logits come back rounded to float32 (the protocol) and Keras' float64 probabilities
    # do not: the softmax carries that rounding, ~6e-8 times the logits' spread (1.1e-7 on "mini")
    assert_agree(r32["softmax"], r32["probs"], r64["softmax"], r64["probs"], "softmax of torch logits = keras probabilities",
                 tol64=1e-5)
    assert_agree(r32["torch"], r32["keras"], r64["torch"], r64["keras"], "the keras backend scores pre-softmax logits")


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_seeded_vgg16_is_the_same_function_in_both_frameworks(size):
    x = inputs(size)
    out = []
    for float64 in (False, True):
        t, k = seeded_vgg16(size, "torch", float64, seed=3), seeded_vgg16(size, "keras", float64, seed=3)
        assert type(t).__name__ != "Functional" and k.get_layer("block5_conv3") is not None
        out += [logits(t, x), logits(k, x)]
        del t, k
        release()
    assert_agree(*out, "logits")
    if size == "full":  # the public builders are the ones tested here
        for backend in ("torch", "keras"):
            ours, public = seeded_vgg16(size, backend, seed=3), polyviz.models.vgg16(backend, seed=3)
            a, b = polyviz.backend_for(ours).state_fingerprint(ours), polyviz.backend_for(public).state_fingerprint(public)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), backend
            del ours, public
            release()


@pytest.mark.parametrize("backend", ALL)
def test_imagenet_weights_absent_fail_fast_naming_the_file(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"vgg16.*\.(pth|h5)"):
        polyviz.models.vgg16(backend, weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match="no_such_file"):
        polyviz.models.vgg16(backend, weights=str(tmp_path / "no_such_file.bin"))
