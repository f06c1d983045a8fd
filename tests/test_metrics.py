"""polyviz.metrics against references: Captum's infidelity and sensitivity_max fed polyviz's draws,
closed forms on linear models (infidelity 0, deletion/insertion curves, a perfect pointing map),
and the sanity check's randomised weights across frameworks. Also Backend.with_weights: a copy with
the given weights (checked against a model built with them), the user's model untouched."""

import numpy as np
import pytest

import polyviz.metrics as M
from backends import ALL, INSTALLED, both_frameworks, build, have, rel
from polyviz.errors import InputError, LayerError
from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights, vgg_spec
from polyviz.registry import backend_class, backend_for

SHAPE = (16, 16, 3)


def small_vgg():
    return vgg_spec([[4], [8, 8]], input_shape=SHAPE, dense=(16,), classes=6)


def images(n, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def unchanged(backend, model, before):
    after = backend_class(backend).state_fingerprint(model)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key], err_msg=key)
        else:
            assert value == after[key], key


KW = {"layout": "NHWC", "progress": False}


# --------------------------------------------------------------------------------------------
# Backend.with_weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_with_weights_is_a_copy_with_the_given_weights(backend):
    spec = small_vgg()
    model, names = build(backend, spec, seed=0)
    be = backend_for(model)
    x = images(2)
    before = backend_class(backend).state_fingerprint(model)
    out = be.forward(x)
    new = random_weights(spec, 5)
    # spec names: torch maps a conv with a fused ReLU to that ReLU module, which answers the conv
    copy = be.with_weights({names[k]: w for k, w in new.items() if k in names})
    reference, _ = build(backend, spec, seed=5)
    assert rel(copy.forward(x), backend_for(reference).forward(x)) <= 1e-6
    assert rel(copy.forward(x), out) > 0.1
    for k in new:
        if k in names:
            for key, value in copy.layer_weights(names[k]).items():
                np.testing.assert_array_equal(value, new[k][key])
    assert np.array_equal(be.forward(x), out)
    unchanged(backend, model, before)
    with pytest.raises(InputError, match="expected shape"):
        be.with_weights({names["fc1"]: {"kernel": np.zeros((3, 3))}})
    with pytest.raises(InputError, match="has weights"):
        be.with_weights({names["fc1"]: {"gamma": np.zeros(16)}})
    unchanged(backend, model, before)


# --------------------------------------------------------------------------------------------
# Captum (same perturbations)
# --------------------------------------------------------------------------------------------


def torch_twin(spec, seed=0):
    pytest.importorskip("captum")
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", spec, seed)
    return model.eval()


@pytest.mark.parametrize("backend", ALL)
def test_infidelity_matches_captum(backend):
    """Captum's infidelity on the torch twin (same weights) with a perturb_func that returns the
    perturbations polyviz draws from the seed; the attributions are polyviz's in ``backend``."""
    import torch
    from captum.metrics import infidelity, infidelity_perturb_func_decorator

    spec = small_vgg()
    twin = torch_twin(spec)
    model, _ = build(backend, spec)
    x, t, n, std, seed = images(2, seed=1), [1, 4], 6, 0.05, 3
    pert = M.infidelity_perturbations(x, n, std, seed)
    xt = torch.from_numpy(nchw(x))
    pt, xpt = torch.from_numpy(nchw(pert)), torch.from_numpy(nchw(np.repeat(x, n, 0) - pert))

    def perturb(inputs):
        assert inputs.shape[0] == len(pt)
        return pt, xpt

    sal = polyviz_explain(model, x, "saliency", t)
    for normalize in (False, True):
        ref = infidelity(twin, perturb, xt, torch.from_numpy(nchw(sal)), target=t, n_perturb_samples=n,
                         normalize=normalize).numpy()
        ours = M.infidelity(model, x, t, attribution=sal, n_perturb_samples=n, noise_std=std, seed=seed,
                            normalize=normalize, **KW)
        assert np.abs(ref).max() > 0
        assert rel(ours, ref) <= 1e-4, normalize
    # global attributions: Captum's decorator divides the perturbation by the input
    ixg = polyviz_explain(model, x, "input_x_gradient", t)
    perturb_rel = infidelity_perturb_func_decorator(True)(lambda inputs: xpt)
    ref = infidelity(twin, perturb_rel, xt, torch.from_numpy(nchw(ixg)), target=t, n_perturb_samples=n).numpy()
    ours = M.infidelity(model, x, t, method="input_x_gradient", multiply_by_inputs=True, n_perturb_samples=n,
                        noise_std=std, seed=seed, **KW)
    assert rel(ours, ref) <= 1e-4


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("backend", ALL)
def test_max_sensitivity_matches_captum(backend):
    """Captum's sensitivity_max with Saliency on the torch twin, fed the perturbed inputs polyviz
    draws from the seed; polyviz recomputes its saliency in ``backend``."""
    import torch
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    spec = small_vgg()
    twin = torch_twin(spec)
    model, _ = build(backend, spec)
    x, t, n, radius, seed = images(2, seed=2), [0, 5], 5, 0.05, 4
    moved = torch.from_numpy(nchw(M.sensitivity_perturbations(x, n, radius, seed)))

    def perturb(inputs):
        assert inputs.shape == moved.shape
        return moved

    ref = sensitivity_max(Saliency(twin).attribute, torch.from_numpy(nchw(x)), perturb_func=perturb,
                          n_perturb_samples=n, target=t, abs=False).numpy()
    ours = M.max_sensitivity(model, x, t, method="saliency", n_perturb_samples=n, radius=radius, seed=seed, **KW)
    assert ref.min() > 0
    assert rel(ours, ref) <= 1e-4


