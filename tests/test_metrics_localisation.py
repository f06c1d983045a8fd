"""Localisation and complexity metrics against Quantus 0.6.0 (aligned settings), in every backend:
our metric computes the map through the backend; Quantus gets the same map (channel-summed where
the metric reads maps). Plus closed forms (a perfect map, a flat map, one spike)."""

import numpy as np
import pytest
from quantus_oracle import call, needs_quantus, quantus

import polyviz
import polyviz.metrics as M
from backends import ALL, build
from polyviz.errors import InputError
from polyviz.models.spec import vgg_spec

SIZE = 16
KW = {"layout": "NHWC", "progress": False}


def setup_case(backend, n=4):
    spec = vgg_spec([[4]], input_shape=(SIZE, SIZE, 3), dense=(8,), classes=3)
    model, _ = build(backend, spec, seed=0)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, SIZE - 7, 2)
        masks[i, y0:y0 + 6, x0:x0 + 7] = True
    e = polyviz.explain(model, x, "input_x_gradient", target=0, **KW)
    return model, x, masks, np.asarray(e.attribution, np.float64)


@needs_quantus
@pytest.mark.parametrize("backend", ALL)
def test_localisation_equals_quantus(backend):
    q = quantus()
    model, x, masks, a = setup_case(backend)
    maps = a.sum(axis=-1)
    y = np.zeros(len(x), int)
    kw = {"target": 0, "method": "input_x_gradient", **KW}
    cases = [
        (M.relevance_mass_accuracy, {}, q.RelevanceMassAccuracy(disable_warnings=True)),
        (M.relevance_rank_accuracy, {}, q.RelevanceRankAccuracy(disable_warnings=True)),
        (M.attribution_localisation, {}, q.AttributionLocalisation(positive_attributions=True, abs=False,
                                                                    disable_warnings=True)),
        (M.top_k_intersection, {"k": 30}, q.TopKIntersection(k=30, disable_warnings=True)),
        (M.top_k_intersection, {"k": 30, "concept_influence": True},
         q.TopKIntersection(k=30, concept_influence=True, disable_warnings=True)),
        (M.auc, {}, q.AUC(disable_warnings=True)),
    ]
    for ours, options, theirs in cases:
        got = ours(model, x, masks, **kw, **options)
        want = call(theirs, x, y, maps, masks)
        # Quantus normalises by the maximum first (ratios unchanged) and adds 1e-9 to a denominator
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=ours.__name__)


def test_localisation_closed_forms():
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:5, 2:6] = True
    masks[2] = False  # empty: NaN (nothing to localise)
    perfect = masks.astype(np.float32) * 2.0
    for fn in (M.relevance_mass_accuracy, M.relevance_rank_accuracy, M.attribution_localisation, M.auc):
        got = fn(None, None, masks, attribution=perfect)
        assert got[0] == 1.0 and got[1] == 1.0 and np.isnan(got[2]), fn.__name__
    flat = np.ones((3, 8, 8), np.float32)
    np.testing.assert_allclose(M.relevance_mass_accuracy(None, None, masks, attribution=flat)[:2], 12 / 64)
    np.testing.assert_allclose(M.auc(None, None, masks, attribution=flat)[:2], 0.5)
    assert M.top_k_intersection(None, None, masks, attribution=perfect, k=12)[0] == 1.0
    with pytest.raises(InputError, match="k: expected at most"):
        M.top_k_intersection(None, None, masks, attribution=perfect, k=65)
    with pytest.raises(InputError, match="masks"):
        M.auc(None, None, masks[:2], attribution=perfect)
    assert not M.pointing_game(None, None, masks, attribution=perfect)[2]  # Quantus: a hit; here a miss


@needs_quantus
@pytest.mark.parametrize("backend", ALL)
def test_complexity_equals_quantus(backend):
    q = quantus()
    model, x, masks, a = setup_case(backend)
    y = np.zeros(len(x), int)
    kw = {"target": 0, "method": "input_x_gradient", **KW}
    v = np.abs(a).reshape(len(a), -1)
    # Sparseness: Quantus adds 1e-7 to |a| / max |a|, which scales the index by S / (S + P 1e-7)
    # (the sorted weights sum to 0), S the normalised sum: the closed form of the difference, not a
    # fitted tolerance. Quantus' default normalises by the whole batch's maximum, so one sample's
    # value depends on the others; aligned here to per-sample normalisation.
    per_sample = {"normalise_func_kwargs": {"normalise_axes": [1, 2, 3]}, "disable_warnings": True}
    got = M.sparseness(model, x, **kw)
    want = call(q.Sparseness(**per_sample), x, y, a)
    bound = got * 1e-7 / (v / v.max(axis=1, keepdims=True)).mean(axis=1)
    assert np.all(np.abs(got - want) <= bound * 1.01 + 1e-12)
    got = M.complexity(model, x, **kw)
    np.testing.assert_allclose(got, call(q.Complexity(disable_warnings=True), x, y, a), rtol=1e-9)
    for eps in (1e-5, 0.05, 0.3):
        got = M.effective_complexity(model, x, eps=eps, **kw)
        np.testing.assert_array_equal(got, call(q.EffectiveComplexity(eps=eps, **per_sample), x, y, a))


def test_complexity_closed_forms():
    spike = np.zeros((2, 4, 4), np.float32)
    spike[0, 1, 2] = -3.0
    spike[1] = 1.0
    np.testing.assert_allclose(M.sparseness(None, attribution=spike), [15 / 16, 0.0], atol=1e-12)
    np.testing.assert_allclose(M.complexity(None, attribution=spike), [0.0, np.log(16)], atol=1e-12)
    np.testing.assert_array_equal(M.effective_complexity(None, attribution=spike), [1, 16])
    np.testing.assert_array_equal(M.effective_complexity(None, attribution=spike * 1e-6, relative=False), [0, 0])
    assert M.sparseness(None, attribution=np.zeros((1, 4, 4)))[0] == 0.0
