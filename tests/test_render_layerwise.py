"""Golden-pixel tests for polyviz.render.layerwise (a few channels of several layers side by side,
Chollet's DLwP 5.4.1 cut to a few channels per layer): tiny arrays whose pixels are worked out by
hand, the per-tile normalisation checked against Chollet's formula, and the errors."""

import numpy as np
import pytest
from matplotlib import colormaps

from polyviz import render as R
from polyviz.errors import InputError


def grey(v):
    v = np.asarray(v, dtype=np.float64)
    return np.stack([v, v, v], axis=-1)


def two_layers():
    a = np.zeros((2, 2, 3))
    a[..., 0] = [[0, 1], [2, 3]]  # minmax -> 0, 85, 170, 255
    a[..., 1] = 7.0  # constant -> 0
    a[..., 2] = [[3, 2], [1, 0]]
    b = np.zeros((2, 1, 2, 2))  # a batch of 2: sample 1 is drawn
    b[0, 0, :, 0] = [9, 5]
    b[1, 0, :, 0] = [5, 9]  # -> 0, 255, resized 1x2 -> 2x2 by repeating the row
    b[..., 1] = 4.0
    return {"shallow": a, "deep": b}


def test_layerwise_rows_tiles_resize_and_padding():
    got = R.layerwise(two_layers(), index=1, normalize="minmax", cmap=grey, titles=False, pad=1, background=99)
    # 2 rows x 3 columns of 2x2 tiles (the largest map's size), 1 pixel apart and from the border
    expected = np.full((7, 10), 99)
    expected[1:3, 1:3] = [[0, 85], [170, 255]]
    expected[1:3, 4:6] = 0
    expected[1:3, 7:9] = [[255, 170], [85, 0]]
    expected[4:6, 1:3] = [[0, 255], [0, 255]]  # the deep layer's 1x2 map, enlarged to 2x2
    expected[4:6, 4:6] = 0  # constant channel; the deep layer has no third channel: background
    assert got.dtype == np.uint8 and got.shape == (7, 10, 3)
    np.testing.assert_array_equal(got[..., 0], expected)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    # index=0 draws the other sample: its first deep tile is mirrored
    first = R.layerwise(two_layers(), index=0, normalize="minmax", cmap=grey, titles=False, pad=1, background=99)
    np.testing.assert_array_equal(first[4:6, 1:3, 0], [[255, 0], [255, 0]])
    np.testing.assert_array_equal(first[1:3], got[1:3])


def test_layerwise_channel_selection_and_count():
    acts = two_layers()
    got = R.layerwise(acts, channels=[-1, 0], index=1, normalize="minmax", cmap=grey, titles=False, pad=0)
    assert got.shape == (4, 4, 3)
    np.testing.assert_array_equal(got[0:2, 0:2, 0], [[255, 170], [85, 0]])  # shallow ch -1 = 2
    np.testing.assert_array_equal(got[0:2, 2:4, 0], [[0, 85], [170, 255]])  # shallow ch 0
    np.testing.assert_array_equal(got[2:4, 0:2, 0], 0)  # deep ch -1 = 1 (constant)
    np.testing.assert_array_equal(got[2:4, 2:4, 0], [[0, 255], [0, 255]])  # deep ch 0
    # a list must fit every layer: the deep one has no channel 2
    with pytest.raises(InputError, match=r"channels: 2 .*'deep'.* 2 channels"):
        R.layerwise(acts, channels=[2, 0], index=1)
    one = R.layerwise(acts, channels=1, index=1, normalize="minmax", cmap=grey, titles=False, pad=0)
    np.testing.assert_array_equal(one[..., 0], [[0, 85], [170, 255], [0, 255], [0, 255]])