def polyviz_explain(model, x, method, target, **kw):
    import polyviz

    return polyviz.explain(model, x, method, target=target, **KW, **kw).attribution


# --------------------------------------------------------------------------------------------
# closed forms on linear models
# --------------------------------------------------------------------------------------------


def linear(backend, classes=3, seed=1, zero_last=False):
    spec = NetworkSpec(SHAPE, (LayerSpec("flatten", "flatten"),
                               LayerSpec("dense", "predictions", {"units": classes, "activation": None})))
    weights = random_weights(spec, seed)
    weights["predictions"]["bias"] = np.linspace(-0.2, 0.3, classes).astype(np.float32)
    if zero_last:  # the last class scores 0: softmax of two classes is the logistic of the first
        weights["predictions"]["kernel"][:, -1] = 0
        weights["predictions"]["bias"][-1] = 0
    model, _ = backend_class(backend).build(spec, weights)
    return model, weights["predictions"]["kernel"], weights["predictions"]["bias"]


@pytest.mark.parametrize("backend", ALL)
def test_infidelity_closed_form_linear_model(backend):
    """S(x) - S(x - I) = w . I for a linear model: the gradient has infidelity 0 for any I, and so has
    gradient x input with the perturbation taken relative to the input (multiply_by_inputs); scaling
    the attribution is undone by ``normalize``; a wrong attribution is not 0."""
    model, kernel, _ = linear(backend)
    x, t = images(3, seed=4) + 0.1, np.array([0, 2, 1])
    kw = dict(KW, n_perturb_samples=8, noise_std=0.1, seed=1)
    w = kernel[:, t].T.reshape(3, *SHAPE).astype(np.float64)
    b2 = M.infidelity(model, x, t, attribution=np.zeros_like(x), **kw)  # E[(S(x) - S(x - I))^2]
    assert b2.min() > 1e-3
    assert (M.infidelity(model, x, t, method="saliency", **kw) <= 1e-9 * b2).all()
    assert (M.infidelity(model, x, t, method="input_x_gradient", multiply_by_inputs=True, **kw) <= 1e-9 * b2).all()
    assert (M.infidelity(model, x, t, attribution=3 * w, normalize=True, **kw) <= 1e-9 * b2).all()
    assert (M.infidelity(model, x, t, attribution=3 * w, **kw) > 1.0 * b2).all()  # (3 - 1)^2 E[(w.I)^2]
    assert (M.infidelity(model, x, t, method="input_x_gradient", **kw) > 1e-3 * b2).all()
    # relative: divided by the zero attribution's value; with normalize 1 - cos^2(I . attr, score change)
    np.testing.assert_allclose(M.infidelity(model, x, t, attribution=np.zeros_like(x), relative=True, **kw), 1.0)
    other = M.infidelity(model, x, t, method="input_x_gradient", normalize=True, relative=True, **kw)
    pert = M.infidelity_perturbations(x, 8, 0.1, 1).reshape(3, 8, -1).astype(np.float64)
    ia = (pert * (x * w).reshape(3, 1, -1)).sum(-1)
    ds = (pert * w.reshape(3, 1, -1)).sum(-1)
    cos2 = (ia * ds).sum(1) ** 2 / ((ia * ia).sum(1) * (ds * ds).sum(1))
    np.testing.assert_allclose(other, 1 - cos2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_deletion_insertion_closed_form_linear_model(backend):
    """A linear two-class model whose second logit is 0: after deleting (inserting) the pixels
    ranked first by a given map, the first logit is b + sum over the kept pixels of w . x, the
    probability its logistic. The curve and its trapezoid AUC are checked against that sum."""
    model, kernel, bias = linear(backend, classes=2, zero_last=True)
    x = images(2, seed=5)
    rng = np.random.default_rng(6)
    maps = rng.standard_normal((2, *SHAPE[:2]))
    contrib = (x * kernel[:, 0].reshape(SHAPE)).sum(-1).astype(np.float64)  # per pixel (H, W)
    blurred = M.blur(x)
    contrib_blur = (blurred * kernel[:, 0].reshape(SHAPE)).sum(-1).astype(np.float64)
    step = 24  # 256 pixels: 10 full steps and a last one of 16
    for insertion, start in ((False, None), (True, "baseline"), (True, "blur")):
        for score in ("logit", "probability"):
            fn = M.insertion_curve if insertion else M.deletion_curve
            kw = dict(KW, attribution=maps, step=step, score=score, target=0)
            if insertion:
                kw["start"] = start
            curves = fn(model, x, **kw)
            for i in range(2):
                order = np.argsort(-maps[i].ravel(), kind="stable")
                c = contrib[i].ravel()[order]
                other = contrib_blur[i].ravel()[order] if start == "blur" else np.zeros_like(c)
                ks = np.minimum(np.arange(12) * step, 256)
                if insertion:
                    z = np.array([bias[0] + c[:k].sum() + other[k:].sum() for k in ks])
                else:
                    z = np.array([bias[0] + c[k:].sum() for k in ks])
                expected = z if score == "logit" else 1 / (1 + np.exp(-z))
                np.testing.assert_allclose(curves.scores[i], expected, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(curves.fraction, ks / 256)
                area = np.sum((expected[1:] + expected[:-1]) / 2 * np.diff(ks / 256))
                np.testing.assert_allclose(curves.auc[i], area, rtol=1e-4, atol=1e-6)


def test_blur_is_a_normalised_gaussian():
    x = np.zeros((1, 21, 21, 1), np.float32)
    x[0, 10, 10, 0] = 1
    b = M.blur(x)[0, :, :, 0]
    t = np.arange(-5, 6)
    g = np.exp(-0.5 * (t / 5.0) ** 2)
    g /= g.sum()
    np.testing.assert_allclose(b[5:16, 5:16], np.outer(g, g), rtol=1e-5)
    assert abs(b.sum() - 1) < 1e-5
    np.testing.assert_allclose(M.blur(np.full((1, 8, 9, 3), 0.7, np.float32)), 0.7, rtol=1e-6)  # edges reflected


def test_native_layout_and_bad_arguments():
    """A torch user passes NCHW images, attributions and baselines: same numbers as channels-last;
    bad arguments are polyviz errors naming the argument."""
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", small_vgg())
    x, t = images(2, seed=10), [0, 3]
    native = {"progress": False}
    a = M.deletion_auc(model, nchw(x), t, baseline=np.full((3, 16, 16), 0.5, np.float32), step=16, **native)
    b = M.deletion_auc(model, x, t, baseline=np.full((16, 16, 3), 0.5, np.float32), step=16, **KW)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    sal = polyviz_explain(model, x, "saliency", t)
    np.testing.assert_allclose(M.infidelity(model, nchw(x), t, attribution=nchw(sal), **native),
                               M.infidelity(model, x, t, attribution=sal, **KW), rtol=1e-6)
    np.testing.assert_allclose(M.max_sensitivity(model, nchw(x), t, n_perturb_samples=2, **native),
                               M.max_sensitivity(model, x, t, n_perturb_samples=2, **KW), rtol=1e-6)
    with pytest.raises(InputError, match="attribution"):
        M.infidelity(model, x, t, attribution=sal[:, :8], **KW)
    with pytest.raises(InputError, match="n_perturb_samples"):
        M.max_sensitivity(model, x, t, n_perturb_samples=0, **KW)
    with pytest.raises(InputError, match="score"):
        M.deletion_auc(model, x, t, score="odds", **KW)
    with pytest.raises(InputError, match="start"):
        M.insertion_auc(model, x, t, start="noise", **KW)
    with pytest.raises(InputError, match="method"):
        M.infidelity(model, x, t, method="saliancy", **KW)


# --------------------------------------------------------------------------------------------
# pointing game
# --------------------------------------------------------------------------------------------


def test_pointing_hits_definition():
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:8, 10:14] = True
    perfect = masks.astype(np.float64)
    assert M.pointing_hits(perfect, masks).all()
    off = np.zeros((4, 16, 16))
    off[:, 4, 8] = 1  # two pixels left of the object
    assert not M.pointing_hits(off, masks).any()
    assert M.pointing_hits(off, masks, tolerance=2).all() and not M.pointing_hits(off, masks, tolerance=1.9).any()
    coarse = np.zeros((4, 4, 4))
    coarse[:, 1, 3] = 1  # cell centre (5.5, 13.5): between four object pixels
    assert M.pointing_hits(coarse, masks).all()
    coarse = np.zeros((4, 4, 4))
    coarse[:, 1, 2] = 1  # centre (5.5, 9.5): half a pixel left of the object, inside the sqrt(0.5) margin
    assert M.pointing_hits(coarse, masks).all()
    coarse = np.zeros((4, 4, 4))
    coarse[:, 2, 2] = 1  # centre (9.5, 9.5): off the object
    assert not M.pointing_hits(coarse, masks).any()
    with pytest.raises(InputError, match="masks"):
        M.pointing_hits(perfect, masks[:2])


@pytest.mark.parametrize("backend", ALL)
def test_pointing_game_perfect_map_scores_one(backend):
    """A map that is the object mask scores 1.0; its complement 0.0; and one definition is shared
    by compare.pointing_hits (the demo's table)."""
    import polyviz
    from polyviz import compare

    model, _ = build(backend, small_vgg())
    x = images(3, seed=7)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 2:6] = masks[1, 8:15, 1:4] = masks[2, 10:12, 10:16] = True
    assert M.pointing_game(model, x, masks, attribution=masks.astype(np.float32), **KW).mean() == 1.0
    assert M.pointing_game(model, x, masks, attribution=(~masks).astype(np.float32), **KW).mean() == 0.0
    assert M.pointing_game(None, None, masks, attribution=np.repeat(masks[:, None], 3, 1), layout="NCHW").all()
    e = polyviz.explain(model, x, "gradcam", **KW)
    hits = M.pointing_game(None, None, masks, attribution=e)
    np.testing.assert_array_equal(hits, M.pointing_hits(np.abs(e.layer_attribution), masks))
    np.testing.assert_array_equal(compare.pointing_hits(e, masks), hits)
    np.testing.assert_array_equal(M.pointing_game(model, x, masks, method="gradcam", **KW), hits)


