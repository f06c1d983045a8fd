"""Transformers and channels-last maps (issue 14, item 2): a layer's layout is detected, never
guessed; ViT token layers are shown as their patch grid (class/register tokens dropped); every CAM
method gives 2-D maps on torchvision ViT and Swin and on a small Keras ViT built here.

References are computed here with the framework's own autograd at the named tensor, laid out by
hand (NHWC used as it is, tokens cut and reshaped row-major), or in the other layout of the same
tensor (Swin's ``norm`` is NHWC, the ``permute`` after it NCHW: their CAMs must be equal).
Random weights; small inputs (ViT 32 px with 8 px patches, Swin 64 px); full size is ``slow``.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import polyviz
from polyviz.errors import LayerError, PolyvizError
from polyviz.registry import backend_for

#: The CAM methods (one (H, W) map per sample) and the options that keep them cheap here.
CAMS = {
    "gradcam": {}, "gradcam_plus_plus": {}, "hirescam": {}, "xgradcam": {}, "layercam": {}, "eigencam": {},
    "scorecam": {"max_channels": 8}, "ablationcam": {}, "cam": {},
}


def _gradcam(acts, grads):
    """Grad-CAM (Selvaraju et al. 2017) at layer resolution from channels-last A and dS/dA (float64)."""
    a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    return np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0.0)


def _assert_map(e, size):
    assert e.attribution.shape == (1, size, size)
    assert e.attribution.dtype == np.float32 and np.isfinite(e.attribution).all()


def _check_cams(model, x, size, layer, narrow_layer=None):
    """Every CAM method gives a finite (1, size, size) map, or (CAM, which needs global pooling
    into the classifier) refuses with a polyviz error. Perturbation CAMs run at ``narrow_layer``."""
    for method, options in CAMS.items():
        at = narrow_layer if method == "ablationcam" and narrow_layer else layer
        try:
            e = polyviz.explain(model, x, method, target=1, layer=at, progress=False, **options)
        except PolyvizError as exc:
            assert method == "cam", f"{method}: {exc}"
            continue
        _assert_map(e, size)


# ---- torch --------------------------------------------------------------------------------------


def _torch_grad_at(model, module_name, x, target):
    """(activation, gradient) of module ``module_name``'s output, plain torch autograd."""
    import torch

    store = {}

    def hook(module, inputs, output):
        store["a"] = output.detach().clone()
        output.register_hook(lambda g: store.__setitem__("g", g.detach().clone()))

    handle = model.get_submodule(module_name).register_forward_hook(hook)
    try:
        model(torch.as_tensor(x))[0, target].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return store["a"].numpy(), store["g"].numpy()


@pytest.fixture(scope="module")
def small_vit():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # zero at init: every gradient would be 0
    return model


@pytest.fixture(scope="module")
def swin():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


