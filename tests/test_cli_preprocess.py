"""``--preprocess`` presets and ``--input-size`` for saved models (issue 14, item 6): the presets
against their closed forms, and ``polyviz explain`` on a saved Keras model whose printed top-1
probability is checked against the model run here on the preset's formula."""

import re

import numpy as np
import pytest
from PIL import Image

from polyviz.cli import main
from polyviz.errors import InputError
from polyviz.preprocess import CAFFE_MEAN_BGR, TORCHVISION_MEAN, TORCHVISION_STD, Preprocess


def test_presets_are_their_closed_forms():
    x = np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 3)).astype(np.float32)
    expected = {
        "torchvision": (x - np.array(TORCHVISION_MEAN)) / np.array(TORCHVISION_STD),
        "caffe": 255 * x[..., ::-1] - np.array(CAFFE_MEAN_BGR),
        "tf": 2 * x - 1,
        "raw": 255 * x,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(Preprocess.named(name, input_range=1.0).apply(x), value, rtol=1e-5, atol=1e-4,
                                   err_msg=name)
    np.testing.assert_allclose(Preprocess.named("tf", input_range=255.0).apply(255 * x), 2 * x - 1, atol=1e-5)
    assert Preprocess.named("none") is None
    with pytest.raises(InputError, match="^preprocess: unknown preset 'imagenet'"):
        Preprocess.named("imagenet")


@pytest.fixture
def saved_keras(tmp_path):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, None, 3))  # any size: --input-size decides
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(5, name="fc")(h))
    path = tmp_path / "net.keras"
    model.save(path)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    image = tmp_path / "img.png"
    Image.fromarray(pixels).save(image)
    return model, str(path), str(image), pixels.astype(np.float32)[None] / 255.0


def _top1(text):
    match = re.search(r"^\s+1\.\s+([\d.]+)%\s+class \((\d+)\)$", text, re.M)
    return int(match.group(2)), float(match.group(1)) / 100


@pytest.mark.parametrize("preset,formula", [("none", lambda x: x), ("tf", lambda x: 2 * x - 1),
                                            ("raw", lambda x: 255 * x)])
def test_explain_applies_the_preset_to_a_saved_model(saved_keras, tmp_path, capsys, preset, formula):
    model, path, image, x = saved_keras
    code = main(["explain", image, "--model", path, "--preprocess", preset, "--input-size", "20",
                 "--method", "saliency", "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "images at 20x20" in out
    logits = np.asarray(model(formula(x)), np.float64)[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    cls, prob = _top1(out)
    assert cls == int(probs.argmax()) and abs(prob - probs.max()) <= 0.0006


def test_the_presets_give_different_predictions_here(saved_keras):
    """So that the test above tells the presets apart on this model and image."""
    model, _, _, x = saved_keras
    tops = []
    for f in (lambda v: v, lambda v: 2 * v - 1, lambda v: 255 * v):
        logits = np.asarray(model(f(x)), np.float64)[0]
        tops.append(np.exp(logits - logits.max()).sum() ** -1)  # the top-1 probability
    assert min(abs(a - b) for i, a in enumerate(tops) for b in tops[i + 1 :]) > 0.002


def test_unknown_preset_is_refused(saved_keras, tmp_path, capsys):
    _, path, image, _ = saved_keras
    with pytest.raises(SystemExit):
        main(["explain", image, "--model", path, "--preprocess", "imagenet", "--out", str(tmp_path / "o")])
    assert "--preprocess" in capsys.readouterr().err
