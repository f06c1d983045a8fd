"""Conversion of graph CNNs (ResNet, MobileNetV2, EfficientNet-B0, DenseNet-121) both ways.

Every listed model goes torch -> Keras -> torch (torchvision) or Keras -> torch -> Keras
(keras.applications) with seeded random weights and random BatchNorm statistics, at 32 px in the
default set and 224 px in the slow set. References: the source model itself, run by its own
framework. The logits are compared in float64 (every model's float64 copy; the weights are float32
values, so the float64 runs compute the same function exactly and the bound does not depend on one
CPU's float32 kernels), and in float32 against the round-off each framework shows against its own
float64 run. The layer map must pair every block output, and the paired layers' activations agree.
"""

import numpy as np
import pytest

import polyviz
from backends import both_frameworks, rel, release
from polyviz.errors import ModelError
from polyviz.models import convert
from polyviz.registry import backend_class

TORCH_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"]
KERAS_MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"]
SIZES = [pytest.param(32, id="32px"), pytest.param(224, id="224px", marks=pytest.mark.slow)]

#: torchvision block classes whose every instance must be in the layer map.
TORCH_BLOCKS = ("BasicBlock", "Bottleneck", "InvertedResidual", "MBConv", "_DenseBlock", "_DenseLayer", "_Transition")
#: One block output per Keras model, checked by value (all layers are checked to be mapped).
KERAS_BLOCK = {"resnet50": "conv4_block6_out", "mobilenet_v2": "block_16_project_BN",
               "efficientnet_b0": "block6d_add", "densenet121": "conv4_block24_concat"}


def images(size, n=1):
    return np.random.default_rng(0).random((n, size, size, 3)).astype(np.float32)


def activation(model, x, name):
    return polyviz.backend_for(model).layer_activations(x, [name])[name]


def float64(model):
    return type(polyviz.backend_for(model)).float64_copy(model)


def log_probs(model, x):
    """log-softmax of the class scores, computed by the model's own framework (no polyviz code):
    a torch model returns logits; a Keras one probabilities (its softmax head) or logits."""
    if hasattr(model, "parameters"):
        import torch

        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            return torch.log_softmax(model(torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)), 1).numpy()
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:  # logits by hand
        features = np.asarray(keras.Model(model.inputs, last.input)(x.astype(model.inputs[0].dtype)), np.float64)
        out = features @ np.asarray(last.kernel, np.float64) + np.asarray(last.bias, np.float64)
    else:
        out = np.asarray(model(x.astype(model.inputs[0].dtype)), np.float64)
    return out - np.log(np.exp(out - out.max(1, keepdims=True)).sum(1, keepdims=True)) - out.max(1, keepdims=True)


