"""TorchBackend against independent references: finite differences, hand-written autograd, Captum,
numpy forward passes, polyviz's mask definition and torchvision's VGG16."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from polyviz_torch import TorchBackend  # noqa: E402

from polyviz.errors import InputError, LayerError, ModelError, TargetError, WeightsNotFoundError  # noqa: E402
from polyviz.models.spec import random_weights, vgg_spec  # noqa: E402
from polyviz.preprocess import Preprocess  # noqa: E402
from polyviz.protocol import (  # noqa: E402
    OUTPUT,
    Boxes,
    ChannelMean,
    ClassScore,
    FeatureGroups,
    LayerDistance,
    LayerNorm,
    LowResMasks,
    NativeCallable,
    Neuron,
    OutputWeighting,
    Rule,
    materialize_masks,
)
from polyviz.registry import backend_for  # noqa: E402


# ---------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------
class ModuleNet(nn.Module):
    """conv-relu-pool-conv-relu-pool-fc-relu-fc with nn.ReLU modules."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class FunctionalNet(nn.Module):
    """The same network with every functional ReLU spelling, and no ReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(24, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = self.conv2(x)
        x = torch.relu(x) if x.shape[0] % 2 else x.relu()  # both spellings are exercised by batch sizes
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x.relu_()
        return self.fc2(x)


class FunctionalInplaceNet(FunctionalNet):
    def forward(self, x):
        x = F.relu(self.conv1(x), inplace=True)
        x = F.max_pool2d(x, 2)
        x = torch.relu_(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def twin(functional: nn.Module, seed: int = 0) -> ModuleNet:
    """A ModuleNet with the functional net's weights."""
    model = ModuleNet()
    with torch.no_grad():
        for dst, src in zip(
            [model.features[0], model.features[3], model.classifier[0], model.classifier[2]],
            [functional.conv1, functional.conv2, functional.fc1, functional.fc2],
        ):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return model.eval()


def seeded(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw).eval()


def images(n=3, size=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def close(a, b, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def autograd_input_grad(model, x, fn):
    """Reference: plain torch autograd on the NCHW input, returned channels-last."""
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    values = fn(model(xt))
    (g,) = torch.autograd.grad(values.sum(), xt)
    return values.detach().numpy(), g.permute(0, 2, 3, 1).numpy()


def same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray) or isinstance(b[k], np.ndarray):
            assert np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# ---------------------------------------------------------------------------------------------
# import, detection
# ---------------------------------------------------------------------------------------------
def test_import_does_not_import_torch():
    code = "import sys, polyviz, polyviz_torch; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_detection_and_identity():
    model = seeded(ModuleNet)
    backend = backend_for(model)
    assert isinstance(backend, TorchBackend)
    assert TorchBackend.claims(model) and not TorchBackend.claims(object())
    assert TorchBackend.framework_version() == torch.__version__
    assert backend.input_shape == (None, None, 3)
    assert backend.as_numpy(torch.ones(2, requires_grad=True)).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# forward, gradients, objectives
# ---------------------------------------------------------------------------------------------
def test_forward_and_gradient_against_finite_differences():
    model = seeded(ModuleNet).double()
    backend = TorchBackend(model)
    x = images(2)
    with torch.no_grad():
        expected = model(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)).numpy()
    close(backend.forward(x), expected, rtol=1e-6)
    values, grad = backend.input_gradient(x, ClassScore([1, 4]))
    close(values, expected[[0, 1], [1, 4]], rtol=1e-6)
    x64 = x.astype(np.float64)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(10):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        plus, minus = x64.copy(), x64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fp = model(torch.tensor(plus).permute(0, 3, 1, 2))[idx[0], [1, 4][idx[0]]].item()
            fm = model(torch.tensor(minus).permute(0, 3, 1, 2))[idx[0], [1, 4][idx[0]]].item()
        # the backend hands float32 x to a float64 model: compare at float32 input precision
        assert grad[idx] == pytest.approx((fp - fm) / (2 * eps), rel=1e-3, abs=1e-6)


