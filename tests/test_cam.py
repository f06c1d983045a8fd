"""Class activation maps against real references: hand-computed closed forms, Captum,
pytorch-grad-cam, tf-keras-vis, and each other across frameworks. Never against polyviz's own output
(except the batching and cross-framework equivalences, which compare two polyviz paths)."""

import numpy as np
import pytest
from numpy_backend import NumpyBackend

import polyviz
import polyviz.models
from backends import SIZES, both_frameworks, build, have, px, rel, seeded_vgg16
from polyviz import registry
from polyviz.errors import LayerError
from polyviz.interpolation import resize
from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights, vgg_spec
from polyviz.registry import backend_class
from polyviz.testing import tiny_spec

CAMS = ["gradcam", "gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "guided_gradcam",
        "scorecam", "ablationcam", "eigencam"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def pearson(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    assert a.std() > 0 and b.std() > 0, "a constant map cannot be compared"
    return float(np.corrcoef(a, b)[0, 1])


def explain(model, x, method, **kw):
    kw.setdefault("progress", False)
    return polyviz.explain(model, x, method, layout="NHWC", **kw)


def gap_spec(input_shape=(8, 8, 3), filters=4, classes=3):
    """conv (fused ReLU) -> global average pooling -> dense: the network CAM was defined on."""
    return NetworkSpec(
        input_shape,
        (
            LayerSpec("conv2d", "conv1", {"filters": filters, "kernel_size": (3, 3), "strides": (1, 1),
                                          "padding": "same", "activation": "relu", "use_bias": True}),
            LayerSpec("global_avgpool", "gap"),
            LayerSpec("dense", "predictions", {"units": classes, "activation": None, "use_bias": True}),
        ),
    )


def small_vgg(input_shape=(32, 32, 3), head="flatten", classes=10):
    """A narrow VGG-style net: the last conv (block3_conv2) is 8x8x16."""
    return vgg_spec([[8], [16], [16, 16]], input_shape=input_shape, dense=(32,), classes=classes, head=head)


def images(n, shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def count_masked_passes(monkeypatch) -> list[int]:
    """A list that receives the number of masks of every masked-scores call the numpy backend makes."""
    calls: list[int] = []
    original = NumpyBackend._masked_scores

    def counting(self, x, masks, baseline, sample_index, objective):
        calls.append(len(masks))
        return original(self, x, masks, baseline, sample_index, objective)

    monkeypatch.setattr(NumpyBackend, "_masked_scores", counting)
    return calls


def conv_same_relu(x, kernel, bias):
    """3x3 'same' convolution + ReLU, by hand (x (N,H,W,Cin), kernel (3,3,Cin,Cout))."""
    n, h, w, _ = x.shape
    pad = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwi,io->nhwo", pad[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
    return np.maximum(out + bias, 0.0)


# --------------------------------------------------------------------------------------------
# closed forms (every backend)
# --------------------------------------------------------------------------------------------


def test_closed_form_on_conv_gap_dense(bk):
    spec = gap_spec()
    weights = random_weights(spec, 3)
    weights["conv1"]["bias"] = np.linspace(-0.1, 0.2, 4).astype(np.float32)
    model, names = backend_class(bk).build(spec, weights)
    x = images(2, spec.input_shape, seed=1)
    t = np.array([0, 2])
    acts = conv_same_relu(x, weights["conv1"]["kernel"], weights["conv1"]["bias"])  # (N, 8, 8, 4)
    w = weights["predictions"]["kernel"][:, t].T.astype(np.float64)  # (N, C)
    hw = acts.shape[1] * acts.shape[2]
    # dS/dA_c = w_c / (h w) at every position: Grad-CAM = ReLU(sum_c w_c / (hw) A_c)
    grad_cam = np.maximum(np.einsum("nhwc,nc->nhw", acts, w / hw), 0)
    layer = names["conv1"]
    for method, expected in [
        ("gradcam", grad_cam),
        ("hirescam", grad_cam),  # the gradient is constant over positions
        ("xgradcam", grad_cam),  # sum(A g) / sum(A) = g for a constant g
        ("layercam", np.einsum("nhwc,nc->nhw", acts, np.maximum(w, 0) / hw)),
        ("cam", np.einsum("nhwc,nc->nhw", acts, w)),  # raw and signed
    ]:
        e = explain(model, x, method, target=t, layer=layer)
        assert e.layer_attribution.shape == (2, 8, 8)
        np.testing.assert_allclose(e.layer_attribution, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=method)
        np.testing.assert_allclose(e.attribution, resize(expected, (8, 8)), rtol=1e-4,
                                   atol=1e-6 * np.abs(expected).max(), err_msg=method)
    # CAM finds the final dense layer itself, and the default layer is the one feeding the GAP
    e = explain(model, x, "cam", target=t)
    assert e.layer == layer
    np.testing.assert_allclose(e.layer_attribution, np.einsum("nhwc,nc->nhw", acts, w), rtol=1e-4, atol=1e-6)
    # Grad-CAM++ closed form with g = w / hw constant over positions:
    # alpha = 1 / (2 + sum(A) g), weight = sum_ij alpha ReLU(g)
    g = (w / hw)[:, None, None, :]
    sum_a = acts.sum(axis=(1, 2), keepdims=True)
    alpha = np.where(g != 0, 1.0 / (2.0 + sum_a * g), 0.0)
    weights_pp = hw * (alpha * np.maximum(g, 0))[:, 0, 0, :]
    expected_pp = np.maximum(np.einsum("nhwc,nc->nhw", acts, weights_pp), 0)
    e = explain(model, x, "gradcam_plus_plus", target=t, layer=layer)
    np.testing.assert_allclose(e.layer_attribution, expected_pp, rtol=1e-4, atol=1e-6 * expected_pp.max())


def test_upsampling_is_the_polyviz_definition(bk):
    model, names = build(bk, tiny_spec())
    x = images(2, (12, 12, 3))
    for mode in ("bilinear", "nearest"):
        e = explain(model, x, "gradcam", target=1, layer=names["relu2"], upsample=mode)
        np.testing.assert_allclose(e.attribution, resize(e.layer_attribution, (12, 12), mode), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# batching (every backend)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CAMS)
def test_batching_is_invisible(bk, method):
    model, names = build(bk, tiny_spec())
    x = images(4, (12, 12, 3), seed=2)
    targets = np.array([0, 3, 1, 4])
    layer = names["relu2"]
    whole = explain(model, x, method, target=targets, layer=layer)
    assert whole.layer_attribution.shape == (4, 6, 6)
    assert np.abs(whole.layer_attribution).max() > 0, "degenerate test input"
    for i in range(4):
        one = explain(model, x[i : i + 1], method, target=int(targets[i]), layer=layer)
        np.testing.assert_allclose(one.attribution[0], whole.attribution[i], rtol=1e-4, atol=1e-6, err_msg=f"sample {i}")
        np.testing.assert_allclose(one.layer_attribution[0], whole.layer_attribution[i], rtol=1e-4, atol=1e-6)
    for bs in (1, 3):
        e = explain(model, x, method, target=targets, layer=layer, batch_size=bs)
        np.testing.assert_allclose(e.attribution, whole.attribution, rtol=1e-4, atol=1e-6, err_msg=f"batch_size={bs}")


def test_scorecam_evaluates_identical_masks_once(monkeypatch):
    """Constant channels (all zero after ReLU, or constant) share one mask; duplicated channels too."""
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    spec = gap_spec(filters=6)
    weights = random_weights(spec, 0)
    k = weights["conv1"]["kernel"]
    k[..., 1] = 0.0  # channel 1: relu(bias) constant
    k[..., 2] = 2.0 * k[..., 0]  # channel 2 = 2 * channel 0 before the bias...
    weights["conv1"]["bias"] = np.array([0, 0.5, 0, -100, 0, 0], np.float32)  # ...and 3 all zero
    model, _ = NumpyBackend.build(spec, weights)
    calls = count_masked_passes(monkeypatch)
    x = images(1, spec.input_shape)
    e = explain(model, x, "scorecam", target=1, layer="conv1")
    # 6 channels: 0 and 2 give one mask, 1 and 3 (constant) the zero mask, 4 and 5 their own
    assert sum(calls) == e.options["forward_passes"] == 4
    # and the weights are the class probabilities of the masked inputs, computed here by hand
    acts = conv_same_relu(x, weights["conv1"]["kernel"], weights["conv1"]["bias"])[0]
    net = NumpyBackend(model)
    probs = []
    for c in range(6):
        up = resize(acts[..., c], (8, 8))
        span = up.max() - up.min()
        m = (up - up.min()) / span if span > 0 else np.zeros_like(up)
        out = net.forward(x * m[None, :, :, None])[0].astype(np.float64)
        probs.append(np.exp(out - out.max())[1] / np.exp(out - out.max()).sum())
    expected = np.maximum(np.einsum("hwc,c->hw", acts, np.array(probs)), 0)
    np.testing.assert_allclose(e.layer_attribution[0], expected, rtol=1e-4, atol=1e-6)


def test_ablationcam_matches_hand_computed_drops(monkeypatch):
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    spec = gap_spec()
    weights = random_weights(spec, 5)
    model, _ = NumpyBackend.build(spec, weights)
    x = images(1, spec.input_shape, seed=4)
    acts = conv_same_relu(x, weights["conv1"]["kernel"], weights["conv1"].get("bias", np.zeros(4)))[0]
    w = weights["predictions"]["kernel"][:, 2].astype(np.float64)
    b = float(weights["predictions"].get("bias", np.zeros(3))[2])
    pooled = acts.mean(axis=(0, 1))
    s = pooled @ w + b
    drops = np.array([pooled[c] * w[c] for c in range(4)])  # zeroing channel c removes its term
    expected = np.maximum(np.einsum("hwc,c->hw", acts, drops / s), 0)
    e = explain(model, x, "ablationcam", target=2, layer="conv1")
    np.testing.assert_allclose(e.layer_attribution[0], expected, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------
# errors (every backend)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*CAMS, "cam"])
def test_dense_layer_is_a_layer_error_naming_it(bk, method):
    model, names = build(bk, tiny_spec())
    with pytest.raises(LayerError, match=rf"layer '{names['fc1']}' has output shape \(8,\), not a spatial map"):
        explain(model, images(1, (12, 12, 3)), method, target=0, layer=names["fc1"])


def test_bad_options(bk):
    model, names = build(bk, tiny_spec())
    x = images(1, (12, 12, 3))
    with pytest.raises(polyviz.errors.InputError, match="upsample"):
        explain(model, x, "gradcam", target=0, upsample="bicubic")
    with pytest.raises(polyviz.errors.InputError, match="score"):
        explain(model, x, "scorecam", target=0, score="prob")
    with pytest.raises(LayerError, match=f"fc_layer '{names['fc1']}'"):  # not a GAP + dense network
        explain(model, x, "cam", target=0, layer=names["relu2"], fc_layer=names["fc1"])


# --------------------------------------------------------------------------------------------
# Captum (torch)
# --------------------------------------------------------------------------------------------


def torch_small(head="flatten", input_shape=(32, 32, 3)):
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, names = build("torch", small_vgg(input_shape, head=head))
    return model.eval(), names


def module(model, name):
    return dict(model.named_modules())[name]


def test_captum_layer_gradcam_and_guided_gradcam():
    pytest.importorskip("captum")
    import torch
    from captum.attr import GuidedGradCam, LayerGradCam

    model, names = torch_small()
    x = images(2, (32, 32, 3), seed=3)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    t = [1, 7]
    layer = names["block3_conv2"]
    e = explain(model, x, "gradcam", target=t, layer=layer)
    ref = LayerGradCam(model, module(model, layer)).attribute(xt, target=t, relu_attributions=True)
    ref = ref.detach().numpy()[:, 0]
    assert np.abs(ref).max() > 0
    assert rel(e.layer_attribution, ref) <= 1e-4
    for mode in ("nearest", "bilinear"):
        g = explain(model, x, "guided_gradcam", target=t, layer=layer, upsample=mode)
        ref = GuidedGradCam(model, module(model, layer)).attribute(xt, target=t, interpolate_mode=mode)
        ref = ref.detach().numpy().transpose(0, 2, 3, 1)
        assert g.attribution.shape == (2, 32, 32, 3)  # caller's layout is NHWC here
        assert rel(g.attribution, ref) <= 1e-4, mode


# --------------------------------------------------------------------------------------------
# pytorch-grad-cam (torch)
# --------------------------------------------------------------------------------------------


def pgc_compare(ours_layer_map, ref, size):
    """pytorch-grad-cam's post-processing (ReLU, min-max, cv2.resize) applied to ours."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    mine = scale_cam_image(np.maximum(ours_layer_map, 0), size)
    return pearson(mine, ref)


def _pgc_run(cls, model, layer_module, xt, targets, **kw):
    with cls(model=model, target_layers=[layer_module], **kw) as c:
        return c(input_tensor=xt, targets=targets)


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        ("gradcam", "GradCAM", {}),
        ("gradcam_plus_plus", "GradCAMPlusPlus", {"eps": 1e-6}),
        ("xgradcam", "XGradCAM", {}),
        ("hirescam", "HiResCAM", {}),
        ("layercam", "LayerCAM", {}),
        ("eigencam", "EigenCAM", {}),
        ("ablationcam", "AblationCAM", {}),
    ],
)
def test_pytorch_grad_cam(ours, theirs, options, monkeypatch):
    pgc = pytest.importorskip("pytorch_grad_cam")
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if ours == "eigencam":  # its sign-corrected projection: LAPACK's sign alone is arbitrary
        from pytorch_grad_cam import eigen_cam
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

        monkeypatch.setattr(eigen_cam, "get_2d_projection", get_2d_projection_with_sign_correction)
    model, names = torch_small()
    layer = names["block3_conv2"]
    for seed, target in [(0, 3), (1, 8)]:
        x = images(1, (32, 32, 3), seed=seed)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        e = explain(model, x, ours, target=target, layer=layer, **options)
        ref = _pgc_run(getattr(pgc, theirs), model, module(model, layer), xt, [ClassifierOutputTarget(target)])
        assert pearson(ref, ref) > 0.99  # not constant
        assert pgc_compare(e.layer_attribution, ref, (32, 32)) >= 0.999, (ours, seed)


def test_pytorch_grad_cam_scorecam(monkeypatch):
    """pytorch-grad-cam's ScoreCAM with its mask upsampling set to polyviz's definition
    (UpsamplingBilinear2d is align_corners=True there) and the target log p(class): its softmax
    over channels of log p gives weights proportional to p, polyviz's ``score="softmax"``."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    import torch
    import torch.nn.functional as F

    class HalfPixelBilinear:
        def __init__(self, size):
            self.size = size

        def __call__(self, t):
            return F.interpolate(t, size=self.size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", HalfPixelBilinear)
    model, names = torch_small()
    layer = names["block3_conv2"]
    x = images(1, (32, 32, 3), seed=5)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    target = 4
    e = explain(model, x, "scorecam", target=target, layer=layer)
    ref = _pgc_run(pgc.ScoreCAM, model, module(model, layer), xt,
                   [lambda o: torch.log_softmax(o, dim=-1)[..., target]])
    assert pgc_compare(e.layer_attribution, ref, (32, 32)) >= 0.999


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ours, theirs", [("gradcam", "GradCAM"), ("gradcam_plus_plus", "GradCAMPlusPlus"),
                                          ("layercam", "LayerCAM"), ("eigencam", "EigenCAM")])
def test_pytorch_grad_cam_seeded_vgg16(ours, theirs, size, monkeypatch):
    """pytorch-grad-cam on seeded VGG16 at features.29: "mini" by default, 224 px in the slow set."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not have("torch"):
        pytest.skip("the torch backend is not available")
    if ours == "eigencam":
        from pytorch_grad_cam import eigen_cam
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

        monkeypatch.setattr(eigen_cam, "get_2d_projection", get_2d_projection_with_sign_correction)
    model = seeded_vgg16(size, "torch")
    x = images(1, (px(size), px(size), 3), seed=0)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    opts = {"eps": 1e-6} if ours == "gradcam_plus_plus" else {}
    e = explain(model, x, ours, layer="features.29", **opts)
    target = int(e.target[0])
    ref = _pgc_run(getattr(pgc, theirs), model, model.features[29], xt, [ClassifierOutputTarget(target)])
    assert pgc_compare(e.layer_attribution, ref, (px(size), px(size))) >= 0.999


# --------------------------------------------------------------------------------------------
# tf-keras-vis (keras)
# --------------------------------------------------------------------------------------------


def keras_small():
    if not have("keras"):
        pytest.skip("the keras backend is not available")
    pytest.importorskip("tf_keras_vis")
    return build("keras", small_vgg())


def _tkv_normalize(cam):
    from tf_keras_vis.utils import normalize

    return normalize(np.maximum(cam, 0))


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        ("gradcam", "gradcam.Gradcam", {}),
        ("gradcam_plus_plus", "gradcam_plus_plus.GradcamPlusPlus", {"normalize_alphas": True}),
        ("layercam", "layercam.Layercam", {}),
        ("scorecam", "scorecam.Scorecam", {}),
    ],
)
def test_tf_keras_vis(ours, theirs, options, monkeypatch):
    """At the layer resolution (expand_cam=False) with tf-keras-vis' own normalisation. For
    Score-CAM its mask upsampling (scipy zoom, corner-aligned) is set to polyviz's definition."""
    import importlib

    model, names = keras_small()
    module_name, cls_name = theirs.split(".")
    mod = importlib.import_module(f"tf_keras_vis.{module_name}")
    if ours == "scorecam":

        def polyviz_zoom(arr, factor, order=1, mode="nearest"):
            h, w = round(arr.shape[1] * factor[1]), round(arr.shape[2] * factor[2])
            return np.moveaxis(resize(np.moveaxis(arr, -1, 1), (h, w)), 1, -1)

        monkeypatch.setattr(mod, "zoom", polyviz_zoom)
    from tf_keras_vis.utils.scores import CategoricalScore

    layer = names["block3_conv2"]
    x = images(2, (32, 32, 3), seed=6)
    targets = [2, 9]
    e = explain(model, x, ours, target=targets, layer=layer, **options)
    viz = getattr(mod, cls_name)(model, clone=True)
    ref = viz(CategoricalScore(targets), x, penultimate_layer=layer, expand_cam=False)
    ref = np.asarray(ref)
    for i in range(2):
        assert pearson(_tkv_normalize(e.layer_attribution[i : i + 1]), ref[i : i + 1]) >= 0.999, i


# --------------------------------------------------------------------------------------------
# across frameworks
# --------------------------------------------------------------------------------------------


@both_frameworks
@pytest.mark.parametrize("method", [*CAMS, "cam"])
def test_same_maps_in_torch_and_keras(method):
    if not (have("torch") and have("keras")):
        pytest.skip("needs both backends")
    from polyviz.models import convert

    if method == "cam":  # torch builds global pooling as AdaptiveAvgPool2d(1): build both from one spec
        spec = vgg_spec([[8], [16], [16, 16]], input_shape=(32, 32, 3), dense=(), classes=10, head="gap")
        tmodel, names = build("torch", spec)
        kmodel, knames = build("keras", spec)
        tlayer, klayer = names["block3_conv2"], knames["block3_conv2"]
    else:
        tmodel, names = torch_small()
        conv = convert(tmodel, to="keras")
        kmodel = conv.model
        tlayer = names["block3_conv2"]
        klayer = conv.layer_map[tlayer]
    x = images(2, (32, 32, 3), seed=7)
    t = [1, 5]
    a = explain(tmodel, x, method, target=t, layer=tlayer)
    b = explain(kmodel, x, method, target=t, layer=klayer)
    assert a.backend == "torch" and b.backend == "keras"
    assert np.abs(a.layer_attribution).max() > 0
    assert rel(b.layer_attribution, a.layer_attribution) <= 1e-3
    assert rel(b.attribution, a.attribution) <= 1e-3