# --------------------------------------------------------------------------------------------
# sanity check
# --------------------------------------------------------------------------------------------


def test_spearman_against_a_direct_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (3, 40)).astype(float)  # many ties
    b = a + rng.normal(0, 2, (3, 40))

    def ranks(v):  # average rank of each value: (#smaller) + (#equal + 1) / 2 - 1
        return np.array([(v < u).sum() + ((v == u).sum() - 1) / 2 for u in v])

    for i in range(3):
        ra, rb = ranks(a[i]), ranks(b[i])
        np.testing.assert_allclose(M.spearman(a[i : i + 1], b[i : i + 1])[0], np.corrcoef(ra, rb)[0, 1], rtol=1e-12)
    assert M.spearman(np.ones((1, 5)), b[:1, :5])[0] == 0.0


@pytest.mark.parametrize("backend", ALL)
def test_sanity_check_randomises_a_copy(backend):
    """Row 0 (nothing randomised) is 1.0, similarity falls once weights are re-initialised, each
    randomised copy holds the numpy-drawn weights of its layers, and the model is untouched."""
    from polyviz.metrics.sanity import random_weights as new_weights

    model, _ = build(backend, small_vgg())
    be = backend_for(model)
    x = images(2, seed=8)
    before = backend_class(backend).state_fingerprint(model)
    r = M.sanity_check(model, x, [1, 3], method="saliency", seed=2, **KW)
    assert len(r.layers) == 5 and r.cascading.shape == (6, 2) and r.independent.shape == (5, 2)
    np.testing.assert_allclose(r.cascading[0], 1.0, atol=1e-12)
    assert (r.cascading[1:] < 0.9).all()
    np.testing.assert_array_equal(r.independent[0], r.cascading[1])  # the top layer alone
    unchanged(backend, model, before)
    names = r.layers[::-1]  # execution order
    j = 2
    w = new_weights(be.layer_weights(names[j]), 2, j)
    assert w["kernel"].std() == pytest.approx(be.layer_weights(names[j])["kernel"].std(), rel=0.2)
    np.testing.assert_array_equal(w["bias"], 0)
    randomised, chosen = M.randomised_backend(be, seed=2)  # the fully randomised model: the cascade's last row
    assert chosen == r.layers
    np.testing.assert_array_equal(randomised.layer_weights(names[j])["kernel"], w["kernel"])
    a = polyviz_explain(model, x, "saliency", [1, 3])
    b = polyviz_explain(randomised, x, "saliency", [1, 3])
    np.testing.assert_allclose(M.similarity(a, b), r.cascading[-1], atol=1e-12)
    unchanged(backend, model, before)
    with pytest.raises(InputError, match="steps"):
        M.sanity_check(model, x, method="saliency", steps=[7], **KW)
    with pytest.raises(LayerError):
        M.sanity_check(model, x, method="saliency", layers=["nope"], **KW)
    with pytest.raises(InputError, match="similarity"):
        M.sanity_check(model, x, method="saliency", similarity_kind="ssim", **KW)


