"""Faithfulness metrics against Quantus 0.6.0 (a test-only oracle, LGPL: called, nothing copied)
with settings aligned, and against closed forms where Quantus departs from the paper.

Alignment: single-channel 16 px images (Quantus' features are the C x H x W values, polyviz's are
pixels: the same on one channel), the same continuous random maps given to both (no ties, so no
sort-order differences), a constant baseline 0, ``normalise=False``, ``abs`` as polyviz, softmax
probabilities, and Quantus' random draws replaced by polyviz's where it draws. Quantus runs on the
torch twin (same numpy weights); polyviz runs in each backend.

Tolerances: both sides score float32 networks, so probabilities agree to ~1e-7 relative (the
float32 round-off of a few hundred terms); correlations over score differences of size >= 1e-3
(asserted) then agree to better than 1e-4, which is the bound used."""

import numpy as np
import pytest

import polyviz.metrics as M
from backends import ALL, build, have, rel
from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights, vgg_spec
from polyviz.registry import backend_class

KW = {"layout": "NHWC", "progress": False}
N = 3


def spec(channels=1):
    return vgg_spec([[4], [8, 8]], input_shape=(16, 16, channels), dense=(16,), classes=6)


def images(n, channels=1, seed=0):
    return np.random.default_rng(seed + 100).uniform(0, 1, size=(n, 16, 16, channels)).astype(np.float32)


def maps(n, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16, 16)).astype(np.float32)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def quantus():
    pytest.importorskip("captum")
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    import torch
    import torch._dynamo  # noqa: F401  (before quantus, which imports TensorFlow)

    q = pytest.importorskip("quantus")
    assert q.__version__ == "0.6.0"
    torch.manual_seed(0)
    return q


def twin(channels=1):
    model, _ = build("torch", spec(channels))
    return model.eval()


def setting(q_metric, model, x, t, a, **kw):
    """Quantus' per-sample values with polyviz's aligned call conventions."""
    return np.asarray(q_metric(model=model, x_batch=nchw(x), y_batch=np.asarray(t), a_batch=a[:, None],
                               channel_first=True, softmax=True, device="cpu", **kw), np.float64)


Q = {"normalise": False, "disable_warnings": True, "return_aggregate": False, "display_progressbar": False}


@pytest.mark.parametrize("backend", ALL)
def test_faithfulness_correlation_matches_quantus(backend, quantus, monkeypatch):
    model, _ = build(backend, spec())
    x, t, a = images(N), np.array([0, 3, 5]), maps(N)
    runs, size, seed = 12, 40, 7
    ours = M.faithfulness_correlation(model, x, t, attribution=a, n_runs=runs, subset_size=size, seed=seed, **KW)
    from polyviz.metrics._perturb import random_subsets

    draws = random_subsets(N, runs, 256, size, seed)
    calls = iter([draws[i, r] for r in range(runs) for i in range(N)])  # Quantus: run-major, then image
    monkeypatch.setattr(np.random, "choice", lambda *args, **kw: next(calls))
    ref = setting(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0, abs=False, **Q),
                  twin(), x, t, a)
    assert np.abs(ours - ref).max() <= 1e-4, (ours, ref)
    assert np.abs(ours).max() > 0.05


@pytest.mark.parametrize("backend", ALL)
def test_faithfulness_estimate_matches_quantus(backend, quantus):
    model, _ = build(backend, spec())
    x, t, a = images(N, seed=1), np.array([1, 2, 4]), maps(N, seed=2)
    for step in (1, 4):
        ours = M.faithfulness_estimate(model, x, t, attribution=a, step=step, **KW)
        ref = setting(quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline=0.0, abs=False, **Q),
                      twin(), x, t, a)
        assert np.abs(ours - ref).max() <= 1e-4, (step, ours, ref)


