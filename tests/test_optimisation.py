"""Images made by optimisation: exact adjoints of every transformation and parameterisation, exact
penalty gradients (finite differences), the loop's batching and options, torch against Keras on the
same weights, and proof on the trained demo network that each technique does what it claims."""

import numpy as np
import pytest
from numpy_backend import NumpyBackend

import polyviz
from backends import INSTALLED, SIZES, both_frameworks, keras_float64, rel, seeded_vgg16
from polyviz import registry
from polyviz.errors import InputError, LayerError, TargetError
from polyviz.models.spec import random_weights, vgg_spec
from polyviz.optimisation import regularisers as R
from polyviz.optimisation.params import FourierParam, PixelParam
from polyviz.optimisation.transforms import random_affine, upsample
from polyviz.registry import backend_class

RNG = np.random.default_rng(123)


def inner(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


# --------------------------------------------------------------------------------------------
# adjoints: <A x, y> = <x, A^T y>
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
@pytest.mark.parametrize(
    "kind",
    [dict(jitter=3), dict(scale=(0.8, 1.3)), dict(rotate=25.0), dict(crop=0.3),
     dict(jitter=2, scale=(0.9, 1.1), rotate=10.0, crop=0.2)],
)
def test_affine_transform_adjoint(size, kind):
    rng = np.random.default_rng(0)
    t = random_affine(rng, 3, size, **kind)
    x = rng.standard_normal((3, *size, 3)).astype(np.float32)
    y = rng.standard_normal((3, *size, 3)).astype(np.float32)
    lhs, rhs = inner(t.apply(x), y), inner(x, t.adjoint(y))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + np.linalg.norm(x) * np.linalg.norm(y) * 1e-2)
    # and the adjoint is the transpose of the explicit matrix (columns = images of unit vectors)
    if kind == dict(rotate=25.0) and size == (15, 22):
        n = size[0] * size[1]
        cols = np.eye(n, dtype=np.float32).reshape(n, *size, 1)
        mats = [np.stack([random_affine(np.random.default_rng(0), 1, size, **kind).apply(c[None])[0].ravel() for c in cols], 1)]
        g = rng.standard_normal((1, *size, 1)).astype(np.float32)
        t1 = random_affine(np.random.default_rng(0), 1, size, **kind)
        np.testing.assert_allclose(t1.adjoint(g).ravel(), mats[0].T @ g.ravel(), rtol=1e-5, atol=1e-5)


def test_integer_jitter_is_an_exact_shift():
    rng = np.random.default_rng(1)
    x = rng.random((2, 10, 12, 3)).astype(np.float32)
    draw = np.random.default_rng(5)
    t = random_affine(draw, 2, (10, 12), jitter=2)
    shift = np.random.default_rng(5).integers(-2, 3, (2, 2))
    for i, (dy, dx) in enumerate(shift):
        # interior pixels: the sample at (r, c) is the source at (r + dy, c + dx)
        np.testing.assert_array_equal(t.apply(x)[i, 2:-2, 2:-2], x[i, 2 + dy : 8 + dy, 2 + dx : 10 + dx])


@pytest.mark.parametrize("sizes", [((5, 7), (16, 16)), ((8, 8), (11, 13))])
def test_upsample_adjoint_and_constants(sizes):
    up = upsample(2, *sizes)
    x = RNG.standard_normal((2, *sizes[0], 3)).astype(np.float32)
    y = RNG.standard_normal((2, *sizes[1], 3)).astype(np.float32)
    assert inner(up.apply(x), y) == pytest.approx(inner(x, up.adjoint(y)), rel=1e-5)
    np.testing.assert_allclose(up.apply(np.full((2, *sizes[0], 3), 0.7, np.float32)), 0.7, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 15, 20, 3), (2, 9, 8, 1)])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_fourier_linear_adjoint(shape, decorrelate):
    p = FourierParam(shape, decorrelate=decorrelate)
    z = RNG.standard_normal(p.param_shape)
    y = RNG.standard_normal(shape)
    lhs = inner(p.linear(z), y)
    rhs = inner(z, p._linear_adjoint(y))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_fourier_backward_is_the_jacobian_transpose():
    shape = (1, 8, 9, 3)
    p = FourierParam(shape)
    z = (0.3 * RNG.standard_normal(p.param_shape)).astype(np.float32)
    g = RNG.standard_normal(shape)
    dz = RNG.standard_normal(p.param_shape)
    h = 1e-3
    fd = (p.image((z + h * dz).astype(np.float64)).astype(np.float64) - p.image((z - h * dz).astype(np.float64))) / (2 * h)
    assert inner(fd, g) == pytest.approx(inner(dz, p.backward(z, g)), rel=2e-2)