def test_objectives_against_autograd():
    model = seeded(ModuleNet)
    backend = TorchBackend(model)
    x = images(3)
    w = np.random.default_rng(2).normal(size=5).astype(np.float32)
    v, g = backend.input_gradient(x, OutputWeighting(w))
    rv, rg = autograd_input_grad(model, x, lambda out: out @ torch.tensor(w))
    close(v, rv)
    close(g, rg)
    v, g = backend.input_gradient(x, NativeCallable(lambda out: out[:, 1] * 2.0 - out[:, 0]))
    rv, rg = autograd_input_grad(model, x, lambda out: out[:, 1] * 2.0 - out[:, 0])
    close(v, rv)
    close(g, rg)

    # layer objectives on features.4 (ReLU of conv2, NCHW (N, 6, 4, 4)), indexed channels-last
    ref = np.random.default_rng(3).normal(size=(4, 4, 6)).astype(np.float32)
    trunk = model.features[:5]
    dense = nn.Sequential(model.features, nn.Flatten(), model.classifier[:2])
    cases = [
        (ChannelMean("features.4", [0, 5, 2]), trunk, lambda a: a[torch.arange(3), torch.tensor([0, 5, 2])].mean((1, 2))),
        (Neuron("features.4", (1, 2, 4)), trunk, lambda a: a[:, 4, 1, 2]),
        (LayerNorm("features.4", (1, 4)), trunk, lambda a: (a[:, [1, 4]] ** 2).mean((1, 2, 3))),
        (LayerNorm("features.4"), trunk, lambda a: (a**2).mean((1, 2, 3))),
        (LayerDistance("features.4", ref), trunk, lambda a: ((a - torch.tensor(ref).permute(2, 0, 1)) ** 2).sum((1, 2, 3))),
        (ChannelMean("classifier.1", 3), dense, lambda a: a[:, 3]),
    ]
    for objective, net, fn in cases:
        v, g = backend.input_gradient(x, objective)
        rv, rg = autograd_input_grad(net, x, fn)
        close(v, rv, rtol=1e-5)
        close(g, rg, rtol=1e-5)


def test_preprocess_gradient_is_wrt_raw_image():
    model = seeded(ModuleNet)
    pre = Preprocess(mean=(0.2, -0.1, 0.3), std=(0.5, 2.0, 1.5), scale=0.5, channel_order="BGR")
    backend = TorchBackend(model, preprocess=pre)
    x = images(2)
    v, g = backend.input_gradient(x, ClassScore(2))
    xt = torch.tensor(x).requires_grad_()
    z = (xt * 0.5).flip(-1)
    z = (z - torch.tensor([0.2, -0.1, 0.3])) / torch.tensor([0.5, 2.0, 1.5])
    out = model(z.permute(0, 3, 1, 2))[:, 2]
    (rg,) = torch.autograd.grad(out.sum(), xt)
    close(v, out.detach().numpy())
    close(g, rg.numpy())
    close(backend.forward(x)[:, 2], out.detach().numpy())


# ---------------------------------------------------------------------------------------------
# ReLU rules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_relu_rules_match_captum_and_reach_functional_relus(rule):
    captum_attr = pytest.importorskip("captum.attr")
    functional = seeded(FunctionalNet)
    modules = twin(functional)
    x = images(3)
    targets = [0, 3, 1]
    method = captum_attr.GuidedBackprop if rule == "guided" else captum_attr.Deconvolution
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    expected = method(modules).attribute(xt, target=targets).detach().permute(0, 2, 3, 1).numpy()
    for model in (modules, functional, seeded(FunctionalInplaceNet)):
        before = TorchBackend.state_fingerprint(model)
        _, got = TorchBackend(model).input_gradient(x, ClassScore(targets), Rule(relu=rule))
        close(got, expected, rtol=1e-5)
        same_state(before, TorchBackend.state_fingerprint(model))
        # an even batch takes the Tensor.relu spelling in FunctionalNet
        _, two = TorchBackend(model).input_gradient(x[:2], ClassScore(targets[:2]), Rule(relu=rule))
        close(two, expected[:2], rtol=1e-5)
    # the rule differs from the plain gradient, and the plain gradient is back afterwards
    _, plain = TorchBackend(functional).input_gradient(x, ClassScore(targets))
    assert not np.allclose(plain, expected)
    _, ref = autograd_input_grad(modules, x, lambda out: out[torch.arange(3), torch.tensor(targets)])
    close(plain, ref)


