"""Occlusion against real references: a hand-computed loop over windows, Captum's Occlusion, and
torch against Keras. Batching equivalences compare two polyviz paths."""

import numpy as np
import pytest
from numpy_backend import NumpyBackend

import polyviz
import polyviz.models
from backends import SIZES, assert_agree, both_frameworks, build, have, px, rel, release, seeded_vgg16
from polyviz.errors import InputError
from polyviz.models.spec import random_weights, vgg_spec
from polyviz.testing import tiny_spec


def explain(model, x, **kw):
    kw.setdefault("progress", False)
    return polyviz.explain(model, x, "occlusion", layout="NHWC", **kw)


def images(n, shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def by_hand(forward, x, target, window, stride, baseline):
    """Zeiler & Fergus' loop, one window at a time: the mean score drop over covering windows."""
    h, w = x.shape[:2]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    clean = forward(x[None])[0, target]
    y0 = 0
    while True:
        x0 = 0
        while True:
            occluded = x.copy()
            occluded[y0 : y0 + window[0], x0 : x0 + window[1]] = baseline[y0 : y0 + window[0], x0 : x0 + window[1]]
            total[y0 : y0 + window[0], x0 : x0 + window[1]] += clean - forward(occluded[None])[0, target]
            count[y0 : y0 + window[0], x0 : x0 + window[1]] += 1
            if x0 + window[1] >= w:
                break
            x0 += stride[1]
        if y0 + window[0] >= h:
            break
        y0 += stride[0]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def test_matches_the_window_loop(bk):
    model, _ = build(bk, tiny_spec())
    x = images(2, (12, 12, 3), seed=1)
    base = images(1, (12, 12, 3), seed=2)[0] * 0.3
    ref_net = NumpyBackend.build(tiny_spec(), random_weights(tiny_spec(), 0))[0]
    forward = NumpyBackend(ref_net).forward
    for window, stride, baseline in [((5, 5), (3, 3), 0.0), ((4, 6), (4, 5), base), (3, 2, 0.5)]:
        e = explain(model, x, target=[1, 3], window=window, stride=stride, baseline=baseline)
        assert e.attribution.shape == (2, 12, 12)
        pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
        full = np.broadcast_to(np.asarray(baseline, np.float32), x.shape[1:])
        for i, t in enumerate([1, 3]):
            expected = by_hand(forward, x[i], t, pair(window), pair(stride), full)
            np.testing.assert_allclose(e.attribution[i], expected, rtol=1e-4, atol=1e-6, err_msg=f"{window} {stride}")


def test_uncovered_pixels_are_zero(bk):
    model, _ = build(bk, tiny_spec())
    x = images(1, (12, 12, 3), seed=3)
    e = explain(model, x, target=0, window=2, stride=5)  # windows at 0, 5, 10: columns 2-4, 7-9 uncovered
    assert np.all(e.attribution[0][:, [2, 3, 4, 7, 8, 9]] == 0)
    assert np.all(e.attribution[0][[2, 3, 4, 7, 8, 9], :] == 0)
    covered = np.ix_([0, 1, 5, 6, 10, 11], [0, 1, 5, 6, 10, 11])
    assert np.abs(e.attribution[0][covered]).max() > 0


def test_batching_is_invisible(bk):
    model, _ = build(bk, tiny_spec())
    x = images(3, (12, 12, 3), seed=4)
    t = np.array([4, 0, 2])
    base = images(3, (12, 12, 3), seed=5) * 0.2  # one baseline per sample
    whole = explain(model, x, target=t, window=4, stride=3, baseline=base)
    assert whole.options["forward_passes"] == 3 * (16 + 1)
    for bs in (1, 5, 100):
        e = explain(model, x, target=t, window=4, stride=3, baseline=base, batch_size=bs)
        np.testing.assert_allclose(e.attribution, whole.attribution, rtol=1e-4, atol=1e-6, err_msg=f"batch_size={bs}")
    for i in range(3):
        one = explain(model, x[i : i + 1], target=int(t[i]), window=4, stride=3, baseline=base[i])
        np.testing.assert_allclose(one.attribution[0], whole.attribution[i], rtol=1e-4, atol=1e-6)


def test_bad_options(bk):
    model, _ = build(bk, tiny_spec())
    x = images(2, (12, 12, 3))
    for kw, message in [({"window": 13}, "window: 13x13 is larger"), ({"window": (3, 0)}, "window"),
                        ({"stride": "big"}, "stride"), ({"baseline": np.zeros((5, 12, 12, 3)), "window": 3}, "baseline"),
                        ({"windows": 3}, "windows: not an option.*window")]:
        with pytest.raises(InputError, match=message):
            explain(model, x, target=0, **kw)


# --------------------------------------------------------------------------------------------
# Captum (torch)
# --------------------------------------------------------------------------------------------


def test_captum_occlusion():
    pytest.importorskip("captum")
    import torch
    from captum.attr import Occlusion

    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model, _ = build("torch", vgg_spec([[4], [8, 8]], input_shape=(20, 20, 3), dense=(16,), classes=6))
    model.eval()
    x = images(2, (20, 20, 3), seed=6)
    base = images(1, (20, 20, 3), seed=7)[0] * 0.5
    t = [2, 5]
    for window, stride, baseline in [((6, 6), (4, 4), 0.0), ((7, 5), (3, 5), base), ((20, 4), (1, 4), 0.25)]:
        ref_base = torch.from_numpy(nchw(base[None])) if isinstance(baseline, np.ndarray) else baseline
        ref = Occlusion(model).attribute(torch.from_numpy(nchw(x)), sliding_window_shapes=(3, *window),
                                         strides=(3, *stride), baselines=ref_base, target=t).detach().numpy()
        np.testing.assert_allclose(ref, np.repeat(ref[:, :1], 3, axis=1), rtol=1e-6)  # same on every channel
        e = explain(model, x, target=t, window=window, stride=stride, baseline=baseline)
        assert rel(e.attribution, ref[:, 0]) <= 1e-4, (window, stride)


@pytest.mark.parametrize("size", SIZES)
def test_captum_occlusion_seeded_vgg16(size):
    pytest.importorskip("captum")
    import torch
    from captum.attr import Occlusion

    if not have("torch"):
        pytest.skip("the torch backend is not available")
    model = seeded_vgg16(size, "torch")
    x = images(1, (px(size), px(size), 3), seed=0)
    w = 64 if size == "full" else 16  # at 224 px the last row and column of windows are partial
    ref = Occlusion(model).attribute(torch.from_numpy(nchw(x)), sliding_window_shapes=(3, w, w),
                                     strides=(3, w, w), target=9, perturbations_per_eval=16).detach().numpy()
    e = explain(model, x, target=9, window=w, stride=w)
    assert rel(e.attribution, ref[:, 0]) <= 1e-4


# --------------------------------------------------------------------------------------------
# across frameworks
# --------------------------------------------------------------------------------------------


@both_frameworks
def nchw_images(options):
    """Image-valued options (baselines) in torch's layout, as a torch user passes them."""
    return {k: (np.moveaxis(v, -1, -3) if k in ("baseline", "baselines") and np.ndim(v) >= 3 else v) for k, v in options.items()}


def test_same_maps_in_torch_and_keras():
    if not (have("torch") and have("keras")):
        pytest.skip("needs both backends")
    from polyviz.models import convert

    tmodel, _ = build("torch", vgg_spec([[4], [8, 8]], input_shape=(16, 16, 3), dense=(16,), classes=6))
    kmodel = convert(tmodel, to="keras").model
    x = images(2, (16, 16, 3), seed=8)
    base = images(2, (16, 16, 3), seed=9)
    for kw in ({"window": 5, "stride": 3}, {"window": (4, 8), "stride": (4, 2), "baseline": base}):
        a = explain(tmodel, x, target=[0, 4], **kw)
        b = explain(kmodel, x, target=[0, 4], **kw)
        assert np.abs(a.attribution).max() > 0
        assert rel(b.attribution, a.attribution) <= 1e-3, kw
        native = polyviz.explain(tmodel, nchw(x), "occlusion", target=[0, 4], progress=False, **nchw_images(kw))
        assert native.attribution.shape == (2, 16, 16)  # a map: no channel axis in any layout
        assert rel(native.attribution, a.attribution) <= 1e-6


@both_frameworks
@pytest.mark.parametrize("size", SIZES)
def test_seeded_vgg16_torch_and_keras(size):
    """Seeded VGG16 in both frameworks, windows of half the image at quarter strides; "mini" by
    default, 224 px in the slow set. Occlusion differences are score differences, continuous in
    the weights, but a ReLU/max-pool near-tie that float32 resolves differently on another CPU still
    moves a score: compared in float64 to 1e-6, and in float32 to the measured noise floor
    (backends.assert_agree) instead of the fixed 1e-3 that held on one machine."""
    x = images(1, (px(size), px(size), 3), seed=1)
    results = [explain(seeded_vgg16(size, backend, float64=float64), x, target=3, window=px(size) // 2,
                       stride=px(size) // 4).attribution
               for float64 in (False, True) for backend in ("torch", "keras")]
    release()
    assert_agree(*results, "occlusion")