def test_fourier_spectrum_is_one_over_f_and_colours_decorrelated():
    p = FourierParam((1, 32, 32, 3))
    assert p.scale[0, 0] == pytest.approx(32 * 32)  # max(f, 1/32) at DC
    assert p.scale[0, 4] == pytest.approx(32 / (4 / 32))
    # colour matrix: Lucid's sqrt-covariance normalised to unit max column norm
    assert np.linalg.norm(p.color, axis=0).max() == pytest.approx(1.0)
    x = p.image(p.init(np.random.default_rng(0)))
    assert x.shape == (1, 32, 32, 3) and 0.3 < x.mean() < 0.7 and x.std() < 0.2


def test_pixel_param_is_identity_and_projects():
    p = PixelParam((1, 4, 4, 3))
    z = np.linspace(-1, 2, 48, dtype=np.float32).reshape(1, 4, 4, 3)
    assert p.backward(z, z) is z
    assert p.project(z.copy()).min() == 0 and p.project(z.copy()).max() == 1


# --------------------------------------------------------------------------------------------
# penalties: exact gradients
# --------------------------------------------------------------------------------------------


def finite_difference(fn, x, direction, h=1e-6):
    return (fn(x + h * direction)[0].sum() - fn(x - h * direction)[0].sum()) / (2 * h)


@pytest.mark.parametrize(
    "fn",
    [R.l2, lambda a: R.total_variation(a, 2.0), lambda a: R.total_variation(a, 1.0),
     lambda a: R.total_variation(a, 1.5), lambda a: R.alpha_norm(a, 6.0), R.l1],
    ids=["l2", "tv2", "tv1", "tv1.5", "alpha6", "l1"],
)
def test_penalty_gradients_match_finite_differences(fn):
    x = RNG.random((2, 7, 9, 3))
    d = RNG.standard_normal(x.shape)
    _, grad = fn(x)
    assert inner(grad, d) == pytest.approx(finite_difference(fn, x, d), rel=1e-5)


def test_total_variation_closed_form():
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 1.0  # one bright pixel: its right and lower differences, and those of its left/upper neighbours
    value, _ = R.total_variation(x, 2.0)
    assert value[0] == pytest.approx(1 + 1 + 1 + 1)
    assert R.total_variation(np.full((1, 4, 4, 3), 0.3), 2.0)[0][0] == 0


def test_yosinski_edits():
    x = RNG.random((1, 12, 12, 3)).astype(np.float32)
    blurred = R.gaussian_blur(x, 1.0)
    assert blurred.std() < x.std() and abs(blurred.mean() - x.mean()) < 0.02
    np.testing.assert_allclose(R.gaussian_blur(np.full_like(x, 0.4), 1.0), 0.4, rtol=1e-6)
    clipped = R.clip_small_norm(x, 50)
    norm = np.linalg.norm(x - 0.5, axis=-1)
    assert np.all(clipped[norm < np.median(norm)] == 0.5) and np.all(clipped[norm > np.median(norm)] == x[norm > np.median(norm)])
    g = RNG.standard_normal(x.shape).astype(np.float32)
    clipped = R.clip_small_contribution(x, g, 30)
    assert 0.25 < np.mean(np.all(clipped == 0.5, axis=-1)) < 0.35


# --------------------------------------------------------------------------------------------
# the loop on the reference backend: batching, options, errors
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    spec = vgg_spec([[4], [8]], input_shape=(16, 16, 3), dense=(16,), classes=6)
    model, _ = NumpyBackend.build(spec, random_weights(spec, 0))
    return model