@pytest.mark.parametrize("backend", ALL)
def test_monotonicity_quantus_departs_and_closed_form(backend, quantus):
    """Quantus' ``Monotonicity`` writes the baseline over its baseline image (it never puts x's
    values back), so its curve is constant and its verdict always 1. Checked instead against the
    closed form of a linear model: from the zero image, putting pixel group g back adds
    ``sum_{i in g} w_i . x_i`` to the logit."""
    x, t, a = images(N, seed=2), np.array([0, 1, 2]), maps(N, seed=3)
    ref = setting(quantus.Monotonicity(features_in_step=16, perturb_baseline=0.0, abs=True, **Q), twin(), x, t, a)
    np.testing.assert_array_equal(ref, 1.0)  # the departure: any map, any model
    model, kernel, bias = linear(backend)
    x = images(N, channels=3, seed=2)
    for sign_kernel in (False, True):
        if sign_kernel:  # w >= 0 on x >= 0: every pixel raises the logit, monotonic whatever the map
            weights = random_weights(_linear_spec(), 1)
            weights["predictions"]["kernel"] = np.abs(weights["predictions"]["kernel"])
            model, _ = backend_class(backend).build(_linear_spec(), weights)
            kernel, bias = weights["predictions"]["kernel"], weights["predictions"]["bias"]
        value, curves = M.monotonicity(model, x, 0, attribution=a, step=16, score="logit", return_curves=True, **KW)
        contrib = (x.astype(np.float64) * kernel[:, 0].reshape(16, 16, 3)).sum(-1).reshape(N, -1)
        for i in range(N):
            order = np.argsort(np.abs(a[i]).ravel(), kind="stable")
            expected = bias[0] + np.cumsum(contrib[i][order].reshape(16, 16).sum(1))
            np.testing.assert_allclose(curves[i], expected, rtol=1e-5, atol=1e-5)
            assert value[i] == float(np.all(np.diff(expected) >= 0))
        if sign_kernel:
            np.testing.assert_array_equal(value, 1.0)
        else:
            assert value.min() == 0.0


@pytest.mark.parametrize("backend", ALL)
def test_monotonicity_correlation_matches_quantus(backend, quantus):
    """A constant baseline (Quantus' default draws uniform values from numpy's global state)."""
    model, _ = build(backend, spec())
    x, t, a = images(N, seed=3), np.array([3, 4, 5]), maps(N, seed=4)
    ours = M.monotonicity_correlation(model, x, t, attribution=a, step=8, n_samples=2, baseline=0.0, **KW)
    ref = setting(quantus.MonotonicityCorrelation(features_in_step=8, nr_samples=2, perturb_baseline=0.0, abs=True,
                                                  **Q), twin(), x, t, a)
    assert np.abs(ours - ref).max() <= 1e-4, (ours, ref)


@pytest.mark.parametrize("backend", ALL)
def test_region_perturbation_and_selectivity_match_quantus(backend, quantus):
    """Three channels here: patches hold every channel in both, Quantus' patch sums are 3 x the
    map's, the order the same."""
    model, _ = build(backend, spec(3))
    x, t, a = images(N, channels=3, seed=4), np.array([2, 0, 1]), maps(N, seed=5)
    for order in ("morf", "lerf"):
        ours = M.region_perturbation(model, x, t, attribution=a, patch_size=4, order=order, baseline=0.0,
                                     return_curves=True, **KW)
        ref = setting(quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=16, perturb_baseline=0.0,
                                                 **Q), twin(3), x, t, a)
        np.testing.assert_allclose(ours.scores[:, :1] - ours.scores[:, 1:], ref, atol=1e-6)
        np.testing.assert_allclose(ours.value, ref.sum(1) / 17, atol=1e-6)  # AOPC over k = 0..16
    ours = M.selectivity(model, x, t, attribution=a, patch_size=4, baseline=0.0, return_curves=True, **KW)
    ref = setting(quantus.Selectivity(patch_size=4, perturb_baseline=0.0, **Q), twin(3), x, t, a)
    np.testing.assert_allclose(ours.scores[:, 1:], ref, atol=1e-6)
    np.testing.assert_allclose(ours.value, np.trapezoid(ours.scores, np.linspace(0, 1, 17), axis=1))