def check_logits(source, converted, x, what):
    """Float64: the same function (both float64 copies hold the same float32 weight values; 1e-9
    leaves room for summation order only, measured ~1e-15). Float32: within 1e-5 of the source's
    float64 output, or of 3x the source's own float32 round-off where that is larger."""
    s64 = log_probs(float64(source), x)
    c64 = log_probs(float64(converted), x)
    assert np.abs(s64).max() > 0, what
    assert rel(c64, s64) <= 1e-9, f"{what}: float64 outputs differ by {rel(c64, s64):.1e}"
    floor = rel(log_probs(source, x), s64)
    err32 = rel(log_probs(converted, x), s64)
    assert err32 <= max(1e-5, 3 * floor), f"{what}: float32 outputs {err32:.1e} from float64 (floor {floor:.1e})"
    return rel(c64, s64), err32


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torchvision_to_keras_and_back(name, size):
    torch_cls = backend_class("torch")
    model = torch_cls.seeded_model(name, seed=0)
    x = images(size)
    to_keras = convert(model, "keras", input_shape=(size, size, 3))
    check_logits(model, to_keras.model, x, f"{name} -> keras")
    blocks = [p for p, m in model.named_modules() if type(m).__name__ in TORCH_BLOCKS]
    assert blocks and not [b for b in blocks if b not in to_keras.layer_map], f"{name}: unmapped blocks"
    if size == 224:  # the deepest block's output, by value (float64, both frameworks)
        last = blocks[-1]
        a = activation(float64(model), x, last)
        b = activation(float64(to_keras.model), x, to_keras.layer_map[last])
        assert rel(b, a) <= 1e-6, f"{name}: block {last}"
    back = convert(to_keras.model, "torch")
    check_logits(model, back.model, x, f"{name} -> keras -> torch")
    assert set(back.layer_map) >= {to_keras.layer_map[b] for b in blocks}
    release()


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras_applications_to_torch_and_back(name, size):
    model = backend_class("keras").seeded_model(name, seed=0, input_shape=(size, size, 3))
    x = images(size)
    to_torch = convert(model, "torch")
    check_logits(model, to_torch.model, x, f"{name} -> torch")
    layers = [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"]
    assert not [n for n in layers if n not in to_torch.layer_map], f"{name}: unmapped layers"
    if size == 224:
        block = KERAS_BLOCK[name]
        a = activation(float64(model), x, block)
        b = activation(float64(to_torch.model), x, to_torch.layer_map[block])
        assert rel(b, a) <= 1e-6, f"{name}: block {block}"
    back = convert(to_torch.model, "keras", input_shape=(size, size, 3))
    check_logits(model, back.model, x, f"{name} -> torch -> keras")
    release()


@both_frameworks
def test_preprocessing_layers_travel_as_leading_operations():
    """EfficientNetB0's Rescaling and Normalization become GraphNet's first modules (that they compute
    the same, with a random mean and variance, is in the round trip's logits)."""
    model = backend_class("keras").seeded_model("efficientnet_b0", input_shape=(32, 32, 3))
    to_torch = convert(model, "torch")
    first = [type(m).__name__ for _, m in list(to_torch.model.named_children())[:2]]
    assert first == ["Rescale", "Normalize"]
    release()


@both_frameworks
def test_same_padding_at_stride_2_becomes_explicit_asymmetric_padding():
    """Keras MobileNetV2's first conv is 'same' at stride 2: TF pads (0, 1) at 32 px, torch would pad
    (1, 1); the torch model gets a ZeroPad2d (0, 1, 0, 1) before a valid conv."""
    import torch

    model = backend_class("keras").seeded_model("mobilenet_v2", input_shape=(32, 32, 3))
    to_torch = convert(model, "torch")
    pad = to_torch.model.Conv1_pad
    assert isinstance(pad, torch.nn.ZeroPad2d) and tuple(pad.padding) == (0, 1, 0, 1)
    assert tuple(to_torch.model.Conv1.padding) == (0, 0)
    release()


@both_frameworks
def test_float64_torch_models_convert():
    model = backend_class("torch").seeded_model("resnet18").double()
    x = images(32, 1)
    out = convert(model, "keras", input_shape=(32, 32, 3))
    assert rel(log_probs(out.model, x), log_probs(model, x)) <= 1e-5
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float64"
    release()


@both_frameworks
def test_the_users_model_is_not_modified():
    import torch

    model = backend_class("torch").seeded_model("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    convert(model, "keras", input_shape=(32, 32, 3))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    release()


@both_frameworks
def test_refusals_name_the_structural_reason():
    import keras
    import torch
    from torch import nn

    class Scaled(nn.Module):  # a constant in an add: no graph node for it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) + 1.0

    with pytest.raises(ModelError, match="adds a constant"):
        convert(Scaled(), "keras", input_shape=(8, 8, 3))

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="torch.fx cannot trace"):
        convert(Branchy(), "keras", input_shape=(8, 8, 3))
    inp = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same")
    with pytest.raises(ModelError, match="shared"):
        convert(keras.Model(inp, keras.layers.Add()([shared(inp), shared(shared(inp))])), "torch")
    mp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(3, 2, padding=1)).eval()
    with pytest.raises(ModelError, match="-inf padding"):
        convert(mp, "keras", input_shape=(8, 8, 3))  # TF "same" would pad (0, 1) here
    del torch
    release()
