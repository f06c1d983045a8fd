"""Randomisation metrics: random logit against Quantus 0.6.0's RandomLogit (aligned: 2 classes, so
the other class is fixed; Spearman of the magnitude maps); efficient MPRT against Quantus'
discrete_entropy on the same explanations; smooth MPRT equal to the sanity check without noise;
each equal in torch and keras (the randomised weights are numpy's, identical in both)."""

import numpy as np
import pytest
from quantus_oracle import needs_quantus, quantus

import polyviz
import polyviz.metrics as M
import polyviz.metrics.randomisation as R
from backends import ALL, both_frameworks, build
from polyviz.errors import InputError
from polyviz.models.spec import vgg_spec
from polyviz.registry import backend_for

KW = {"layout": "NHWC", "progress": False}


def case(backend, classes=3, n=3):
    spec = vgg_spec([[4], [6]], input_shape=(8, 8, 3), dense=(8,), classes=classes)
    model, _ = build(backend, spec, seed=0)
    x = np.random.default_rng(1).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)
    return model, x


@needs_quantus
def test_random_logit_equals_quantus():
    q = quantus()
    model, x = case("torch", classes=2)
    y = np.zeros(len(x), int)

    def explain_func(model, inputs, targets, **kwargs):  # polyviz's saliency, as magnitude maps
        e = polyviz.explain(model, np.asarray(inputs, np.float32), "saliency", target=targets, layout="NCHW",
                            progress=False)
        return np.abs(np.asarray(e.attribution, np.float64)).sum(axis=1, keepdims=True)

    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    a = explain_func(model, xc, y)
    metric = q.RandomLogit(num_classes=2, similarity_func=q.similarity_func.correlation_spearman, abs=False,
                           normalise=False, disable_warnings=True)
    want = np.asarray(metric(model=model, x_batch=xc, y_batch=y, a_batch=a, explain_func=explain_func,
                             channel_first=True, device="cpu"), np.float64)
    got = M.random_logit(model, x, y, **KW)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
def test_random_logit_other_class_and_errors(backend):
    model, x = case(backend, classes=3)
    t = np.array([0, 1, 2])
    off = R.other_classes(t, 3, 0)
    assert np.all(off != t) and np.all((off >= 0) & (off < 3))
    got = M.random_logit(model, x, t, similarity_kind="pearson", **KW)
    np.testing.assert_array_equal(got, M.random_logit(model, x, t, other=off, similarity_kind="pearson", **KW))
    a = polyviz.explain(model, x, "saliency", target=t, **KW).attribution
    b = polyviz.explain(model, x, "saliency", target=off, **KW).attribution
    np.testing.assert_allclose(got, M.similarity(a, b, "pearson"), rtol=1e-12)
    with pytest.raises(InputError, match="other"):
        M.random_logit(model, x, t, other=t, **KW)


@both_frameworks
def test_randomisation_metrics_agree_across_frameworks():
    (mt, x), (mk, _) = case("torch"), case("keras")
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for name, kw in (("random_logit", {"similarity_kind": "pearson"}),
                     ("smooth_mprt", {"n_samples": 3, "similarity_kind": "pearson"}),
                     ("efficient_mprt", {"n_bins": 10})):
        fn = M.METRICS[name].fn
        a = fn(mt, xt, 0, progress=False, **kw)
        b = fn(mk, x, 0, progress=False, **kw)
        # pearson correlations and histogram entropies of float32 maps: a bin edge could move one
        # value, so the entropies are compared to the size of one such move (1 / P of the mass)
        tol = 1e-5 if name != "efficient_mprt" else 2.0 * np.log(x[0].size) / x[0].size
        np.testing.assert_allclose(a, b, atol=tol, err_msg=name)


@needs_quantus
@pytest.mark.parametrize("backend", ALL)
def test_efficient_mprt_equals_quantus_entropy(backend):
    from quantus.functions.complexity_func import discrete_entropy

    quantus()
    model, x = case(backend)
    be = backend_for(model)
    got = M.efficient_mprt(model, x, 0, **KW)
    randomised, _ = M.randomised_backend(be, seed=0)
    before = polyviz.explain(model, x, "saliency", target=0, **KW).attribution
    after = polyviz.explain(randomised, x, "saliency", target=0, **KW).attribution
    h0 = np.array([discrete_entropy(a=np.asarray(a, np.float64), x=None) for a in before])
    h1 = np.array([discrete_entropy(a=np.asarray(a, np.float64), x=None) for a in after])
    np.testing.assert_allclose(got, (h1 - h0) / h0, rtol=1e-9)


@pytest.mark.parametrize("backend", ALL)
def test_smooth_mprt_without_noise_is_the_sanity_check(backend):
    model, x = case(backend)
    be = backend_for(model)
    layers = M.weighted_layers(be)
    s = M.sanity_check(model, x, 0, mode="cascading", steps=[len(layers)], **KW)
    got = M.smooth_mprt(model, x, 0, n_samples=1, noise_magnitude=0.0, **KW)
    np.testing.assert_allclose(got, s.cascading[-1], rtol=1e-12)
    # with noise: the mean of the explanations at the documented noisy copies
    got = M.smooth_mprt(model, x, 0, n_samples=2, noise_magnitude=0.1, similarity_kind="pearson", **KW)
    randomised, _ = M.randomised_backend(be, seed=0)
    mean = lambda b: np.stack([np.asarray(polyviz.explain(b, R.smooth_noise(x, i, 2, 0.1, 0), "saliency",  # noqa: E731
                                                          target=0, **KW).attribution, np.float64).mean(axis=0)
                               for i in range(len(x))])
    np.testing.assert_allclose(got, M.similarity(mean(be), mean(randomised), "pearson"), rtol=1e-9)