def test_one_backend_call_per_step_for_all_channels(small, monkeypatch):
    calls = []
    original = NumpyBackend._input_gradient

    def counted(self, x, objective, rule):
        calls.append(len(x))
        return original(self, x, objective, rule)

    monkeypatch.setattr(NumpyBackend, "_input_gradient", counted)
    r = polyviz.visualize_filter(small, "block2_conv1", [0, 1, 3, 5], steps=6, progress=False)
    assert calls == [4] * 7  # 6 steps + the final values, each one call for the 4 channels
    calls.clear()
    r2 = polyviz.visualize_filter(small, "block2_conv1", [0, 1, 3, 5], steps=6, progress=False, batch_size=3)
    assert calls == [3, 1] * 7
    np.testing.assert_allclose(r2.images, r.images, rtol=1e-5, atol=1e-6)  # chunking changes nothing
    assert r.images.shape == (4, 16, 16, 3) and r.history.shape == (6, 4)
    assert r.images.dtype == np.float32 and 0 <= r.images.min() and r.images.max() <= 1


def test_callback_seed_and_options(small):
    seen = []
    r = polyviz.class_model(small, [1, 2], steps=5, progress=False, callback=lambda step, im: seen.append((step, im.shape)))
    assert seen == [(i, (2, 16, 16, 3)) for i in range(5)]
    r2 = polyviz.class_model(small, [1, 2], steps=5, progress=False)
    np.testing.assert_array_equal(r.images, r2.images)  # same seed, same run
    r3 = polyviz.class_model(small, [1, 2], steps=5, progress=False, seed=1)
    assert not np.allclose(r.images, r3.images)
    stopped = polyviz.class_model(small, 0, steps=50, progress=False, callback=lambda step, im: step < 2)
    assert len(stopped.history) == 3
    assert r.options["size"] == (16, 16) and r.options["target"] == [1, 2]
    pix = polyviz.visualize_filter(small, "block1_conv1", 0, steps=4, param="pixel", progress=False,
                                   clip_norm=10, clip_contribution=10, l1=0.1, l2=0.1, tv=0.1)
    assert pix.options["blur_every"] == 4 and pix.images.shape == (1, 16, 16, 3)
    plain = polyviz.visualize_filter(small, "fc1", 3, steps=4, optimizer="ascent", transforms=False, progress=False)
    assert plain.options["jitter"] == 0 and plain.history.shape == (4, 1)


def test_defaults_adapt_to_depth_and_size(small):
    shallow = polyviz.visualize_filter(small, "block1_conv1", 0, steps=1, progress=False).options
    deep = polyviz.class_model(small, 0, steps=1, progress=False).options
    assert shallow["layer_stride"] == 1 and shallow["jitter"] == 1
    assert shallow["layer_depth"] == 0.25 and shallow["rotate"] == 2.5  # 1 of 4 weighted layers
    assert deep["jitter"] == 16 // 16 and deep["rotate"] == 10 and deep["scale"] == (0.9, 1.1)
    assert polyviz.visualize_filter(small, "block2_conv1", 0, steps=1, progress=False).options["layer_stride"] == 2


def test_preprocess_is_applied_inside_the_objective(small):
    # the same run with the model's preprocessing declared: images stay in [0, 1], the backend
    # normalises them; a preset name is resolved for [0, 1] images
    r = polyviz.class_model(small, 0, steps=3, progress=False, preprocess="caffe")
    assert r.options["preprocess"]["scale"] == 255.0 and r.images.max() <= 1
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype(np.float32)
    pre = polyviz.Preprocess(mean=(0.5,), std=(0.25,))
    be = registry.backend_for(small, preprocess=pre)
    direct = be.input_gradient(x, polyviz.ClassScore(0)).values
    res = polyviz.adversarial(small, x, eps=0.01, preprocess=pre, progress=False)
    logits = NumpyBackend(small).forward(pre.apply(x))
    np.testing.assert_allclose(direct, logits[:, 0], rtol=1e-5)
    assert res.original_labels[0] == logits.argmax()