def test_guided_layer_gradients_match_hand_written_backward():
    model = seeded(ModuleNet)
    x = images(2)
    res = TorchBackend(model).layer_gradients(x, ["features.5"], ClassScore(1), Rule(relu="guided"))
    # by hand: the guided backward from logit 1 through fc2 -> ReLU -> fc1 to the flattened pool
    with torch.no_grad():
        a = model.features(torch.tensor(x).permute(0, 3, 1, 2))
        h = model.classifier[0](torch.flatten(a, 1))
    g = model.classifier[2].weight[1].detach().expand(2, -1)
    g = (g.clamp(min=0) * (h > 0)) @ model.classifier[0].weight.detach()
    close(res.gradients["features.5"], g.reshape(2, 6, 2, 2).permute(0, 2, 3, 1).numpy(), rtol=1e-5)
    close(res.activations["features.5"], a.permute(0, 2, 3, 1).numpy())


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
def test_inplace_relu_does_not_corrupt_activations():
    torch.manual_seed(0)
    inplace = ModuleNet(inplace=True).eval()
    plain = ModuleNet(inplace=False).eval()
    plain.load_state_dict(inplace.state_dict())
    x = images(2)
    names = ["features.0", "features.1", "features.3", "classifier.0", "classifier.1"]
    got = TorchBackend(inplace).layer_activations(x, names, include_output=True)
    ref = TorchBackend(plain).layer_activations(x, names, include_output=True)
    for name in [*names, OUTPUT]:
        close(got[name], ref[name], rtol=1e-6)
    assert (got["features.0"] < 0).any()  # the conv output kept its negatives
    with torch.no_grad():
        conv = plain.features[0](torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    close(got["features.0"], conv, rtol=1e-6)
    # layer gradients too: conv output gradient = relu mask * relu output gradient
    res = TorchBackend(inplace).layer_gradients(x, ["features.0", "features.1"], ClassScore(2))
    close(res.gradients["features.0"], res.gradients["features.1"] * (conv > 0), rtol=1e-6)


def test_layer_gradients_against_full_autograd_and_no_param_grads():
    model = seeded(ModuleNet)
    x = images(3)
    targets = [4, 0, 2]
    res = TorchBackend(model).layer_gradients(x, ["features.4", "features.1"], ClassScore(targets))
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    a1 = model.features[:2](xt)
    a4 = model.features[2:5](a1)
    out = model.classifier(torch.flatten(model.features[5](a4), 1))
    values = out[torch.arange(3), torch.tensor(targets)]
    g1, g4 = torch.autograd.grad(values.sum(), [a1, a4])
    close(res.values, values.detach().numpy())
    close(res.gradients["features.1"], g1.permute(0, 2, 3, 1).numpy(), rtol=1e-5)
    close(res.gradients["features.4"], g4.permute(0, 2, 3, 1).numpy(), rtol=1e-5)
    close(res.activations["features.4"], a4.detach().permute(0, 2, 3, 1).numpy())
    assert all(p.grad is None for p in model.parameters())


def test_module_called_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            x = self.act(self.conv(self.act(x)))
            return self.fc(x.mean((2, 3)))

    model = seeded(Twice)
    backend = TorchBackend(model)
    for call in (
        lambda: backend.layer_activations(images(1), ["act"]),
        lambda: backend.layer_gradients(images(1), ["act"], ClassScore(0)),
        lambda: backend.input_gradient(images(1), ChannelMean("act", 0)),
    ):
        with pytest.raises(LayerError, match="called 2 times"):
            call()
    assert backend.layer_activations(images(1), ["conv"])["conv"].shape == (1, 8, 8, 3)


def test_layers_listing_and_weights():
    model = seeded(ModuleNet)
    backend = TorchBackend(model)
    backend.forward(images(1))
    infos = {i.name: i for i in backend.layers()}
    assert list(infos)[:2] == ["features", "features.0"]
    assert infos["features.0"].output_shape == (8, 8, 4)
    assert infos["classifier.0"].output_shape == (8,)
    assert infos["features.0"].params == 4 * 3 * 9 + 4 and infos["features.0"].trainable
    w = backend.layer_weights("features.0")
    close(w["kernel"], model.features[0].weight.detach().permute(2, 3, 1, 0).numpy())
    # the Linear fed by a flattened (C, H, W) map answers rows in (H, W, C) order
    k = backend.layer_weights("classifier.0")["kernel"]
    a = np.random.default_rng(0).normal(size=(1, 2, 2, 6)).astype(np.float32)
    expected = model.classifier[0](torch.tensor(a).permute(0, 3, 1, 2).flatten(1)).detach().numpy()
    close(a.reshape(1, -1) @ k + backend.layer_weights("classifier.0")["bias"], expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# masked scores
# ---------------------------------------------------------------------------------------------
def test_masked_scores_match_materialized_masks():
    model = seeded(ModuleNet)
    backend = TorchBackend(model)
    x = images(2, size=8)
    rng = np.random.default_rng(5)
    specs = [
        Boxes(np.array([[0, 0, 4, 4], [3, 5, 9, 12], [6, 6, 8, 8]])),
        FeatureGroups(rng.integers(0, 4, size=(8, 8)), rng.integers(0, 2, size=(5, 4)).astype(np.float32)),
        LowResMasks(rng.random((4, 3, 3)).astype(np.float32), normalize=True),
        LowResMasks(np.ones((2, 3, 3), np.float32), normalize=True),
        LowResMasks(rng.random((3, 4, 4)).astype(np.float32), mode="nearest"),
        LowResMasks(rng.random((2, 3, 3)).astype(np.float32), upsampled_size=(11, 11), offsets=np.array([[1, 3], [2, 0]])),
    ]
    baseline = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    for spec in specs:
        m = len(spec)
        index = np.arange(m) % 2
        full = materialize_masks(spec, 8, 8)[..., None]
        with torch.no_grad():
            batch = x[index] * full + baseline[index] * (1 - full)
            expected = model(torch.tensor(batch).permute(0, 3, 1, 2)).numpy()
        close(backend.masked_scores(x, spec, baseline, sample_index=index), expected, rtol=1e-5)
        targets = list(range(m))
        got = backend.masked_scores(x, spec, baseline, sample_index=index, objective=ClassScore([t % 5 for t in targets]))
        close(got, expected[np.arange(m), [t % 5 for t in targets]], rtol=1e-5)
    with pytest.raises(TargetError, match="target"):
        backend.masked_scores(x[:1], specs[0], 0.0, objective=ClassScore(7))


def test_layer_masked_scores():
    model = seeded(ModuleNet)
    keep = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1]], np.float32)
    got = TorchBackend(model).layer_masked_scores(images(2), "features.4", keep, sample_index=np.array([1, 0]))
    x = torch.tensor(images(2)).permute(0, 3, 1, 2)
    with torch.no_grad():
        a = model.features[:5](x[[1, 0]]) * torch.tensor(keep)[:, :, None, None]
        expected = model.classifier(torch.flatten(model.features[5](a), 1)).numpy()
    close(got, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# safety and errors
# ---------------------------------------------------------------------------------------------
def test_state_is_restored_after_every_call_even_when_raising():
    model = seeded(ModuleNet)
    model.train()
    model.classifier[0].weight.requires_grad_(False)
    backend = TorchBackend(model)
    before = TorchBackend.state_fingerprint(model)
    x = images(2)
    backend.forward(x)
    backend.input_gradient(x, ClassScore(1), Rule(relu="guided"))
    backend.layer_activations(x, ["features.1"], include_output=True)
    backend.layer_gradients(x, ["features.1", "classifier.1"], ChannelMean("features.4", 1), Rule(relu="deconvnet"))
    backend.masked_scores(x[:1], Boxes(np.array([[0, 0, 2, 2]])), 0.0)
    same_state(before, TorchBackend.state_fingerprint(model))
    assert model.training and model.features[1].training

    class Boom(Exception):
        pass

    def boom(out):
        raise Boom("inside the objective")

    for rule in (Rule(), Rule(relu="guided")):
        with pytest.raises(Boom):
            backend.input_gradient(x, NativeCallable(boom), rule)
        same_state(before, TorchBackend.state_fingerprint(model))
    assert torch.is_grad_enabled()
    # the model's own forward raising (wrong channel count reaches the conv through an option)
    bad = TorchBackend(model, input_shape=(8, 8, 5))
    with pytest.raises(InputError, match="x: the model failed on input of shape") as info:
        bad.layer_gradients(np.zeros((1, 8, 8, 5), np.float32), ["features.1"], ClassScore(0))
    assert isinstance(info.value.__cause__, RuntimeError)
    same_state(before, TorchBackend.state_fingerprint(model))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_name_the_argument():
    model = seeded(ModuleNet)
    backend = TorchBackend(model)
    x = images(2)
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    cases = [
        (InputError, "x", lambda: backend.forward(np.transpose(x, (0, 3, 1, 2)))),
        (InputError, "x", lambda: backend.forward(x[0])),
        (InputError, "x", lambda: backend.input_gradient(nan, ClassScore(0))),
        (LayerError, "Did you mean 'features.1'", lambda: backend.layer_activations(x, ["features.1x"])),
        (TargetError, "target", lambda: backend.input_gradient(x, ClassScore(5))),
        (TargetError, "channel", lambda: backend.input_gradient(x, ChannelMean("features.1", 9))),
        (InputError, "objective", lambda: backend.input_gradient(x, NativeCallable(lambda out: out))),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text):
            call()


# ---------------------------------------------------------------------------------------------
# build, export, zoo
# ---------------------------------------------------------------------------------------------
def numpy_forward(spec, weights, x):
    """Independent numpy forward of a VGG-style spec (conv 'same' 3x3 via patches), channels-last."""
    a = x.astype(np.float64)
    for layer in spec.layers:
        cfg = layer.config
        if layer.kind == "conv2d":
            k = weights[layer.name]["kernel"].astype(np.float64)
            kh, kw = k.shape[:2]
            p = np.pad(a, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
            h, w = a.shape[1:3]
            patches = np.stack([p[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=3)
            a = np.einsum("nhwpc,pco->nhwo", patches, k.reshape(kh * kw, *k.shape[2:]))
            a = a + weights[layer.name]["bias"]
            if cfg.get("activation") == "relu":
                a = np.maximum(a, 0)
        elif layer.kind == "maxpool2d":
            n, h, w, c = a.shape
            a = a[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        elif layer.kind == "global_avgpool":
            a = a.mean(axis=(1, 2))
        elif layer.kind == "flatten":
            a = a.reshape(len(a), -1)
        elif layer.kind == "dense":
            a = a @ weights[layer.name]["kernel"] + weights[layer.name]["bias"]
            if cfg.get("activation") == "relu":
                a = np.maximum(a, 0)
    return a


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_build_and_export_round_trip(head):
    spec = vgg_spec([[4], [6, 5]], input_shape=(12, 12, 3), dense=(7,), classes=4, head=head, dropout=0.5)
    weights = random_weights(spec, seed=3)
    model, names = TorchBackend.build(spec, weights)
    x = images(2, size=12)
    expected = numpy_forward(spec, weights, x)
    backend = TorchBackend(model)
    close(backend.forward(x), expected, rtol=1e-4, atol=1e-5)
    acts = backend.layer_activations(x, [names["block2_conv2"], names["fc1"]])
    sub = type(spec)(spec.input_shape, spec.layers[: [lay.name for lay in spec.layers].index("block2_conv2") + 1])
    close(acts[names["block2_conv2"]], numpy_forward(sub, weights, x), rtol=1e-4, atol=1e-5)
    assert names["block2_conv2"] == "features.6" and names["block1_pool"] == "features.2"
    spec2, weights2, names2 = TorchBackend.export(model)
    kinds = [lay.kind for lay in spec.layers]  # a GAP head (AdaptiveAvgPool2d(1) + Flatten) reads back as one
    assert [lay.kind for lay in spec2.layers] == kinds
    for name in ("block1_conv1", "block2_conv2", "fc1", "predictions"):
        for key in ("kernel", "bias"):
            close(weights2[name][key], weights[name][key], rtol=0, atol=0)
    assert names2["block2_conv2"] == "features.6" and names2["predictions"] == "classifier.3"
    rebuilt, _ = TorchBackend.build(spec2, weights2)
    close(TorchBackend(rebuilt).forward(x), expected, rtol=1e-4, atol=1e-5)


def test_export_refuses_unsupported_modules():
    # BatchNorm converts since the graph reader (issue 15); GroupNorm has no equivalent
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(ModelError, match="'1' \\(GroupNorm\\)"):
        TorchBackend.export(model)


@pytest.mark.slow
def test_torchvision_vgg16_export_names_and_timing():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vgg16(weights=None).eval()
    spec, weights, names = TorchBackend.export(model)  # export verifies the rebuilt network's output
    assert names["block5_conv3"] == "features.29" and names["block5_pool"] == "features.30"
    assert names["fc1"] == "classifier.1" and names["predictions"] == "classifier.6"
    assert weights["block1_conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert weights["fc1"]["kernel"].shape == (7 * 7 * 512, 4096)
    backend = TorchBackend(model)
    x = images(1, size=224)
    t0 = time.perf_counter()
    backend.forward(x)
    t1 = time.perf_counter()
    backend.input_gradient(x, ClassScore(3))
    t2 = time.perf_counter()
    print(f"\nVGG16 224px: forward {t1 - t0:.2f}s, input gradient {t2 - t1:.2f}s")
    res = backend.layer_gradients(x, ["features.29"], ClassScore(3))
    assert res.gradients["features.29"].shape == (1, 14, 14, 512)


@pytest.mark.slow
def test_vgg_zoo_loads_imagenet_file_and_reports_missing(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert torch.hub.get_dir().startswith(str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth") as info:
        TorchBackend.vgg("vgg16", "imagenet")
    assert time.perf_counter() - t0 < 30
    assert str(tmp_path) in str(info.value) and "https://" in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        TorchBackend.vgg("vgg16", str(tmp_path / "nope.pth"))
    torch.manual_seed(7)
    source = torchvision.models.vgg16(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source.state_dict(), checkpoints / "vgg16-397923af.pth")
    model = TorchBackend.vgg("vgg16", "imagenet")
    assert not model.training
    assert torch.equal(model.features[28].weight, source.features[28].weight)
    small = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, small)
    with pytest.raises(ModelError, match="differences"):
        TorchBackend.vgg("vgg16", str(small))


def test_conformance_suite():
    testing = pytest.importorskip("polyviz.testing")
    testing.run_conformance(TorchBackend)


def test_float64_model_matches_float64_reference(monkeypatch):
    """A ``.double()`` model: inputs and objective constants follow the parameters' dtype, results
    come back float32, and everything equals the float64 numpy reference to 1e-6."""
    from backends import float64_conformance

    def build64(spec, weights):
        model, names = TorchBackend.build(spec, weights)
        return model.double(), names

    float64_conformance(TorchBackend, build64, monkeypatch)


def test_cuda_device():  # pragma: no cover - needs a GPU
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    model = seeded(ModuleNet).cuda()
    x = images(2)
    _, g = TorchBackend(model).input_gradient(x, ClassScore(1), Rule(relu="guided"))
    _, ref = TorchBackend(seeded(ModuleNet)).input_gradient(x, ClassScore(1), Rule(relu="guided"))
    close(g, ref, rtol=1e-3)


def test_torchvision_after_tensorflow_does_not_crash_the_process():
    """CUDA torch builds ship triton, which segfaults when loaded after TensorFlow; the backend
    blocks it (torchvision is imported by the zoo after TF here, in a fresh process)."""
    import subprocess
    import sys

    pytest.importorskip("tensorflow")
    code = (
        "import tensorflow, keras, polyviz\n"
        "k = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)])\n"
        "polyviz.backend_for(k).forward(__import__('numpy').zeros((1, 8, 8, 3), 'float32'))\n"
        "m = polyviz.models.vgg16('torch')\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "VGG" in out.stdout