@pytest.mark.parametrize("backend", ALL)
def test_irof_matches_quantus_on_its_slic_segments(backend, quantus, monkeypatch):
    """One channel: Quantus' IROF masks (N, 1, H, W) fail its own shape assert on colour images; and
    it calls ``np.trapz``, gone in numpy 2."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    from quantus.helpers.utils import get_superpixel_segments

    model, _ = build(backend, spec())
    x, t, a = images(N, seed=5), np.array([1, 1, 4]), maps(N, seed=6)
    segments = np.stack([get_superpixel_segments(img=xi.astype("double"), segmentation_method="slic") for xi in x])
    ours = M.irof(model, x, t, attribution=a, segments=segments, baseline=0.0, return_curves=True, **KW)
    ref = setting(quantus.IROF(perturb_baseline=0.0, **Q), twin(), x, t, a)
    k = np.array([len(np.unique(s)) for s in segments])
    assert k.min() > 2
    # a sum of K score ratios, each exact to float32 round-off (~1e-6 relative): the bound scales with both
    floor = 5e-6 * k * np.abs(ours.scores).max(1)
    assert (np.abs(k * ours.value + (1 + ours.scores[:, 1]) / 2 - ref) <= floor).all(), (ours.value, ref)


def test_noisy_linear_imputation_matches_quantus(quantus):
    """The imputed values (noise 0) solve the same sparse system as Quantus' scipy ``spsolve``."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 12, 10, 3)).astype(np.float32)
    removed = rng.uniform(size=(2, 12, 10)) < 0.6
    removed[1, :, :] = True  # all but one pixel removed: one known value fills the image
    removed[1, 5, 5] = False
    ours = M.noisy_linear_imputation(x, removed, noise=0.0)
    for i in range(2):
        ref = noisy_linear_imputation(nchw(x)[i].astype(np.float64), np.flatnonzero(removed[i]), noise=0.0)
        np.testing.assert_allclose(ours[i], ref.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], np.broadcast_to(x[1, 5, 5], (12, 10, 3)), rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_road_matches_quantus(backend, quantus):
    """Noise 0 (Quantus draws its noise from numpy's global state); LeRF is Quantus' MoRF on the
    negated map. Quantus reports the accuracy per percentage, averaged over the images."""
    model, _ = build(backend, spec())
    x, a = images(8, seed=6), maps(8, seed=7)
    t = build("torch", spec())[0](__import__("torch").from_numpy(nchw(x))).argmax(1).numpy()
    pct = [10, 30, 50, 70, 90]
    for order, sign in (("morf", 1), ("lerf", -1)):
        ours = M.road(model, x, t, attribution=a, order=order, percentages=pct, noise=0.0, return_curves=True, **KW)
        ref = quantus.ROAD(percentages=pct, noise=0.0, **Q)(model=twin(), x_batch=nchw(x), y_batch=t,
                                                             a_batch=sign * a[:, None], channel_first=True, device="cpu")
        np.testing.assert_allclose(ours.scores.mean(0), [ref[p] for p in pct])


@pytest.mark.parametrize("backend", ALL)
def test_road_noise_is_drawn_from_the_seed(backend):
    """The noisy imputation's noise is N(0, noise^2) from ``default_rng([seed, i, j])``: the same
    images in every backend; scored with the logit of a linear model, the curve is the closed form."""
    model, kernel, bias = linear(backend)
    x, a = images(2, channels=3, seed=7), maps(2, seed=8)
    pct, noise, seed = (20, 60), 0.05, 3
    out = M.road(model, x, 0, attribution=a, percentages=pct, noise=noise, seed=seed, score="logit",
                 return_curves=True, **KW)
    for i in range(2):
        order = np.argsort(-a[i].ravel(), kind="stable")
        for j, p in enumerate(pct):
            removed = np.zeros(256, bool)
            removed[order[: int(256 * p / 100)]] = True
            removed = removed.reshape(16, 16)
            img = M.noisy_linear_imputation(x[i : i + 1], removed[None], 0.0)[0]
            draw = np.random.default_rng([seed, i, j]).standard_normal((16, 16, 3))
            img = np.where(removed[..., None], img + np.float32(noise) * draw, img).astype(np.float64)
            expected = img.ravel() @ kernel[:, 0].astype(np.float64) + bias[0]
            np.testing.assert_allclose(out.scores[i, j], expected, rtol=1e-5, atol=1e-5)


def _linear_spec(classes=2):
    return NetworkSpec((16, 16, 3), (LayerSpec("flatten", "flatten"),
                                     LayerSpec("dense", "predictions", {"units": classes, "activation": None})))


def linear(backend, classes=2, seed=1):
    """A linear model on 16 x 16 x 3 images: logits = W x + b."""
    s = _linear_spec(classes)
    weights = random_weights(s, seed)
    model, _ = backend_class(backend).build(s, weights)
    return model, weights["predictions"]["kernel"], weights["predictions"]["bias"]