def test_errors(small):
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype(np.float32)
    with pytest.raises(InputError, match="param"):
        polyviz.visualize_filter(small, "block1_conv1", 0, steps=2, param="wavelet", progress=False)
    with pytest.raises(InputError, match="param='pixel'"):
        polyviz.visualize_filter(small, "block1_conv1", 0, steps=2, blur_every=2, progress=False)
    with pytest.raises(TargetError, match="channel"):
        polyviz.visualize_filter(small, "block1_conv1", 9, steps=2, progress=False)
    with pytest.raises(TargetError, match="channel"):
        polyviz.visualize_filter(small, "block1_conv1", [], steps=2, progress=False)
    with pytest.raises(LayerError, match="block1_conv1"):
        polyviz.visualize_filter(small, "block1_conv", 0, steps=2, progress=False)
    with pytest.raises(InputError, match="steps"):
        polyviz.class_model(small, 0, steps=0, progress=False)
    with pytest.raises(InputError, match="size"):
        polyviz.class_model(small, 0, size=32, progress=False)
    with pytest.raises(TargetError, match="target"):
        polyviz.class_model(small, 6, steps=2, progress=False)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        polyviz.deep_dream(small, x * 255, "block1_conv1", progress=False)
    with pytest.raises(InputError, match="optimizer"):
        polyviz.class_model(small, 0, optimizer="lbfgs", progress=False)
    with pytest.raises(TargetError, match="target"):
        polyviz.adversarial(small, x, target=7, progress=False)
    with pytest.raises(InputError, match="eps"):
        polyviz.adversarial(small, x, eps=-1, progress=False)


