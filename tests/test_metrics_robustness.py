"""Robustness metrics against Quantus 0.6.0 (a test-only oracle, LGPL: called, nothing copied):
Quantus runs on the torch twin (same numpy weights) with polyviz's saliency as its explain_func
and a perturb_func that hands it polyviz's seeded draws in its call order; polyviz recomputes its
saliency in each backend. ``normalise=False``, ``abs=False``, and Quantus' prediction-change
handling switched off (polyviz's ``exclude_changed`` is checked separately).

Precision: the relative stabilities divide by attributions element by element, which makes them
ill-conditioned where a gradient entry is tiny (float32 accumulation noise of ~1e-7 of the largest
entry becomes a large relative error). Every network here is therefore run in float64 (torch
``.double()``, Keras under ``keras_float64``; polyviz rounds results to float32 at the end, a
relative 6e-8 per element), and the ratios agree to 1e-5 (the bound used)."""

import numpy as np
import pytest

import polyviz
import polyviz.metrics as M
from backends import ALL, have, keras_float64
from polyviz.models.spec import random_weights, vgg_spec
from polyviz.registry import backend_class

KW = {"layout": "NHWC", "progress": False}
N, K = 2, 4


def spec():
    return vgg_spec([[4], [8, 8]], input_shape=(16, 16, 3), dense=(16,), classes=6)


def images(n, seed=0):
    return np.random.default_rng(seed + 200).uniform(0.1, 1, size=(n, 16, 16, 3)).astype(np.float32)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def quantus():
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    import torch._dynamo  # noqa: F401  (before quantus, which imports TensorFlow)

    q = pytest.importorskip("quantus")
    assert q.__version__ == "0.6.0"
    return q


def build(backend, s, seed=0):
    """(model, names) of ``s`` in float64 with seeded numpy weights."""
    if backend == "torch":
        model, names = backend_class("torch").build(s, random_weights(s, seed))
        return model.eval().double(), names
    with keras_float64():
        return backend_class("keras").build(s, random_weights(s, seed))


def twin():
    """The torch model in float64 inside a module that casts Quantus' float32 tensors up."""
    import torch

    inner, names = build("torch", spec())

    class Float64(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.double())

    return Float64().eval(), {k: f"inner.{v}" for k, v in names.items()}


def explain(model, inputs, targets, **kwargs):
    return polyviz.explain(model.inner, inputs, "saliency", target=np.asarray(targets), layout="NCHW",
                           progress=False).attribution


def feeder(perturbed):
    """A Quantus perturb_func returning draw k of every sample on its k-th call (rows i * K + k)."""
    rows = nchw(perturbed).reshape(N, K, -1)
    calls = iter(range(K))

    def perturb(arr, **kwargs):
        k = next(calls)
        assert arr.shape == (N, rows.shape[-1])
        return rows[:, k].astype(arr.dtype)

    return perturb


def run_quantus(metric, x, t):
    model, _ = twin()
    return np.asarray(metric(model=model, x_batch=nchw(x), y_batch=np.asarray(t), a_batch=None, channel_first=True,
                             explain_func=explain, explain_func_kwargs={}, softmax=False, device="cpu"), np.float64)


Q = {"normalise": False, "abs": False, "disable_warnings": True, "return_aggregate": False,
     "display_progressbar": False, "return_nan_when_prediction_changes": False}


@pytest.mark.parametrize("backend", ALL)
def test_avg_sensitivity_and_lipschitz_match_quantus(backend, quantus):
    model, _ = build(backend, spec())
    x, t = images(N), np.array([1, 4])
    moved = M.sensitivity_perturbations(x, K, 0.05, seed=3)
    ours = M.avg_sensitivity(model, x, t, n_perturb_samples=K, perturbed=moved, **KW)
    ref = run_quantus(quantus.AvgSensitivity(nr_samples=K, perturb_func=feeder(moved), **Q), x, t)
    assert ref.min() > 0 and np.abs(ours / ref - 1).max() <= 1e-5, (ours, ref)
    np.testing.assert_allclose(M.avg_sensitivity(model, x, t, n_perturb_samples=K, radius=0.05, seed=3, **KW), ours)
    moved = M.gaussian_perturbations(x, K, 0.1, seed=4)
    ours = M.local_lipschitz_estimate(model, x, t, n_perturb_samples=K, std=0.1, seed=4, **KW)
    ref = run_quantus(quantus.LocalLipschitzEstimate(nr_samples=K, perturb_func=feeder(moved), **Q), x, t)
    assert ref.min() > 0 and np.abs(ours / ref - 1).max() <= 1e-5, (ours, ref)