@pytest.mark.parametrize("backend", ALL)
def test_sensitivity_n_closed_form_linear_model(backend):
    """Logits of a linear model drop by ``sum_{i in S} w_i . x_i`` when S is zeroed: gradient x input
    has sensitivity-n 1 for every n (Ancona et al.'s property of linear models), and a random map
    has the Pearson correlation of its subset sums with those drops, over the same seeded subsets."""
    from polyviz.metrics._perturb import pearson, random_subsets

    model, kernel, _ = linear(backend)
    x, t, seed = images(2, channels=3, seed=8), np.array([0, 1]), 5
    ns, runs = (1, 10, 100), 20
    ixg = M.sensitivity_n(model, x, t, method="input_x_gradient", n=ns, n_subsets=runs, seed=seed,
                          return_curves=True, **KW)
    np.testing.assert_allclose(ixg, 1.0, atol=1e-5)
    a = maps(2, seed=9)
    ours = M.sensitivity_n(model, x, t, attribution=a, n=ns, n_subsets=runs, seed=seed, return_curves=True, **KW)
    contrib = (x.astype(np.float64) * kernel[:, t].T.reshape(2, 16, 16, 3)).sum(-1).reshape(2, -1)
    for j, size in enumerate(ns):
        sub = random_subsets(2, runs, 256, size, seed + j)
        att = np.take_along_axis(a.reshape(2, -1), sub.reshape(2, -1), 1).reshape(2, runs, size).sum(-1)
        drop = np.take_along_axis(contrib, sub.reshape(2, -1), 1).reshape(2, runs, size).sum(-1)
        np.testing.assert_allclose(ours[:, j], pearson(att, drop), atol=1e-4)
    np.testing.assert_allclose(M.sensitivity_n(model, x, t, attribution=a, n=ns, n_subsets=runs, seed=seed, **KW),
                               ours.mean(1))


@pytest.mark.parametrize("backend", ALL)
def test_faithfulness_correlation_closed_form_linear_model(backend):
    """Gradient x input on a linear model: the logit drop is the subset's attribution sum, correlation 1."""
    model, _, _ = linear(backend)
    x = images(2, channels=3, seed=9)
    out = M.faithfulness_correlation(model, x, [0, 1], method="input_x_gradient", n_runs=10, subset_size=30,
                                     score="logit", **KW)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    out = M.faithfulness_estimate(model, x, [0, 1], method="input_x_gradient", step=8, score="logit", **KW)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


def test_bad_arguments_are_polyviz_errors():
    from polyviz.errors import InputError

    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", spec())
    x, a = images(2), maps(2)
    cases = [
        (M.faithfulness_correlation, {"subset_size": 300}, "subset_size"),
        (M.faithfulness_correlation, {"n_runs": 0}, "n_runs"),
        (M.faithfulness_estimate, {"baseline": "grey"}, "baseline"),
        (M.monotonicity, {"score": "prob"}, "score"),
        (M.sensitivity_n, {"n": (0,)}, "n"),
        (M.region_perturbation, {"order": "random"}, "order"),
        (M.irof, {"segments": np.zeros((2, 8, 8), int)}, "segments"),
        (M.road, {"percentages": [120]}, "percentages"),
        (M.road, {"score": "logits"}, "score"),
        (M.selectivity, {"patch_size": -1}, "patch_size"),
    ]
    for fn, kw, name in cases:
        with pytest.raises(InputError, match=name):
            fn(model, x, attribution=a, **KW, **kw)


def test_registered_with_direction_and_category():
    names = {"faithfulness_correlation": True, "faithfulness_estimate": True, "monotonicity": True,
             "monotonicity_correlation": True, "sensitivity_n": True, "region_perturbation": True,
             "selectivity": False, "irof": True, "road_morf": False, "road_lerf": True}
    for name, higher in names.items():
        info = M.metric_info(name)
        assert info.category == "faithfulness" and info.higher_is_better is higher, name


def test_same_numbers_in_torch_and_keras():
    """Seeded draws (subsets, uniform replacements) are numpy's: both frameworks see the same images."""
    from backends import INSTALLED

    if len(INSTALLED) < 2:
        pytest.skip("needs torch and keras")
    x, a = images(2, seed=10), maps(2, seed=11)
    out = {}
    for backend in ("torch", "keras"):
        model, _ = build(backend, spec())
        out[backend] = (M.faithfulness_correlation(model, x, [0, 1], attribution=a, n_runs=8, subset_size=30, **KW),
                        M.monotonicity_correlation(model, x, [0, 1], attribution=a, step=32, n_samples=3, **KW),
                        M.region_perturbation(model, x, [0, 1], attribution=a, patch_size=4, **KW))
    for ours, theirs in zip(out["torch"], out["keras"]):
        assert rel(ours, theirs) <= 1e-4