def test_adversarial_definition(small):
    """One FGSM step is x + eps * sign(grad CE), clipped: checked against the backend's own gradient."""
    x = np.random.default_rng(3).random((2, 16, 16, 3)).astype(np.float32) * 0.8 + 0.1
    be = NumpyBackend(small)
    logits = be.forward(x)
    y = logits.argmax(1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # CE gradient by finite differences along a random direction equals that of the OutputWeighting used
    w = p - np.eye(6)[y]
    grad = be.input_gradient(x, polyviz.OutputWeighting(w)).gradient
    d = np.random.default_rng(4).standard_normal(x.shape).astype(np.float64)

    def ce(a):
        z = small.net.output(a).astype(np.float64)  # the float64 reference network
        z = z - z.max(1, keepdims=True)
        return -(z[np.arange(2), y] - np.log(np.exp(z).sum(1))).sum()

    h = 1e-5
    assert (ce(x + h * d) - ce(x - h * d)) / (2 * h) == pytest.approx(inner(grad, d), rel=1e-3)
    r = polyviz.adversarial(small, x, eps=0.02, progress=False)
    np.testing.assert_allclose(r.images, np.clip(x + 0.02 * np.sign(grad), 0, 1), atol=1e-6)
    it = polyviz.adversarial(small, x, eps=0.02, steps=4, progress=False)
    assert np.abs(it.images - x).max() <= 0.02 + 1e-6 and it.history.shape == (4, 2)
    tg = polyviz.adversarial(small, x, target=[1, 2], eps=0.1, steps=5, progress=False)
    assert (tg.values < tg.history[0]).all()  # the target's cross-entropy fell


# --------------------------------------------------------------------------------------------
# torch against Keras: the same seed gives the same start and the same first steps
# --------------------------------------------------------------------------------------------


@both_frameworks
def test_same_seed_same_trajectory_in_torch_and_keras():
    """A VGG16-pattern network (narrow) built in torch and converted to Keras with polyviz.models.convert:
    the same seed gives the same start, and the first steps of every technique agree."""
    spec = vgg_spec([[8, 8], [16, 16], [16, 16, 16]], input_shape=(32, 32, 3), dense=(32,), classes=6)
    tmodel, tnames = backend_class("torch").build(spec, random_weights(spec, 7))
    converted = polyviz.models.convert(tmodel, "keras")
    models = {"torch": (tmodel, tnames), "keras": (converted.model, {k: converted.layer_map[v] for k, v in tnames.items()
                                                                    if v in converted.layer_map})}
    runs = {}
    for name, (model, names) in models.items():
        starts = []
        kw = dict(steps=3, size=32, progress=False, seed=11)
        vf = polyviz.visualize_filter(model, names["block2_conv2"], [0, 5, 9], **kw,
                                      callback=lambda s, im, starts=starts: starts.append(im) if s == 0 else None)
        cm = polyviz.class_model(model, [0, 3], **kw)
        x = np.random.default_rng(2).random((2, 32, 32, 3)).astype(np.float32)
        native = x.transpose(0, 3, 1, 2) if name == "torch" else x
        dd = polyviz.deep_dream(model, native, names["block3_conv1"], octaves=2, steps=2, progress=False)
        inv = polyviz.invert(model, native, names["block2_conv1"], steps=3, progress=False)
        runs[name] = (vf, cm, dd, inv, starts[0])
    (vt, ct, dt, it, st), (vk, ck, dk, ik, sk) = runs["torch"], runs["keras"]
    np.testing.assert_allclose(st, sk, rtol=1e-4, atol=1e-6)  # first step's images
    for a, b in ((vt, vk), (ct, ck), (dt, dk), (it, ik)):
        assert rel(a.history, b.history) < 1e-4, a.method
        assert rel(a.images, b.images) < 1e-4, a.method
    assert dt.native.shape == (2, 3, 32, 32) and dk.native.shape == (2, 32, 32, 3)


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_same_seed_same_trajectory_on_converted_vgg16_float64(size, monkeypatch):
    """Seeded VGG16 in torch (float64) and its convolutional trunk converted to Keras with
    polyviz.models.convert (float64): visualize_filter on block5_conv3 (features.29, after its
    ReLU) starts from bit-identical images in both frameworks and agrees to 1e-5 after 3 steps
    (measured: identical to the last float32 bit). float64 removes the
    float32 ReLU and max-pool near-ties that otherwise separate the frameworks at VGG16 depth (see
    tests/test_crossframework_vgg16.py). The dense head is left out of the conversion: a filter's
    objective does not reach it, and a Keras VGG16 head fixes the input at 224 px, where this
    would take a minute; at 64 px it takes seconds. "mini" (VGG16's layer pattern, narrow) by
    default, VGG16's own widths in the slow set."""
    import torch

    from polyviz.optimisation import loop

    tmodel = seeded_vgg16(size, "torch")
    channels = [0, 7, 300] if size == "full" else [0, 7, 30]
    trunk = torch.nn.Sequential(*tmodel.features, torch.nn.Flatten())  # module names "0".."30" as in features
    with keras_float64():
        converted = polyviz.models.convert(trunk, "keras", input_shape=(64, 64, 3))
    tmodel = tmodel.double()
    kmodel, klayer = converted.model, converted.layer_map["29"]  # Keras' conv has the ReLU built in
    assert kmodel.compute_dtype == "float64"
    # the converted weights are VGG16's: torch's OIHW kernel is Keras' HWIO kernel, transposed
    np.testing.assert_array_equal(kmodel.get_layer(klayer).kernel.numpy(),
                                  tmodel.features[28].weight.detach().numpy().transpose(2, 3, 1, 0))
    seen: dict[str, list[np.ndarray]] = {}
    real = loop.objective_gradient

    def spy(backend, x, *args, **kwargs):  # the images each framework is asked about, per step
        seen.setdefault(backend.name, []).append(np.array(x))
        return real(backend, x, *args, **kwargs)

    monkeypatch.setattr(loop, "objective_gradient", spy)
    # the default scale and rotation grow with the layer's depth among the weighted layers, which
    # differs between VGG16 (13 of 16) and its trunk (13 of 13): set them
    kw = dict(steps=3, size=64, seed=0, scale=(0.9, 1.1), rotate=10.0, progress=False)
    t = polyviz.visualize_filter(tmodel, "features.29", channels, **kw)
    k = polyviz.visualize_filter(kmodel, klayer, channels, **kw)
    assert len(seen["torch"]) == len(seen["keras"]) == 3
    np.testing.assert_array_equal(seen["torch"][0], seen["keras"][0])  # the same start (after the same transform)
    assert rel(seen["keras"][2], seen["torch"][2]) <= 1e-5  # the third step's input
    assert rel(k.history, t.history) <= 1e-5
    assert rel(k.images, t.images) <= 1e-5
    assert (t.history[0] > 0).all()  # no dead channel: every image had a gradient
    assert rel(t.images, seen["torch"][0]) > 1e-3  # and the steps moved the images


# --------------------------------------------------------------------------------------------
# proof on a network that has learned something: the trained demo model
# --------------------------------------------------------------------------------------------

FRAMEWORKS = [pytest.param(b, marks=pytest.mark.skipif(b not in INSTALLED, reason=f"{b} is not installed"))
              for b in ("torch", "keras")]


def _demo_available():
    try:
        from polyviz.models.demo import DEMO_WEIGHTS
    except ImportError:
        return False
    return DEMO_WEIGHTS.is_file()


needs_demo = pytest.mark.skipif(not _demo_available(), reason="the demo model's weights file is not there")


@pytest.fixture(scope="module", params=FRAMEWORKS)
def demo(request):
    """The trained demo network (the shipped weights) in one framework, its layer names, data."""
    from polyviz.datasets import shapes
    from polyviz.models.demo import demo_spec, load_weights

    model, names = backend_class(request.param).build(demo_spec(), load_weights())
    data = shapes(24, seed=5)
    x = data.images if request.param == "keras" else data.images.transpose(0, 3, 1, 2)
    return request.param, model, names, data, x


def _backend(model):
    return registry.backend_for(model)


@needs_demo
def test_filter_visualisation_activates_its_channel(demo):
    name, model, names, data, x = demo
    layer = names["block3_conv3"]
    be = _backend(model)
    acts = be.layer_activations(data.images, [layer])[layer].mean(axis=(1, 2)).mean(0)
    noise = np.random.default_rng(0).random((16, 64, 64, 3)).astype(np.float32)
    noise_act = be.layer_activations(noise, [layer])[layer].mean(axis=(1, 2)).mean(0)
    # trained channels: the four the shapes drive most among those they drive far more than noise does
    used = np.flatnonzero(acts > 4 * noise_act)
    channels = used[np.argsort(acts[used])[-4:]]
    r = polyviz.visualize_filter(model, layer, channels.tolist(), steps=128, size=64, progress=False)
    random_act = noise_act[channels]
    opt_act = be.layer_activations(r.images, [layer])[layer].mean(axis=(1, 2))[np.arange(4), channels]
    assert (opt_act > 10 * np.maximum(random_act, 1e-6)).all(), (opt_act, random_act)
    assert (opt_act > acts[channels]).all()  # and more than the shapes do on average
    h = r.history.mean(axis=1)
    quarters = [h[i * len(h) // 4 : (i + 1) * len(h) // 4].mean() for i in range(4)]
    assert all(a < b for a, b in zip(quarters, quarters[1:])), quarters  # rises, on average


@needs_demo
def test_class_models_are_classified_as_their_class(demo):
    name, model, names, data, x = demo
    r = polyviz.class_model(model, list(range(6)), steps=128, size=64, progress=False)
    logits = _backend(model).forward(r.images)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert (p.argmax(1) == np.arange(6)).all() and (p[np.arange(6), np.arange(6)] > 0.9).all(), p.round(3)
    h = r.history.mean(axis=1)
    assert h[-16:].mean() > h[:16].mean()


@needs_demo
def test_deep_dream_raises_the_layer_norm(demo):
    name, model, names, data, x = demo
    layer = names["block4_conv1"]
    r = polyviz.deep_dream(model, x[:3], layer, octaves=2, steps=8, progress=False)
    be = _backend(model)
    before = be.input_gradient(data.images[:3], polyviz.LayerNorm(layer)).values
    assert (r.values > 1.5 * before).all(), (before, r.values)


@needs_demo
def test_inversion_matches_the_representation(demo):
    name, model, names, data, x = demo
    layer = names["block2_conv2"]
    r = polyviz.invert(model, x[:2], layer, steps=100, progress=False)
    assert (r.values < 0.1 * r.history[0]).all(), (r.history[0], r.values)
    # closer to x's representation than the other real images are
    be = _backend(model)
    ref = be.layer_activations(data.images[:2], [layer])[layer]
    others = be.layer_activations(data.images[2:8], [layer])[layer]
    for i in range(2):
        assert r.values[i] < ((others - ref[i]) ** 2).reshape(6, -1).sum(1).min()


@needs_demo
def test_fgsm_flips_a_correct_prediction_at_small_eps(demo):
    name, model, names, data, x = demo
    be = _backend(model)
    correct = np.flatnonzero(be.forward(data.images).argmax(1) == data.labels)[:6]
    r = polyviz.adversarial(model, x[correct], eps=0.03, progress=False)
    assert (r.original_labels == data.labels[correct]).all()
    assert (r.labels != r.original_labels).mean() >= 0.5, (r.labels, r.original_labels)
    assert np.abs(r.images - data.images[correct]).max() <= 0.03 + 1e-6
    t = polyviz.adversarial(model, x[correct[:2]], target=[(lab + 1) % 6 for lab in data.labels[correct[:2]]],
                            eps=0.1, steps=10, progress=False)
    assert (t.labels == (data.labels[correct[:2]] + 1) % 6).all()