def _x(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_torch_vit_token_layers_are_patch_grids(small_vit):
    be = backend_for(small_vit)
    be.check_x(np.zeros((1, 32, 32, 3), np.float32))
    info = be.layer_info("encoder.layers.encoder_layer_1.ln_1")
    assert (info.layout, info.prefix, info.output_shape) == ("NTC", 1, (4, 4, 32))
    assert be.layer_info("conv_proj").layout == "NCHW"
    assert be.layer_info("heads.head").layout is None
    assert polyviz.api.default_layer(be) == "encoder.layers.encoder_layer_1.ln_1"


def test_torch_vit_gradcam_equals_the_token_grid_reference(small_vit):
    x = _x((1, 3, 32, 32))
    layer = "encoder.layers.encoder_layer_1.ln_1"
    a, g = _torch_grad_at(small_vit, layer, x, 1)
    grid = lambda t: t[:, 1:].reshape(1, 4, 4, -1)  # noqa: E731 - drop the class token, row-major grid
    e = polyviz.explain(small_vit, x, "gradcam", target=1, progress=False)
    assert e.layer == layer
    reference = _gradcam(grid(a), grid(g))
    assert reference.max() > 0
    np.testing.assert_allclose(e.layer_attribution, reference, rtol=1e-4, atol=1e-6 * reference.max())
    acts = polyviz.activations(small_vit, x, [layer]) if hasattr(polyviz, "activations") else None
    if acts is not None:
        got = acts[layer] if isinstance(acts, dict) else acts
        np.testing.assert_allclose(np.asarray(got), grid(a), rtol=1e-5, atol=1e-6)


def test_torch_vit_every_cam_gives_a_2d_map(small_vit):
    _check_cams(small_vit, _x((1, 3, 32, 32)), 32, None)


def test_torch_vit_gradient_perturbation_and_ig_methods_unchanged(small_vit):
    import torch

    x = _x((1, 3, 32, 32))
    xt = torch.as_tensor(x).requires_grad_()
    small_vit(xt)[0, 1].backward()
    e = polyviz.explain(small_vit, x, "saliency", target=1, progress=False)
    np.testing.assert_allclose(e.attribution, np.abs(xt.grad.numpy()) if e.attribution.min() >= 0 else xt.grad.numpy(),
                               rtol=1e-4, atol=1e-7)
    ig = polyviz.explain(small_vit, x, "integrated_gradients", target=1, n_steps=8, progress=False)
    occ = polyviz.explain(small_vit, x, "occlusion", target=1, progress=False)
    assert ig.attribution.shape == x.shape and np.isfinite(ig.attribution).all()
    assert occ.attribution.shape[-2:] == (32, 32) and np.isfinite(occ.attribution).all()


def test_torch_vit_layer_integrated_gradients_on_tokens(small_vit):
    """Layer IG on a token layer (Captum's definition: the layer's activation interpolated from its
    value at the baseline input to its value at x): completeness, sum = f(x) - f(x with the grid
    tokens at their baseline values), the class token kept as the model made it (checked in torch)."""
    import torch

    layer = "encoder.layers.encoder_layer_1.ln_1"
    x = _x((1, 3, 32, 32))
    e = polyviz.explain(small_vit, x, "layer_integrated_gradients", target=1, layer=layer, n_steps=64, progress=False)
    assert e.attribution.shape == (1, 4, 4, 32)
    module = small_vit.get_submodule(layer)
    store = {}
    with torch.no_grad():
        handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("base", o.clone()))
        small_vit(torch.zeros(1, 3, 32, 32))
        handle.remove()
        full = float(small_vit(torch.as_tensor(x))[0, 1])
        handle = module.register_forward_hook(lambda m, i, o: torch.cat([o[:, :1], store["base"][:, 1:]], dim=1))
        try:
            base = float(small_vit(torch.as_tensor(x))[0, 1])
        finally:
            handle.remove()
    assert abs(float(e.attribution.sum()) - (full - base)) < 2e-2 * max(abs(full - base), 1e-3)