@both_frameworks
def test_sanity_check_same_numbers_in_torch_and_keras():
    """Same seed, same new weights: the converted model gives the same similarities (Grad-CAM and
    guided backprop, cascading and independent)."""
    from polyviz.models import convert

    if not ("torch" in INSTALLED and "keras" in INSTALLED):
        pytest.skip("needs both frameworks")
    tmodel, _ = build("torch", small_vgg())
    conv = convert(tmodel, to="keras")
    x = images(2, seed=9)
    for method in ("gradcam", "guided_backprop"):
        a = M.sanity_check(tmodel, x, [2, 0], method=method, seed=5, **KW)
        b = M.sanity_check(conv.model, x, [2, 0], method=method, seed=5, **KW)
        assert len(a.layers) == len(b.layers) == 5
        np.testing.assert_allclose(b.cascading, a.cascading, atol=1e-3, err_msg=method)
        np.testing.assert_allclose(b.independent, a.independent, atol=1e-3, err_msg=method)
        assert np.nanmin(a.cascading[1:]) < 0.95


# --------------------------------------------------------------------------------------------
# polyviz metrics: see test_metrics_report.py
# --------------------------------------------------------------------------------------------


def test_cli_metrics_errors(capsys):
    from polyviz.cli import main

    assert main(["metrics", "--model", "vgg16", "--no-progress"]) == 2
    assert "expected 'demo'" in capsys.readouterr().err
    assert main(["metrics", "--images", "0", "--no-progress"]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["metrics", "--methods", "saliancy", "--no-progress"]) == 2
    assert "Did you mean 'saliency'" in capsys.readouterr().err


