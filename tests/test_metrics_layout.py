"""Issue 18, item 0: a torch user's NCHW attribution (N, 3, H, W) passed as a raw array without
``layout`` used to be read channels-last by the pointing game (summed over W into (N, 3, H)
"maps" that passed the shape check), silently. Raw arrays are now read in the one layout that fits
the masks, refused when ambiguous, and maps whose aspect ratio differs from the masks' are refused,
at every metric entry point that takes raw arrays."""

import numpy as np
import pytest

import polyviz.metrics as M
from backends import ALL, build
from polyviz.errors import InputError
from polyviz.models.spec import vgg_spec

SIZE = 16


def object_masks(n=4, seed=0):
    """Boxes of different places and sizes, one per image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 6, 2)
        masks[i, y:y + 5, x:x + 5] = True
    return masks


def test_regression_nchw_raw_attribution_is_not_misread():
    """The closed form: an attribution equal to the object (every channel) always hits. Read as
    channels-last it was summed over W and scored 1 of 4 here; now it scores 4 of 4."""
    masks = object_masks()
    a = np.repeat(masks[:, None].astype(np.float32), 3, axis=1)  # (N, 3, H, W), a torch user's layout
    assert M.pointing_game(None, None, masks, attribution=a).all()
    assert M.pointing_game(None, None, masks, attribution=a, layout="NCHW").all()
    assert M.pointing_game(None, None, masks, attribution=a.transpose(0, 2, 3, 1)).all()
    # what the old code computed, (N, 3, H) maps, is refused rather than scored
    misread = np.abs(a).sum(axis=-1)
    with pytest.raises(InputError, match="aspect ratio"):
        M.pointing_game(None, None, masks, attribution=misread)
    with pytest.raises(InputError, match="aspect ratio"):
        M.pointing_game(None, None, masks, attribution=a, layout="NHWC")


def test_ambiguous_raw_array_is_refused():
    masks = object_masks()
    a = np.ones((4, SIZE, SIZE, SIZE), np.float32)  # C == H == W: NCHW and NHWC both fit
    with pytest.raises(InputError, match="reads as NCHW and as NHWC"):
        M.pointing_game(None, None, masks, attribution=a)
    assert M.pointing_game(None, None, masks, attribution=a, layout="NHWC").shape == (4,)


def test_aspect_ratio_rule():
    from polyviz.metrics._common import check_aspect, raw_layout

    check_aspect((7, 7), (224, 224))
    check_aspect((4, 5), (15, 20))  # floor of a stride-4 division
    check_aspect((1, 1), (64, 64))
    for bad in ((3, 16), (16, 3), (4, 8)):
        with pytest.raises(InputError, match="aspect ratio"):
            check_aspect(bad, (16, 16))
    assert raw_layout((2, 3, 16, 16), (16, 16), None) == "NCHW"
    assert raw_layout((2, 16, 16, 3), (16, 16), None) == "NHWC"
    assert raw_layout((2, 3, 16, 24), (16, 24), None) == "NCHW"
    with pytest.raises(InputError, match="spatial axes"):
        raw_layout((2, 3, 8, 30), (16, 16), None)


@pytest.mark.parametrize("backend", ALL)
def test_every_map_metric_reads_raw_arrays_the_same_way(backend):
    """Localisation and complexity metrics share the entry point: an NCHW or NHWC raw array gives
    the same values as the Explanation; with a model, an array in the other layout is refused with
    a hint."""
    spec = vgg_spec([[4]], input_shape=(SIZE, SIZE, 3), dense=(8,), classes=3)
    model, _ = build(backend, spec, seed=0)
    x = np.random.default_rng(1).uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    layout = "NCHW" if backend == "torch" else "NHWC"
    xn = x.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else x
    masks = object_masks()
    e = __import__("polyviz").explain(model, xn, "saliency", progress=False)
    raw = np.asarray(e.attribution)
    for name in ("relevance_mass_accuracy", "relevance_rank_accuracy", "attribution_localisation", "auc",
                 "pointing_game"):
        fn = M.METRICS[name].fn
        a = np.asarray(fn(None, None, masks, attribution=e), np.float64)
        b = np.asarray(fn(None, None, masks, attribution=raw), np.float64)
        c = np.asarray(fn(model, xn, masks, attribution=raw, progress=False), np.float64)
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(a, c, err_msg=name)
    other = raw.transpose(0, 2, 3, 1) if layout == "NCHW" else raw.transpose(0, 3, 1, 2)
    with pytest.raises(InputError, match="it looks"):
        M.relevance_mass_accuracy(model, xn, masks, attribution=other, progress=False)