def test_torch_swin_nhwc_layer_equals_its_nchw_permute(swin):
    """Swin's ``norm`` holds (N, H, W, C); the model's ``permute`` after it holds the same values as
    (N, C, H, W). Grad-CAM must be the same map at both, and equal the NHWC reference."""
    x = _x((1, 3, 64, 64))
    be = backend_for(swin)
    be.check_x(np.zeros((1, 64, 64, 3), np.float32))
    assert be.layer_info("norm").layout == "NHWC" and be.layer_info("permute").layout == "NCHW"
    assert be.layer_info("norm").output_shape == (2, 2, 768)
    # random weights leave Grad-CAM all zero (after its ReLU) for some classes: take the first that is not
    target, reference = next((t, r) for t in range(20) if (r := _gradcam(*_torch_grad_at(swin, "norm", x, t))).max() > 0)
    at_norm = polyviz.explain(swin, x, "gradcam", target=target, layer="norm", progress=False)
    at_permute = polyviz.explain(swin, x, "gradcam", target=target, layer="permute", progress=False)
    np.testing.assert_allclose(at_norm.layer_attribution, reference, rtol=1e-4, atol=1e-6 * reference.max())
    np.testing.assert_allclose(at_permute.layer_attribution, reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_torch_swin_every_cam_gives_a_2d_map(swin):
    _check_cams(swin, _x((1, 3, 64, 64)), 64, None, narrow_layer="features.2")


def test_torch_convnext_channels_last_inner_layer_is_not_read_as_nchw():
    """Issue 14's regression: Grad-CAM at an NHWC layer inside a torch ConvNeXt block returned a
    (1, 7, 768) "map" with no error. Now the layer is (h, w, C) and the map is the NHWC reference."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None).eval()
    x = _x((1, 3, 64, 64))
    layer = "features.7.2.block.2"  # the LayerNorm between the block's two Permutes
    be = backend_for(model)
    be.check_x(np.zeros((1, 64, 64, 3), np.float32))
    assert be.layer_info(layer).layout == "NHWC" and be.layer_info(layer).output_shape == (2, 2, 768)
    target, reference = next((t, r) for t in range(20) if (r := _gradcam(*_torch_grad_at(model, layer, x, t))).max() > 0)
    e = polyviz.explain(model, x, "gradcam", target=target, layer=layer, progress=False)
    _assert_map(e, 64)
    np.testing.assert_allclose(e.layer_attribution, reference, rtol=1e-4, atol=1e-6 * max(reference.max(), 1e-12))
    del model
    gc.collect()


def test_torch_unknown_layout_is_refused_not_guessed():
    torch = pytest.importorskip("torch")
    from torch import nn

    class Made(nn.Module):  # a 4-D tensor from a factory: no axis can be followed to the input
        def forward(self, x):
            return torch.ones(x.shape[0], x.shape[2], x.shape[3], 8) * x.mean()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.made = Made()
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc((self.conv(x) + self.made(x).permute(0, 3, 1, 2)).mean(dim=(2, 3)))

    class Declared(Made):
        __polyviz_layout__ = "NHWC"

    x = _x((1, 3, 8, 8))
    net = Net().eval()
    with pytest.raises(LayerError, match="'made'.*could not be detected.*__polyviz_layout__"):
        polyviz.explain(net, x, "layer_activation", target=1, layer="made", progress=False)
    be = backend_for(net)
    be.check_x(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(LayerError, match="'made'.*could not be detected.*__polyviz_layout__"):
        be.layer_activations(np.zeros((1, 8, 8, 3), np.float32), ["made"])
    with pytest.raises(LayerError, match="'made'.*layout could not be detected"):
        polyviz.explain(net, x, "gradcam", target=1, layer="made", progress=False)
    declared = Net().eval()
    declared.made = Declared()
    _assert_map(polyviz.explain(declared, x, "gradcam", target=1, layer="made", progress=False), 8)


@pytest.mark.slow
def test_torch_full_size_vit_b_16_and_swin_t_cams():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(weights=None).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    x = _x((1, 3, 224, 224))
    for method in ("gradcam", "gradcam_plus_plus", "layercam", "eigencam"):
        e = polyviz.explain(vit, x, method, target=1, progress=False)
        assert e.layer == "encoder.layers.encoder_layer_11.ln_1" and e.layer_attribution.shape == (1, 14, 14)
        _assert_map(e, 224)
    del vit
    gc.collect()
    swin_t = torchvision.models.swin_t(weights=None).eval()
    for method in ("gradcam", "gradcam_plus_plus", "layercam", "eigencam"):
        e = polyviz.explain(swin_t, x, method, target=1, progress=False)
        assert e.layer_attribution.shape == (1, 7, 7)
        _assert_map(e, 224)


# ---- keras --------------------------------------------------------------------------------------


def keras_vit(size=32, patch=8, dim=32, heads=2, depth=2, classes=10, registers=0):
    """A small ViT as Keras users write one: patch Conv2D, class (and register) tokens, position
    embedding, pre-norm blocks (LayerNormalization, MultiHeadAttention, MLP), class-token head."""
    keras = pytest.importorskip("keras")
    from keras import layers, ops

    class Tokens(layers.Layer):
        def __init__(self, count, **kwargs):
            super().__init__(**kwargs)
            self.count = count

        def build(self, input_shape):
            self.token = self.add_weight(shape=(1, self.count, input_shape[-1]), initializer="random_normal")

        def call(self, x):
            return ops.concatenate([ops.broadcast_to(self.token, (ops.shape(x)[0], self.count, x.shape[-1])), x], axis=1)

    class Position(layers.Layer):
        def build(self, input_shape):
            self.pos = self.add_weight(shape=(1, *input_shape[1:]), initializer="random_normal")

        def call(self, x):
            return x + self.pos

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    x = layers.Reshape((-1, dim))(x)
    x = Tokens(1 + registers, name="cls")(x)
    x = Position(name="pos")(x)
    for i in range(depth):
        h = layers.LayerNormalization(name=f"block{i}_ln1")(x)
        h = layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(h, h)
        x = layers.Add(name=f"block{i}_add1")([x, h])
        h = layers.LayerNormalization(name=f"block{i}_ln2")(x)
        h = layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        h = layers.Dense(dim, name=f"block{i}_mlp2")(h)
        x = layers.Add(name=f"block{i}_add2")([x, h])
    x = layers.LayerNormalization(name="ln")(x)
    outputs = layers.Dense(classes, name="head")(x[:, 0])
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def kvit():
    return keras_vit(registers=2)


def test_keras_vit_token_layers_and_default_layer(kvit):
    be = backend_for(kvit)
    info = be.layer_info("block1_add1")
    assert (info.layout, info.prefix, info.output_shape) == ("NTC", 3, (4, 4, 32))
    assert be.layer_info("patch_embed").layout == "NHWC"
    assert polyviz.api.default_layer(be) == "block1_ln1"


def test_keras_vit_gradcam_equals_the_token_grid_reference(kvit):
    import keras
    import tensorflow as tf

    x = _x((1, 32, 32, 3))
    probe = keras.Model(kvit.inputs, [kvit.get_layer("block1_ln1").output, kvit.output])
    with tf.GradientTape() as tape:
        a, out = probe(tf.constant(x))
        score = out[:, 1]
    g = tape.gradient(score, a)
    grid = lambda t: np.asarray(t)[:, 3:].reshape(1, 4, 4, -1)  # noqa: E731 - drop class + 2 registers
    reference = _gradcam(grid(a), grid(g))
    e = polyviz.explain(kvit, x, "gradcam", target=1, progress=False)
    assert e.layer == "block1_ln1"
    assert reference.max() > 0
    np.testing.assert_allclose(e.layer_attribution, reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_keras_vit_every_cam_gives_a_2d_map(kvit):
    _check_cams(kvit, _x((1, 32, 32, 3)), 32, None)


def test_keras_vit_token_layer_refuses_what_it_cannot_do_yet(kvit):
    with pytest.raises(LayerError, match="token sequence.*not supported there on Keras"):
        polyviz.explain(kvit, _x((1, 32, 32, 3)), "layer_integrated_gradients", target=1, layer="block1_ln1",
                        n_steps=4, progress=False)


def test_torch_every_cam_is_the_same_at_an_nhwc_layer_and_its_nchw_permute():
    """The same values held NHWC (``norm``) and NCHW (``back``, torchvision's Permute after it):
    every CAM method (gradient ones, Score-CAM's masked inputs, Ablation-CAM's channel scaling in
    the layer's own layout, Eigen-CAM) and the layer activations must agree at the two layers."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from torchvision.ops.misc import Permute

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model.add_module("to_nhwc", Permute([0, 2, 3, 1]))
    model.add_module("norm", nn.LayerNorm(6))
    model.add_module("back", Permute([0, 3, 1, 2]))
    model.add_module("act", nn.GELU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(6, 4))
    model.eval()
    x = _x((1, 3, 12, 10))  # not square: a swapped H and W would show
    acts = polyviz.activations(model, x, ["norm", "back"])
    assert acts["norm"].shape == (1, 6, 5, 6)
    np.testing.assert_array_equal(acts["norm"], acts["back"])
    for method, options in CAMS.items():
        if method == "cam":
            continue  # CAM needs the global pooling right before the classifier
        at_nhwc = polyviz.explain(model, x, method, target=2, layer="norm", progress=False, **options)
        at_nchw = polyviz.explain(model, x, method, target=2, layer="back", progress=False, **options)
        np.testing.assert_allclose(at_nhwc.attribution, at_nchw.attribution, rtol=1e-5, atol=1e-7, err_msg=method)