def test_layerwise_nearest_resize_to_a_given_size():
    m = np.arange(6, dtype=np.float64).reshape(2, 3, 1)  # minmax -> v / 5
    got = R.layerwise({"m": m}, size=(4, 6), normalize="minmax", cmap=grey, titles=False, pad=0)
    # output pixel (i, j) shows source (i * 2 // 4, j * 3 // 6): every pixel a 2x2 block
    np.testing.assert_array_equal(got[..., 0], np.round(np.kron(m[..., 0] / 5, np.ones((2, 2))) * 255))
    # a non-integer ratio: 3x3 -> 2x2 keeps source rows/cols 0 and 1 (i * 3 // 2)
    n = np.arange(9, dtype=np.float64).reshape(3, 3, 1)
    small = R.layerwise({"n": n}, size=2, normalize="none", cmap=grey, titles=False, pad=0)
    np.testing.assert_array_equal(small[..., 0], np.round(np.clip([[0, 1], [3, 4]], 0, 1) * 255))


def chollet_tile(x):
    """DLwP listing 5.30's per-channel normalisation, in float (polyviz rounds, Chollet truncates)."""
    x = (x - x.mean()) / x.std() * 64 + 128
    return np.clip(x, 0, 255) / 255


def test_layerwise_default_std_normalisation_and_viridis_match_chollet():
    rng = np.random.default_rng(3)
    shallow, deep = rng.gamma(1.0, size=(1, 8, 8, 5)), rng.gamma(1.0, size=(1, 2, 2, 5))
    got = R.layerwise({"conv1": shallow, "conv5": deep}, channels=4, titles=False, pad=0)  # size 8x8
    assert got.shape == (16, 32, 3)
    viridis = colormaps["viridis"]
    for c in range(4):
        np.testing.assert_array_equal(got[0:8, 8 * c : 8 * c + 8], np.round(viridis(chollet_tile(shallow[0, ..., c]))[..., :3] * 255))
        deep_tile = np.kron(chollet_tile(deep[0, ..., c]), np.ones((4, 4)))  # 2x2 -> 8x8: 4x4 blocks
        np.testing.assert_array_equal(got[8:16, 8 * c : 8 * c + 8], np.round(viridis(deep_tile)[..., :3] * 255))
    # each tile equals activation_grid's tile of the same channel
    np.testing.assert_array_equal(got[0:8], R.activation_grid(shallow, channels=4, pad=0))


def test_layerwise_titles_frame_the_same_tiles():
    acts = {"block1_conv1": np.random.default_rng(0).normal(size=(40, 40, 3)),
            "block5_conv3": np.random.default_rng(1).normal(size=(10, 10, 3))}
    plain = R.layerwise(acts, channels=[0, 2], titles=False, pad=2)
    titled = R.layerwise(acts, channels=[0, 2], pad=2)
    assert titled.shape[0] > plain.shape[0] and titled.shape[1] > plain.shape[1]  # column and row titles
    # the titles sit above and to the left: the tiles (and the pads right and below them) are unchanged
    np.testing.assert_array_equal(titled[-plain.shape[0] + 2 :, -plain.shape[1] + 2 :], plain[2:, 2:])
    assert (titled[:, : titled.shape[1] - plain.shape[1]] < 128).any()  # dark text in the row-title margin


@pytest.mark.parametrize(
    "acts, options, message",
    [
        ({}, {}, r"activations: expected a non-empty"),
        ([np.zeros((2, 2, 1))], {}, r"activations: expected a non-empty"),
        ({"fc1": np.zeros((1, 10))}, {}, r"activations\['fc1'\]: expected .*dense layer"),
        ({"c": np.zeros((2, 2, 2, 1))}, {"index": 2}, r"index: 2 is out of range.*2 samples"),
        ({"c": np.zeros((2, 2, 1))}, {"index": 1.5}, r"index: expected"),
        ({"c": np.zeros((2, 2, 1))}, {"normalize": "max"}, r"normalize: expected one of"),
        ({"c": np.zeros((2, 2, 1))}, {"size": 0}, r"size"),
        ({"c": np.zeros((2, 2, 1))}, {"size": (2, 2, 2)}, r"size: expected a tile side"),
        ({"c": np.zeros((2, 2, 1))}, {"channels": 0}, r"channels"),
        ({"c": np.zeros((2, 2, 1))}, {"channels": ["x"]}, r"channels: expected a count or a list"),
        ({"c": np.full((2, 2, 1), np.nan)}, {}, r"activations\['c'\]: contains NaN"),
    ],
)
def test_layerwise_errors_name_the_argument(acts, options, message):
    with pytest.raises(InputError, match=message):
        R.layerwise(acts, **options)