def test_keras_with_weights_reaches_nested_models():
    """A layer inside a nested functional model (named ``outer/inner``) gets its new weights in the
    clone; the nested model of the user's model keeps its own."""
    if not have("keras"):
        pytest.skip("the keras backend is not available")
    import keras

    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, keras.layers.GlobalAveragePooling2D(name="gap")(
        keras.layers.Conv2D(5, 3, name="conv", activation="relu")(inner_in)), name="inner")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, name="head")(inner(keras.layers.Conv2D(4, 3, name="stem")(inputs)))
    model = keras.Model(inputs, outputs)
    be = backend_for(model)
    x = images(2, (8, 8, 3), seed=11)
    before = backend_class("keras").state_fingerprint(model)
    kernel = np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)
    copy = be.with_weights({"inner/conv": {"kernel": kernel, "bias": np.full(5, 0.1, np.float32)}})
    np.testing.assert_array_equal(copy.layer_weights("inner/conv")["kernel"], kernel)
    # reference: the same network in numpy, with the user's stem and head and the new inner conv
    w = {name: be.layer_weights(name) for name in ("stem", "head")}
    stem = sum(x[:, i:i + 6, j:j + 6, c, None] * w["stem"]["kernel"][i, j, c] for i in range(3) for j in range(3)
               for c in range(3)) + w["stem"]["bias"]
    conv = sum(stem[:, i:i + 4, j:j + 4, c, None] * kernel[i, j, c] for i in range(3) for j in range(3)
               for c in range(4)) + 0.1
    logits = np.maximum(conv, 0).mean(axis=(1, 2)) @ w["head"]["kernel"] + w["head"]["bias"]
    assert rel(copy.forward(x), logits) <= 1e-5
    unchanged("keras", model, before)
