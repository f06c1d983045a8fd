"""Feature-group perturbation methods (feature ablation, feature permutation, Shapley value sampling,
LIME, KernelSHAP) and RISE against real references: Captum fed the same groups and the same random
draws, RISE's closed form on a linear model, and torch against Keras on converted VGG16."""

import numpy as np
import pytest

import polyviz
from backends import (
    ALL,
    SIZES,
    assert_agree,
    both_frameworks,
    build,
    converted_vgg16,
    have,
    px,
    rel,
    release,
    torchvision_vgg16,
)
from polyviz.errors import InputError
from polyviz.features import feature_groups, patches, pixels, superpixels
from polyviz.models.spec import LayerSpec, NetworkSpec, vgg_spec

SPEC = vgg_spec([[4], [8, 8]], input_shape=(16, 16, 3), dense=(16,), classes=6)
TARGETS = [2, 5, 0]


def images(n, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def explain(model, x, method, **kw):
    kw.setdefault("progress", False)
    return polyviz.explain(model, x, method, layout="NHWC", **kw)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def reference():
    """The torch network Captum explains; the backend under test gets the same spec and weights."""
    pytest.importorskip("captum")
    if not have("torch"):
        pytest.skip("Captum needs the torch backend")
    model, _ = build("torch", SPEC)
    return model.eval()


def under_test(backend, reference):
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    return reference if backend == "torch" else build(backend, SPEC)[0]


def torch_groups(e):
    import torch

    return torch.from_numpy(e.options["groups"].astype(np.int64))[:, None]  # (N, 1, H, W)


def captum_baseline(baseline):
    import torch

    return torch.from_numpy(nchw(baseline if baseline.ndim == 4 else baseline[None])) if np.ndim(baseline) else float(baseline)


CASES = [  # (options, baseline)
    ({"features": "patches", "patch_size": 4}, 0.2),
    ({"features": "superpixels", "n_segments": 6}, "per-sample"),
    ({"features": np.repeat(np.arange(4) * 7 - 3, 64).reshape(16, 16)}, "image"),  # user ids, not 0..G-1
]


def baseline_for(kind, x):
    if kind == "per-sample":
        return images(len(x), seed=11) * 0.5
    if kind == "image":
        return images(1, seed=12)[0] * 0.5
    return np.float32(kind)


# --------------------------------------------------------------------------------------------
# Captum, same groups and same draws
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_feature_ablation_matches_captum(backend, reference):
    import torch
    from captum.attr import FeatureAblation

    model = under_test(backend, reference)
    x = images(3, seed=1)
    for options, kind in CASES:
        base = baseline_for(kind, x)
        e = explain(model, x, "feature_ablation", target=TARGETS, baseline=base, **options)
        assert e.attribution.shape == (3, 16, 16)
        ref = FeatureAblation(reference).attribute(
            torch.from_numpy(nchw(x)), baselines=captum_baseline(base), target=TARGETS, feature_mask=torch_groups(e)
        ).numpy()
        assert rel(e.attribution, ref[:, 0]) <= 1e-4, options
        assert e.options["forward_passes"] == 3 + int(e.options["n_groups"].sum())


@pytest.mark.parametrize("backend", ALL)
def test_feature_permutation_matches_captum(backend, reference):
    import torch
    from captum.attr import FeaturePermutation

    model = under_test(backend, reference)
    x = images(3, seed=2)
    for options in ({"patch_size": (8, 4)}, {"features": "superpixels", "n_segments": 5}):
        e = explain(model, x, "feature_permutation", target=TARGETS, seed=3, **options)
        groups, perms = torch_groups(e), e.options["permutations"]
        assert not any(np.array_equal(p, np.arange(3)) for p in perms)

        def permute(batch, mask, groups=groups, perms=perms):  # Captum: once per group, with its mask
            g = int(groups[mask.expand_as(groups)][0])
            return batch[torch.from_numpy(perms[g])] * mask + batch * ~mask

        ref = FeaturePermutation(reference, perm_func=permute).attribute(
            torch.from_numpy(nchw(x)), target=TARGETS, feature_mask=groups
        ).numpy()
        assert rel(e.attribution, ref[:, 0]) <= 1e-4, options


@pytest.mark.parametrize("backend", ALL)
def test_shapley_sampling_matches_captum(backend, reference):
    import torch
    from captum.attr import ShapleyValueSampling

    model = under_test(backend, reference)
    x = images(2, seed=4)
    for options, kind in CASES[:2]:
        base = baseline_for(kind, x)
        e = explain(model, x, "shapley_sampling", target=TARGETS[:2], baseline=base, n_samples=3, seed=5, **options)
        groups = torch_groups(e)
        for i in range(2):
            svs = ShapleyValueSampling(reference)
            svs.permutation_generator = lambda g, k, o=e.options["orderings"][i]: (p.tolist() for p in o)
            b = captum_baseline(base[i : i + 1] if np.ndim(base) == 4 else base)
            ref = svs.attribute(torch.from_numpy(nchw(x[i : i + 1])), baselines=b, target=TARGETS[i],
                                feature_mask=groups[i : i + 1], n_samples=3).numpy()
            assert rel(e.attribution[i], ref[0, 0]) <= 1e-4, (options, i)
        # efficiency: a sample's group values add up to S(x) - S(baseline)
        totals = [(a.ravel() / np.bincount(g.ravel())[g.ravel()]).sum() for g, a in zip(e.options["groups"], e.attribution)]
        np.testing.assert_allclose(totals, e.scores - e.options["baseline_scores"], rtol=1e-4, atol=1e-5)
        g = e.options["n_groups"]
        assert e.options["forward_passes"] == int((2 + 3 * (g - 1)).sum())


def float64_surrogate(alpha):
    """A Captum interpretable model fitting scikit-learn's Ridge (alpha > 0) or LinearRegression
    with sample weights in float64 (Captum's own wrappers fit in float32)."""
    import torch
    from captum._utils.models.model import Model
    from sklearn.linear_model import LinearRegression, Ridge

    class Float64(Model):
        def fit(self, train_data, **kwargs):
            z, y, w = (t.double().numpy() for t in next(iter(train_data)))
            est = Ridge(alpha=alpha) if alpha else LinearRegression()
            est.fit(z, y, sample_weight=w)
            self.coef = torch.from_numpy(est.coef_)

        def representation(self):
            return self.coef

        def __call__(self, z):
            return z.double() @ self.coef

    return Float64()


def replay(coalitions):
    """A Captum perturbation generator that yields polyviz's on/off vectors."""
    import torch

    def generate(original, **kwargs):
        for z in coalitions:
            yield torch.from_numpy(z[None].astype(np.int64))

    return generate


@pytest.mark.parametrize("backend", ALL)
def test_lime_matches_captum(backend, reference):
    import torch
    from captum.attr import Lime

    model = under_test(backend, reference)
    x = images(2, seed=6)
    for (options, kind), alpha in zip(CASES[:2], (1.0, 0.0)):
        base = baseline_for(kind, x)
        e = explain(model, x, "lime", target=TARGETS[:2], baseline=base, n_samples=40, alpha=alpha, seed=7, **options)
        groups = torch_groups(e)
        for i in range(2):
            lime = Lime(reference, interpretable_model=float64_surrogate(alpha), perturb_func=replay(e.options["coalitions"][i]))
            b = captum_baseline(base[i : i + 1] if np.ndim(base) == 4 else base)
            ref = lime.attribute(torch.from_numpy(nchw(x[i : i + 1])), baselines=b, target=TARGETS[i],
                                 feature_mask=groups[i : i + 1], n_samples=40).numpy()
            assert rel(e.attribution[i], ref[0, 0]) <= 1e-4, (options, i)


@pytest.mark.parametrize("backend", ALL)
def test_kernel_shap_matches_captum(backend, reference):
    import torch
    from captum.attr import KernelShap

    model = under_test(backend, reference)
    x = images(2, seed=8)
    for options, kind in CASES[:2]:
        base = baseline_for(kind, x)
        e = explain(model, x, "kernel_shap", target=TARGETS[:2], baseline=base, n_samples=60, seed=9, **options)
        groups = torch_groups(e)
        for i in range(2):
            z = e.options["coalitions"][i]
            assert z[0].all() and not z[1].any() and (z[2:].sum(1) >= 1).all() and (z[2:].sum(1) < z.shape[1]).all()
            ks = KernelShap(reference)
            ks.perturb_func, ks.interpretable_model = replay(z), float64_surrogate(0.0)
            b = captum_baseline(base[i : i + 1] if np.ndim(base) == 4 else base)
            ref = ks.attribute(torch.from_numpy(nchw(x[i : i + 1])), baselines=b, target=TARGETS[i],
                               feature_mask=groups[i : i + 1], n_samples=60).numpy()
            assert rel(e.attribution[i], ref[0, 0]) <= 1e-4, (options, i)


# --------------------------------------------------------------------------------------------
# RISE: closed form on a linear model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_rise_closed_form_on_a_linear_model(backend):
    """S(x) = w_t . x + c_t: the masked scores are known in closed form, the masks are rebuilt with
    torch's bilinear upsampling (align_corners=False) and cropped at the returned offsets."""
    import torch
    import torch.nn.functional as F

    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    spec = NetworkSpec((14, 13, 3), (LayerSpec("flatten", "flatten"),
                                     LayerSpec("dense", "predictions", {"units": 4, "activation": None, "use_bias": True})))
    from polyviz.models.spec import random_weights

    weights = random_weights(spec, 3)
    model, _ = build(backend, spec, seed=3)
    x = images(2, (14, 13, 3), seed=10)
    base = images(1, (14, 13, 3), seed=13)[0]
    for score, baseline in (("logit", 0.0), ("softmax", base)):
        e = explain(model, x, "rise", target=[1, 3], n_masks=50, grid=3, p=0.4, score=score, baseline=baseline,
                    seed=4, batch_size=16)
        grids, offsets = e.options["grids"], e.options["offsets"]
        assert grids.shape == (50, 3, 3) and set(np.unique(grids)) <= {0.0, 1.0}
        up = F.interpolate(torch.from_numpy(grids)[:, None].double(), size=(20, 20), mode="bilinear", align_corners=False)
        masks = np.stack([m[0, oy : oy + 14, ox : ox + 13] for m, (oy, ox) in zip(up.numpy(), offsets)])  # (M, H, W)
        kernel, bias = weights["predictions"]["kernel"].astype(np.float64), weights["predictions"]["bias"]
        expected = []
        for i, t in enumerate([1, 3]):
            masked = x[i][None] * masks[..., None] + np.asarray(baseline, np.float64) * (1 - masks[..., None])
            logits = masked.reshape(50, -1) @ kernel + bias
            s = logits[:, t] if score == "logit" else np.exp(logits[:, t]) / np.exp(logits).sum(1)
            expected.append(np.einsum("m,mhw->hw", s, masks) / (50 * 0.4))
        assert rel(e.attribution, np.stack(expected)) <= 1e-5, score


# --------------------------------------------------------------------------------------------
# feature groups
# --------------------------------------------------------------------------------------------


def test_superpixels_sanity():
    rng = np.random.default_rng(0)
    for shape, n in [((32, 40, 3), 12), ((17, 9, 1), 5), ((64, 64, 3), 50)]:
        labels = superpixels(rng.random(shape), n)
        assert labels.shape == shape[:2] and labels.dtype == np.int64
        assert labels.min() == 0 and (np.bincount(labels.ravel()) > 0).all()  # labels 0..G-1, none empty
    two = np.zeros((20, 18, 3))
    two[:, :7] = (1.0, 0.0, 0.0)
    two[:, 7:] = (0.0, 0.0, 1.0)
    for n in (2, 4, 9):
        labels = superpixels(two, n)
        for g in range(labels.max() + 1):
            cols = np.nonzero(labels == g)[1]
            assert (cols < 7).all() or (cols >= 7).all(), (n, g)  # no superpixel crosses the colour edge
    assert len(np.unique(superpixels(np.zeros((8, 8, 3)), 1))) == 1


def test_feature_groups_kinds():
    x = images(2, (6, 10, 3))
    np.testing.assert_array_equal(feature_groups(x, "pixels").labels[1], pixels(6, 10))
    tiles = patches(6, 10, (4, 3))
    assert tiles.max() == 2 * 4 - 1 and tiles[5, 9] == 7 and tiles[3, 2] == 0
    mask = np.where(np.arange(10) < 4, 9, -2)[None].repeat(6, 0)
    part = feature_groups(x, mask)
    assert part.shared and list(part.counts) == [2, 2] and part.labels[0, 0, 0] == 1  # -2 -> 0, 9 -> 1
    part = feature_groups(x, np.stack([mask, mask * 0]))
    assert not part.shared and list(part.counts) == [2, 1]
    assert not feature_groups(x, "superpixels", n_segments=4).shared


@pytest.mark.parametrize("backend", ALL)
def test_batching_is_invisible(backend):
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    model, _ = build(backend, SPEC)
    x = images(3, seed=14)
    kw = {"target": [1, 2, 3], "features": "superpixels", "n_segments": 6, "n_samples": 4}
    whole = explain(model, x, "shapley_sampling", **kw)
    for bs in (1, 7):
        e = explain(model, x, "shapley_sampling", batch_size=bs, **kw)
        np.testing.assert_allclose(e.attribution, whole.attribution, rtol=1e-5, atol=1e-6)


def test_torch_native_layout():
    """A torch user's NCHW batch and NCHW per-sample baseline give the NHWC maps; masks stay (N, H, W)."""
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", SPEC)
    x, base = images(2, seed=15), images(2, seed=16)
    mask = np.stack([patches(16, 16, 4), patches(16, 16, (16, 8))])
    for method in ("feature_ablation", "shapley_sampling", "kernel_shap", "rise"):
        options = {"n_masks": 20, "grid": 4} if method == "rise" else {"features": mask}
        if method in ("shapley_sampling", "kernel_shap"):
            options["n_samples"] = 4
        a = explain(model, x, method, target=[0, 1], baseline=base, **options)
        b = polyviz.explain(model, nchw(x), method, target=[0, 1], baseline=nchw(base), progress=False, **options)
        assert b.attribution.shape == (2, 16, 16)
        np.testing.assert_allclose(b.attribution, a.attribution, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ALL)
def test_bad_options(backend):
    if not have(backend):
        pytest.skip(f"the {backend} backend is not available")
    model, _ = build(backend, SPEC)
    x = images(2)
    cases = [
        ("feature_ablation", {"features": "superpixel"}, "features: unknown.*Did you mean 'superpixels'"),
        ("lime", {"features": np.zeros((16, 15), int)}, r"features: .*\(H, W\) = \(16, 16\).*got shape \(16, 15\)"),
        ("kernel_shap", {"features": np.zeros((3, 16, 16), int)}, "features: .*one per sample"),
        ("shapley_sampling", {"features": np.zeros((16, 16))}, "features: .*integer group ids"),
        ("feature_ablation", {"features": "patches", "patch_size": 0}, "patch_size"),
        ("feature_ablation", {"features": "superpixels", "n_segments": 0}, "n_segments"),
        ("shapley_sampling", {"n_samples": 0}, "n_samples: expected an int >= 1"),
        ("lime", {"n_samples": 0}, "n_samples"),
        ("lime", {"kernel_width": 0}, "kernel_width"),
        ("kernel_shap", {"n_samples": -3}, "n_samples"),
        ("rise", {"n_masks": 0}, "n_masks"),
        ("rise", {"p": 1.5}, "p: expected a probability"),
        ("rise", {"grid": 17}, "grid"),
        ("feature_ablation", {"baseline": np.zeros((5, 16, 16, 3))}, "baseline"),
    ]
    for name, options, message in cases:
        with pytest.raises(InputError, match=message):
            explain(model, x, name, target=0, **options)
    with pytest.raises(InputError, match="x: feature_permutation .* at least 2 samples"):
        explain(model, x[:1], "feature_permutation", target=0)


# --------------------------------------------------------------------------------------------
# across frameworks on converted VGG16
# --------------------------------------------------------------------------------------------


def halves(side):
    """Left and right half of a ``side`` px image as two groups: few passes."""
    return np.repeat(np.repeat([[0, 1]], side // 2, axis=1), side, axis=0)


VGG_CASES = [  # 25 forward passes per framework and precision in all
    ("feature_ablation", {}),
    ("feature_permutation", {}),
    ("shapley_sampling", {"n_samples": 2}),
    ("lime", {"n_samples": 4}),
    ("kernel_shap", {"n_samples": 4}),
    ("rise", {"n_masks": 4, "grid": 2}),
]


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_torchvision_vgg16_and_its_keras_conversion_agree(size):
    """torchvision's VGG16 and its Keras conversion ("mini", a narrow 64 px VGG16, by default; 224 px
    in the slow set). The perturbation draws come from one numpy seed, so every difference is in the
    scores: compared in float64 to 1e-6, and in float32 against the noise floor measured here
    (backends.assert_agree) rather than the fixed 1e-3 that held on one machine (a float32 near-tie
    in a pool can move a score by more on another CPU)."""
    results = {}
    for float64 in (False, True):
        tmodel, conv = converted_vgg16(size, float64=float64)
        for method, options in VGG_CASES:
            n = 2 if method == "feature_permutation" else 1
            x = np.random.default_rng(1).random((n, px(size), px(size), 3)).astype(np.float32)
            kw = dict(options, target=[3, 7][:n], **({} if method == "rise" else {"features": halves(px(size))}))
            results[method, "torch", float64] = explain(tmodel, x, method, **kw).attribution
            results[method, "keras", float64] = explain(conv.model, x, method, **kw).attribution
        del tmodel, conv
        release()
    for method, _ in VGG_CASES:
        assert_agree(*(results[method, b, f] for f in (False, True) for b in ("torch", "keras")), method)


@pytest.mark.parametrize("size", SIZES)
def test_captum_feature_ablation_on_vgg16(size):
    """Captum's FeatureAblation on (seeded) torchvision VGG16 with four quadrants as groups ("mini"
    by default, 224 px in the slow set)."""
    import torch
    from captum.attr import FeatureAblation

    tv = torchvision_vgg16(size)
    side = px(size)
    quadrants = np.repeat(np.repeat(np.arange(4).reshape(2, 2), side // 2, axis=0), side // 2, axis=1)
    x = np.random.default_rng(1).random((1, side, side, 3)).astype(np.float32)
    ours = explain(tv, x, "feature_ablation", target=3, features=quadrants)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    mask = torch.from_numpy(quadrants)[None, None].expand(1, 3, side, side)
    expected = FeatureAblation(tv).attribute(xt, target=3, feature_mask=mask, baselines=0.0)
    assert np.abs(ours.attribution).max() > 0
    assert rel(ours.attribution, expected[:, 0].detach().numpy()) <= 1e-4