@pytest.mark.parametrize("backend", ALL)
def test_relative_stabilities_match_quantus(backend, quantus):
    model, names = build(backend, spec())
    x, t = images(N, seed=1), np.array([0, 5])
    moved = M.sensitivity_perturbations(x, K, 0.02, seed=5)
    kw = dict(n_perturb_samples=K, radius=0.02, seed=5, exclude_changed=False, **KW)
    layer = names["block2_conv2"]
    torch_layer = twin()[1]["block2_conv2"]
    cases = [
        (M.relative_input_stability, quantus.RelativeInputStability, {}, {}),
        (M.relative_output_stability, quantus.RelativeOutputStability, {}, {}),
        (M.relative_representation_stability, quantus.RelativeRepresentationStability, {"representation": layer},
         {"layer_names": [torch_layer]}),
    ]
    for ours_fn, theirs, ours_kw, their_kw in cases:
        ours = ours_fn(model, x, t, **kw, **ours_kw)
        ref = run_quantus(theirs(nr_samples=K, perturb_func=feeder(moved), **Q, **their_kw), x, t)
        assert ref.min() > 0 and np.abs(ours / ref - 1).max() <= 1e-5, (ours_fn.__name__, ours, ref)


@pytest.mark.parametrize("backend", ALL)
def test_relative_stability_closed_form_and_excluded_draws(backend):
    """On a linear model saliency is the constant kernel: e_x = e_x' and every stability is 0. With
    a draw that changes the predicted class excluded (the paper's constraint), the max runs over
    the others; with every draw changed the value is NaN."""
    from polyviz.models.spec import LayerSpec, NetworkSpec, random_weights
    from polyviz.registry import backend_class

    s = NetworkSpec((16, 16, 3), (LayerSpec("flatten", "flatten"),
                                  LayerSpec("dense", "predictions", {"units": 3, "activation": None})))
    lin, _ = backend_class(backend).build(s, random_weights(s, 2))
    x = images(N, seed=2)
    for fn in (M.relative_input_stability, M.relative_output_stability):
        np.testing.assert_allclose(fn(lin, x, 0, n_perturb_samples=3, **KW), 0.0, atol=1e-12)
    model, _ = build(backend, spec())
    pred = polyviz.explain(model, x, "saliency", **KW).target
    rng = np.random.default_rng(7)
    candidates = np.concatenate([s * rng.standard_normal((16, 16, 16, 3)) for s in (0.5, 3, 20)]).astype(np.float32)
    classes = np.asarray(polyviz.explain(model, candidates, "saliency", **KW).target)
    other = candidates[np.flatnonzero((classes != pred[0]) & (classes != pred[1]))[0]]
    moved = M.sensitivity_perturbations(x, K, 0.02, seed=6)
    moved[K - 1] = other  # sample 0's last draw changes the predicted class
    moved[K:] = other  # so does every draw of sample 1
    every = M.relative_input_stability(model, x, pred, n_perturb_samples=K, perturbed=moved, exclude_changed=False,
                                       **KW)
    kept = M.relative_input_stability(model, x, pred, n_perturb_samples=K, perturbed=moved, **KW)
    first = M.relative_input_stability(model, x[:1], pred[:1], n_perturb_samples=K - 1, perturbed=moved[: K - 1],
                                       **KW)
    np.testing.assert_allclose(kept[0], first[0], rtol=1e-6)
    assert np.isnan(kept[1]) and np.isfinite(every).all()


def test_registered_and_bad_arguments():
    from polyviz.errors import InputError

    for name in ("avg_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
                 "relative_output_stability", "relative_representation_stability"):
        info = M.metric_info(name)
        assert info.category == "robustness" and not info.higher_is_better
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", spec())
    x = images(2)
    for fn, kw, name in [(M.avg_sensitivity, {"radius": -1}, "radius"),
                         (M.local_lipschitz_estimate, {"std": "big"}, "std"),
                         (M.relative_output_stability, {"eps_min": 0}, "eps_min"),
                         (M.relative_input_stability, {"perturbed": np.zeros((3, 16, 16, 3))}, "perturbed"),
                         (M.avg_sensitivity, {"n_perturb_samples": 0}, "n_perturb_samples")]:
        with pytest.raises(InputError, match=name):
            fn(model, x, **KW, **kw)
