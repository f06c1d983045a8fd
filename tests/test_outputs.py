"""Outputs that are not one tensor (issue 14, item 4): dict, tuple and dataclass outputs through
``output=``, and the one-score targets (segmentation region, detection box, a callable), in both
frameworks with the same API. References: the framework's own autograd on the score written by hand
in the test, and a numpy loop for the detection IoU score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import polyviz
from backends import ALL
from polyviz.errors import InputError, TargetError
from polyviz.protocol import NativeCallable
from polyviz.targets import DetectionTarget, SegmentationTarget

SIZE, K, P = 16, 5, 6
BOX = (2.0, 3.0, 10.0, 12.0)
MASK = np.zeros((SIZE, SIZE), np.float32)
MASK[4:9, 5:12] = 1.0


def _x(layout):
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


# ---- models: one trunk, four heads (logits, a segmentation map, boxes, box scores) ----------------


def torch_model(kind):
    torch = pytest.importorskip("torch")
    from torch import nn

    @dataclass
    class Out:
        logits: object
        seg: object

    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, K)
            self.seg = nn.Conv2d(8, K, 1)
            self.box = nn.Linear(8, P * 4)
            self.score = nn.Linear(8, P * K)

        def forward(self, x):
            f = torch.relu(self.conv(x))
            pooled = f.mean(dim=(2, 3))
            logits, seg = self.fc(pooled), self.seg(f)
            boxes = torch.sigmoid(self.box(pooled)).reshape(-1, P, 4) * SIZE
            boxes = torch.cat([boxes[..., :2] * 0.5, boxes[..., :2] * 0.5 + boxes[..., 2:] * 0.5 + 1], dim=-1)
            scores = torch.softmax(self.score(pooled).reshape(-1, P, K), dim=-1)
            if kind == "dict":
                return {"logits": logits, "seg": seg, "boxes": boxes, "scores": scores}
            if kind == "tuple":
                return logits, seg, boxes, scores
            return Out(logits, seg)

    torch.manual_seed(0)
    return Multi().eval()


def keras_model(kind):
    keras = pytest.importorskip("keras")
    from keras import layers, ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    f = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = layers.GlobalAveragePooling2D()(f)
    logits = layers.Dense(K, name="fc")(pooled)
    seg = layers.Conv2D(K, 1, name="seg")(f)
    raw = ops.sigmoid(layers.Dense(P * 4)(pooled))
    raw = ops.reshape(raw, (-1, P, 4)) * SIZE
    boxes = ops.concatenate([raw[..., :2] * 0.5, raw[..., :2] * 0.5 + raw[..., 2:] * 0.5 + 1], axis=-1)
    scores = ops.softmax(ops.reshape(layers.Dense(P * K)(pooled), (-1, P, K)), axis=-1)
    if kind == "dict":
        return keras.Model(inputs, {"logits": logits, "seg": seg, "boxes": boxes, "scores": scores})
    return keras.Model(inputs, [logits, seg, boxes, scores])


def _model(framework, kind):
    return torch_model(kind) if framework == "torch" else keras_model(kind)


def _layout(framework):
    return "NCHW" if framework == "torch" else "NHWC"


def _grad(framework, model, x, score_fn):
    """(score per sample, d(sum of scores)/dx) with the framework's autograd; ``score_fn(out)``
    written in the test with the framework's own ops; x in the framework's layout."""
    if framework == "torch":
        import torch

        xt = torch.as_tensor(x).requires_grad_()
        s = score_fn(model(xt))
        s.sum().backward()
        return s.detach().numpy(), xt.grad.numpy()
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        s = score_fn(model(xt, training=False))
    return s.numpy(), tape.gradient(s, xt).numpy()


def _part(out, key):
    return out[key] if isinstance(out, dict) else out[["logits", "seg", "boxes", "scores"].index(key)]


def _close(a, b):
    b = np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(np.abs(b).max(), 1e-12))


# ---- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ALL)
@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_structured_output_selected_by_key_or_index(framework, kind):
    model, x = _model(framework, kind), _x(_layout(framework))
    key = "logits" if kind == "dict" else 0
    e = polyviz.explain(model, x, "saliency", output=key, target=3, progress=False)
    _, grad = _grad(framework, model, x, lambda out: _part(out, "logits")[:, 3])
    grad_cl = grad.transpose(0, 2, 3, 1) if framework == "torch" else grad
    reference = np.abs(grad_cl).max(axis=-1)
    got = e.attribution if e.attribution.ndim == 3 else np.abs(e.attribution).max(axis=1 if framework == "torch" else -1)
    if e.attribution.shape == x.shape:
        _close(e.attribution, grad)
    else:
        _close(got, reference)
    for method in ("gradcam", "occlusion", "scorecam"):
        m = polyviz.explain(model, x, method, output=key, target=3, layer="conv", progress=False)
        assert m.attribution.shape[-2:] == (SIZE, SIZE) and np.isfinite(m.attribution).all()


def test_torch_dataclass_output_selected_by_attribute():
    model, x = torch_model("dataclass"), _x("NCHW")
    e = polyviz.explain(model, x, "input_x_gradient", output="logits", target=1, progress=False)
    _, grad = _grad("torch", model, x, lambda out: out.logits[:, 1])
    _close(e.attribution, grad * x)


@pytest.mark.parametrize("framework", ALL)
def test_segmentation_target_is_the_region_summed_logit(framework):
    model, x = _model(framework, "dict"), _x(_layout(framework))
    target = SegmentationTarget(category=2, mask=MASK, key="seg")
    e = polyviz.explain(model, x, "input_x_gradient", target=target, progress=False)
    if framework == "torch":
        import torch

        score = lambda out: (out["seg"][:, 2] * torch.as_tensor(MASK)).sum(dim=(1, 2))  # noqa: E731
    else:
        import tensorflow as tf

        score = lambda out: tf.reduce_sum(out["seg"][..., 2] * MASK, axis=(1, 2))  # noqa: E731
    values, grad = _grad(framework, model, x, score)
    _close(e.attribution, grad * x)
    _close(e.scores, values)
    cam = polyviz.explain(model, x, "gradcam", target=target, layer="conv", progress=False)
    assert cam.attribution.shape == (2, SIZE, SIZE) and cam.options["output"].startswith("segmentation")


def _iou_score_numpy(boxes, scores, box, category):
    """max over predictions of IoU(box, box_p) * scores_p[category], by explicit loops."""
    out = []
    for bs, ss in zip(boxes, scores):
        best = -np.inf
        for b, s in zip(bs, ss):
            iw = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
            ih = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            best = max(best, inter / union * s[category])
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("framework", ALL)
@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_detection_target_is_the_best_matching_box_score(framework, kind):
    model, x = _model(framework, kind), _x(_layout(framework))
    keys = {"boxes": "boxes", "scores": "scores"} if kind == "dict" else {"boxes": 2, "scores": 3}
    target = DetectionTarget(box=BOX, category=1, **keys)
    e = polyviz.explain(model, x, "saliency", target=target, progress=False)
    if framework == "torch":
        import torch

        out = model(torch.as_tensor(x))
        boxes, scores = (_part(out, k).detach().numpy() for k in ("boxes", "scores"))
    else:
        out = model(x, training=False)
        boxes, scores = (np.asarray(_part(out, k)) for k in ("boxes", "scores"))
    reference = _iou_score_numpy(boxes.astype(np.float64), scores.astype(np.float64), BOX, 1)
    assert reference.min() > 0  # the box overlaps some prediction: the score says something
    _close(e.scores, reference)
    assert np.isfinite(e.attribution).all() and np.abs(e.attribution).max() > 0


@pytest.mark.parametrize("framework", ALL)
def test_callable_target_on_the_raw_output(framework):
    model, x = _model(framework, "dict"), _x(_layout(framework))
    fn = lambda out: out["logits"][:, 1] - out["logits"][:, 0]  # noqa: E731
    e = polyviz.explain(model, x, "input_x_gradient", target=NativeCallable(fn), progress=False)
    values, grad = _grad(framework, model, x, fn)
    _close(e.attribution, grad * x)
    _close(e.scores, values)


@pytest.mark.parametrize("framework", ALL)
def test_structured_output_without_a_target_is_refused_clearly(framework):
    model, x = _model(framework, "dict"), _x(_layout(framework))
    with pytest.raises(InputError, match="returned a dict.*output="):
        polyviz.explain(model, x, "saliency", target=1, progress=False)
    with pytest.raises(TargetError, match="no part 'nope'"):
        polyviz.explain(model, x, "saliency", output="nope", target=1, progress=False)
    with pytest.raises(InputError, match="box:"):
        polyviz.explain(model, x, "saliency", target=DetectionTarget(box=(5, 5, 1, 1), category=0), progress=False)
    with pytest.raises(TargetError, match="mask: shape"):
        polyviz.explain(model, x, "saliency", target=SegmentationTarget(0, np.ones((3, 3)), key="seg"), progress=False)


def test_cli_explain_selects_the_output_of_a_saved_multi_output_model(tmp_path, capsys):
    """``polyviz explain --output logits`` on a saved Keras model with a dict output: the written
    picture is what ``polyviz.explain(..., output="logits")`` renders."""
    pytest.importorskip("tensorflow")
    import keras
    from PIL import Image

    from polyviz.cli import main

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    f = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(f)
    model = keras.Model(inputs, {"logits": keras.layers.Dense(K, name="fc")(pooled),
                                 "aux": keras.layers.Dense(2, name="aux")(pooled)})
    path = tmp_path / "multi.keras"
    model.save(path)
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    argv = ["explain", str(tmp_path / "img.png"), "--model", str(path), "--method", "gradcam", "--layer", "conv",
            "--target", "1", "--out", str(tmp_path / "out"), "--no-progress", "--preprocess", "none"]
    assert main([*argv, "--output", "logits"]) == 0
    capsys.readouterr()
    x = image[None].astype(np.float32) / 255.0
    expected = polyviz.explain(keras.models.load_model(path), x, "gradcam", output="logits", target=1, layer="conv",
                               progress=False).render(0)
    written = np.asarray(Image.open(next((tmp_path / "out").glob("*gradcam.png"))))
    np.testing.assert_array_equal(written, expected)
    assert main(argv) == 2  # no --output: refused in one line
    assert "returned a dict" in capsys.readouterr().err


def test_a_backend_without_the_capability_refuses_an_output_target():
    """A third-party backend that does not apply output targets must not ignore one silently."""
    from numpy_backend import NumpyBackend, NumpyModel

    from polyviz.errors import CapabilityError
    from polyviz.models.spec import random_weights
    from polyviz.targets import SelectOutput
    from polyviz.testing import tiny_spec

    spec = tiny_spec()
    model = NumpyModel(spec, random_weights(spec, 0))
    with pytest.raises(CapabilityError, match="output_target"):
        NumpyBackend(model, output=SelectOutput("logits"))
