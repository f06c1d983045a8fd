"""Golden-image tests for polyviz.render: small arrays whose exact pixels are worked out by hand
(closed form) or by transcriptions of the reference code (pytorch-cnn-visualizations'
misc_functions, Chollet's DLwP 5.4 activation grid, matplotlib's colour maps)."""

import io

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from PIL import Image

import polyviz
from polyviz import render as R
from polyviz.errors import InputError
from polyviz.explanation import Explanation


def red_blue(v):
    """A colour map with exactly known colours: value v -> (v, 0, 1 - v)."""
    v = np.asarray(v, dtype=np.float64)
    return np.stack([v, np.zeros_like(v), 1.0 - v], axis=-1)


def grey(v):
    v = np.asarray(v, dtype=np.float64)
    return np.stack([v, v, v], axis=-1)


BLACK_WHITE = ListedColormap(["black", "white"])  # v < 0.5 -> black, v >= 0.5 -> white
V = np.array([[-2.0, -1.0], [1.0, 4.0]])


# ---------------------------------------------------------------- sign, clipping, normalisation


@pytest.mark.parametrize(
    "sign, expected",
    [
        ("absolute", [[0.5, 0.25], [0.25, 1.0]]),
        ("absolute_value", [[0.5, 0.25], [0.25, 1.0]]),  # Captum's spelling
        ("positive", [[0.0, 0.0], [0.25, 1.0]]),
        ("negative", [[1.0, 0.5], [0.0, 0.0]]),  # scale is the largest negative magnitude, 2
        ("all", [[0.25, 0.375], [0.625, 1.0]]),  # 0.5 + 0.5 * v / 4
    ],
)
def test_normalise_sign_selection(sign, expected):
    np.testing.assert_array_equal(R.normalise(V, sign), expected)


def test_normalise_percentile_clipping_and_vmax():
    # |V| = 2, 1, 1, 4; its 50th percentile (linear interpolation) is (1 + 2) / 2 = 1.5
    np.testing.assert_allclose(R.normalise(V, "absolute", clip_percentile=50), [[1.0, 1 / 1.5], [1 / 1.5, 1.0]])
    # 100th percentile is the maximum: no clipping
    np.testing.assert_array_equal(R.normalise(V, "absolute", clip_percentile=100), R.normalise(V, "absolute"))
    # an explicit vmax wins over the data: both frameworks' maps on one scale
    np.testing.assert_array_equal(R.normalise(V, "absolute", vmax=2.0), [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_array_equal(R.normalise(V, "all", vmax=8.0), [[0.375, 0.4375], [0.5625, 0.75]])


def test_normalise_of_a_zero_map():
    zero = np.zeros((2, 3))
    np.testing.assert_array_equal(R.normalise(zero, "absolute"), np.zeros((2, 3)))
    np.testing.assert_array_equal(R.normalise(zero, "all"), np.full((2, 3), 0.5))
    np.testing.assert_array_equal(R.normalise(-np.ones((2, 2)), "positive"), np.zeros((2, 2)))


# ---------------------------------------------------------------- heat maps


def test_heatmap_exact_pixels_with_a_known_colour_map():
    # absolute: [[0.5, 0.25], [0.25, 1]] -> red = round(255 v) (127.5 rounds to even 128), blue = 255 - red
    got = R.heatmap(V, cmap=red_blue)
    expected = np.array([[[128, 0, 128], [64, 0, 191]], [[64, 0, 191], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8 and got.shape == (2, 2, 3)


def test_heatmap_two_colour_listed_map_and_sign_all():
    # all: [[0.25, 0.375], [0.625, 1]] -> black, black, white, white
    got = R.heatmap(V, sign="all", cmap=BLACK_WHITE)
    np.testing.assert_array_equal(got[..., 0], [[0, 0], [255, 255]])
    # negative: [[1, 0.5], [0, 0]] -> white, white (0.5 is the upper colour), black, black
    got = R.heatmap(V, sign="negative", cmap=BLACK_WHITE)
    np.testing.assert_array_equal(got[..., 1], [[255, 255], [0, 0]])


def test_heatmap_matches_matplotlib_colour_maps():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(7, 5))
    for name in ("jet", "viridis", "gray"):
        v = np.abs(m) / np.abs(m).max()
        expected = np.round(colormaps[name](v)[..., :3] * 255).astype(np.uint8)
        np.testing.assert_array_equal(R.heatmap(m, cmap=name), expected)
    # matplotlib's 256-entry grey table: gray(v) = floor(256 v) / 255, so v = 0.25 -> 64
    np.testing.assert_array_equal(R.heatmap(V, cmap="gray")[..., 0], [[128, 64], [64, 255]])
    # default maps: jet for one-signed, bwr (zero is white) for signed
    np.testing.assert_array_equal(R.heatmap(m), R.heatmap(m, cmap="jet"))
    np.testing.assert_array_equal(R.heatmap(m, sign="all"), R.heatmap(m, sign="all", cmap="bwr"))
    # a zero signed map is the middle of bwr: near white (matplotlib's table entry 128 is (255, 254, 254))
    np.testing.assert_array_equal(R.heatmap(np.zeros((1, 1)), sign="all"), [[[255, 254, 254]]])


def test_heatmap_accepts_a_colormap_object_and_h_w_1_maps():
    m = V[..., None]
    np.testing.assert_array_equal(R.heatmap(m, cmap=colormaps["magma"]), R.heatmap(V, cmap="magma"))


def test_heatmap_size_resizes_the_raw_map():
    big = R.heatmap(np.array([[0.0, 4.0]]), size=(3, 4), cmap=red_blue)
    # bilinear with half-pixel centres: 0, 1, 3, 4 -> 0, .25, .75, 1 of the maximum
    np.testing.assert_array_equal(big[..., 0], np.tile([0, 64, 191, 255], (3, 1)))


# ---------------------------------------------------------------- overlay, masked, alpha, original


def test_overlay_blend_arithmetic():
    image = np.full((2, 2, 3), 0.2)  # float in [0, 1]: taken as is
    m = np.array([[0.0, 1.0], [1.0, 0.0]])
    got = R.overlay(image, m, alpha=0.25, cmap=red_blue)
    # (1 - 0.25) * 0.2 + 0.25 * colour: 0.15 -> 38 (38.25), 0.15 + 0.25 = 0.4 -> 102
    cold, hot = [38, 38, 102], [102, 38, 38]
    np.testing.assert_array_equal(got, np.array([[cold, hot], [hot, cold]], dtype=np.uint8))
    # alpha 0 is the image, alpha 1 the bare heat map
    np.testing.assert_array_equal(R.overlay(image, m, alpha=0.0), np.full((2, 2, 3), 51, np.uint8))
    np.testing.assert_array_equal(R.overlay(image, m, alpha=1.0, cmap=red_blue), R.heatmap(m, cmap=red_blue))


def test_overlay_image_ranges():
    m = np.ones((2, 2))
    u8 = np.array([[[0], [255]], [[100], [7]]], dtype=np.uint8)  # grey uint8, (H, W, 1)
    np.testing.assert_array_equal(R.overlay(u8, m, alpha=0.0), np.repeat(u8, 3, axis=-1))
    wide = np.array([[-1.0, 3.0], [1.0, 0.0]])  # float outside [0, 1]: stretched, (x + 1) / 4
    np.testing.assert_array_equal(R.overlay(wide, m, alpha=0.0)[..., 0], [[0, 255], [128, 64]])
    # float in [0, 255]: divided by 255 like uint8
    np.testing.assert_array_equal(R.original(np.array([[3.0, 200.0]])), [[[3] * 3, [200] * 3]])
    # or with an explicit value range: -1 is black, 1 is white (3 saturates)
    np.testing.assert_array_equal(R.original(wide, value_range=(-1, 1))[..., 2], [[0, 255], [255, 128]])
    np.testing.assert_array_equal(R.original(np.ones((2, 2, 4), np.uint8) * 9), np.full((2, 2, 3), 9, np.uint8))


def test_overlay_resizes_a_layer_resolution_map():
    got = R.overlay(np.zeros((8, 6, 3)), np.full((2, 3), 5.0), alpha=1.0, cmap=red_blue)
    np.testing.assert_array_equal(got, np.broadcast_to(np.array([255, 0, 0], np.uint8), (8, 6, 3)))
    up = R.resize_map(np.array([[0.0, 1.0]]), (1, 4))  # bilinear, half-pixel centres
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)


def test_masked_image_soft_and_thresholded():
    image = np.full((2, 2, 3), 200, np.uint8)
    m = np.array([[0.0, 2.0], [-4.0, 4.0]])  # absolute -> w = [[0, 0.5], [1, 1]]
    np.testing.assert_array_equal(R.masked_image(image, m)[..., 0], [[0, 100], [200, 200]])
    np.testing.assert_array_equal(R.masked_image(image, m, threshold=0.5)[..., 0], [[0, 200], [200, 200]])
    np.testing.assert_array_equal(R.masked_image(image, m, threshold=0.75, fill=1.0)[..., 1], [[255, 255], [200, 200]])
    # positive: the negative pixel is masked out
    np.testing.assert_array_equal(R.masked_image(image, m, sign="positive")[..., 2], [[0, 100], [0, 200]])
    got = R.masked_image(image, m, threshold=0.75, fill=(1.0, 0.0, 0.0))
    np.testing.assert_array_equal(got[0, 0], [255, 0, 0])


def test_alpha_scaling():
    image = np.full((2, 2, 3), 200, np.uint8)
    m = np.array([[0.0, 1.0], [4.0, -4.0]])  # w = [[0, 0.25], [1, 1]]
    rgba = R.alpha_scaled(image, m)
    assert rgba.shape == (2, 2, 4)
    np.testing.assert_array_equal(rgba[..., :3], image)
    np.testing.assert_array_equal(rgba[..., 3], [[0, 64], [255, 255]])  # 63.75 -> 64
    on_white = R.alpha_scaled(image, m, background=1.0)
    # 200 w + 255 (1 - w): w = 0.25 -> 50 + 191.25
    np.testing.assert_array_equal(on_white[..., 0], [[255, 241], [200, 200]])


# ---------------------------------------------------------------- gradient pictures (misc_functions)


def ref_convert_to_grayscale(im_as_arr):
    """pytorch-cnn-visualizations misc_functions.convert_to_grayscale (CHW in, 1HW out)."""
    grayscale_im = np.sum(np.abs(im_as_arr), axis=0)
    im_max = np.percentile(grayscale_im, 99)
    im_min = np.min(grayscale_im)
    grayscale_im = np.clip((grayscale_im - im_min) / (im_max - im_min), 0, 1)
    return np.expand_dims(grayscale_im, axis=0)


def ref_positive_negative(gradient):
    """misc_functions.get_positive_negative_saliency."""
    pos_saliency = np.maximum(0, gradient) / gradient.max()
    neg_saliency = np.maximum(0, -gradient) / -gradient.min()
    return pos_saliency, neg_saliency


def ref_save_gradient_normalise(gradient):
    """The normalisation of misc_functions.save_gradient_images."""
    gradient = gradient - gradient.min()
    gradient /= gradient.max()
    return gradient


def test_gradient_image_min_max_exact():
    a = np.array([[[-1.0, 0.0, 1.0], [2.0, 3.0, -2.0]]])  # (1, 2, 3): min -2, max 3 -> (a + 2) / 5
    np.testing.assert_array_equal(R.gradient_image(a), [[[51, 102, 153], [204, 255, 0]]])
    chw = np.random.default_rng(1).normal(size=(3, 6, 5))
    expected = np.round(ref_save_gradient_normalise(chw.copy()).transpose(1, 2, 0) * 255)
    np.testing.assert_array_equal(R.gradient_image(chw.transpose(1, 2, 0)), expected)
    np.testing.assert_array_equal(R.gradient_image(np.ones((2, 2, 3))), np.zeros((2, 2, 3)))
    # clipping at the 1st/99th percentiles (of 101 values: the second smallest and largest) saturates outliers
    spike = np.linspace(-1.0, 1.0, 101)[None, :, None]
    spike[0, 0, 0], spike[0, 100, 0] = -100.0, 100.0
    clipped = R.gradient_image(spike, clip_percentile=99)[0, :, 0]
    assert clipped[0] == clipped[1] == 0 and clipped[100] == clipped[99] == 255 and clipped[50] in (127, 128)
    unclipped = R.gradient_image(spike)[0, :, 0]  # (a + 100) / 200: 0 -> 127.5 -> 128, 0.98 -> 128.75 -> 129
    assert unclipped[50] == 128 and unclipped[99] == 129


def test_grayscale_exact_and_against_misc_functions():
    a = np.zeros((2, 2, 3))
    a[..., 0] = [[-1.0, 2.0], [3.0, -5.0]]  # g = sum |a| = [[1, 2], [3, 5]]
    # no clipping: (g - 1) / 4 = [[0, .25], [.5, 1]]
    np.testing.assert_array_equal(R.grayscale(a, clip_percentile=None)[..., 0], [[0, 64], [128, 255]])
    # 50th percentile of g is 2.5: (g - 1) / 1.5 clipped
    np.testing.assert_array_equal(R.grayscale(a, clip_percentile=50)[..., 1], [[0, 170], [255, 255]])
    chw = np.random.default_rng(2).normal(size=(3, 9, 7))
    expected = np.round(ref_convert_to_grayscale(chw)[0] * 255)
    got = R.grayscale(chw.transpose(1, 2, 0))
    assert got.shape == (9, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], expected)


def test_positive_negative_exact_and_against_misc_functions():
    a = np.array([[2.0, -1.0], [-4.0, 0.0]])[..., None]
    pos, neg = R.positive_negative(a)
    np.testing.assert_array_equal(pos[..., 0], [[255, 0], [0, 0]])
    np.testing.assert_array_equal(neg[..., 2], [[0, 64], [255, 0]])
    chw = np.random.default_rng(3).normal(size=(3, 5, 4))
    ref_pos, ref_neg = ref_positive_negative(chw)
    pos, neg = R.positive_negative(chw.transpose(1, 2, 0))
    np.testing.assert_array_equal(pos, np.round(ref_pos.transpose(1, 2, 0) * 255))
    np.testing.assert_array_equal(neg, np.round(ref_neg.transpose(1, 2, 0) * 255))
    pos, neg = R.positive_negative(np.ones((2, 2, 3)))  # nothing negative: a black negative picture
    assert pos.min() == 255 and neg.max() == 0


def test_picture_dispatches_every_style():
    rng = np.random.default_rng(4)
    attr, image = rng.normal(size=(6, 5, 3)), rng.uniform(size=(6, 5, 3))
    m = attr.sum(axis=-1)
    np.testing.assert_array_equal(R.picture(attr, image), R.overlay(image, m))
    np.testing.assert_array_equal(R.picture(attr, None), R.heatmap(m))  # no image: the heat map
    np.testing.assert_array_equal(R.picture(attr, image, style="heatmap", sign="all"), R.heatmap(m, sign="all"))
    np.testing.assert_array_equal(R.picture(m, image, style="masked", threshold=0.5), R.masked_image(image, m, threshold=0.5))
    np.testing.assert_array_equal(R.picture(attr, image, style="alpha"), R.alpha_scaled(image, m))
    np.testing.assert_array_equal(R.picture(attr, image, style="original"), R.original(image))
    np.testing.assert_array_equal(R.picture(attr, style="gradient"), R.gradient_image(attr))
    np.testing.assert_array_equal(R.picture(attr, style="grayscale"), R.grayscale(attr))
    np.testing.assert_array_equal(R.picture(attr, style="positive"), R.positive_negative(attr)[0])
    np.testing.assert_array_equal(R.picture(attr, style="negative"), R.positive_negative(attr)[1])
    assert set(R.STYLES) == {"overlay", "heatmap", "masked", "alpha", "original", "gradient", "grayscale", "positive", "negative"}


# ---------------------------------------------------------------- colour bar and figures


def test_colorbar_exact():
    bar = R.colorbar(red_blue, length=5, thickness=2)
    assert bar.shape == (5, 2, 3)  # vertical: value 1 on top
    np.testing.assert_array_equal(bar[:, 0, 0], [255, 191, 128, 64, 0])
    np.testing.assert_array_equal(bar[:, 1, 2], [0, 64, 128, 191, 255])
    flat = R.colorbar(red_blue, length=5, thickness=3, orientation="horizontal")
    assert flat.shape == (3, 5, 3)
    np.testing.assert_array_equal(flat[2, :, 0], [0, 64, 128, 191, 255])
    labelled = R.colorbar(red_blue, length=40, thickness=4, labels=("0", "max"))
    assert labelled.shape[0] == 40 and labelled.shape[1] > 4
    np.testing.assert_array_equal(labelled[:, :4], R.colorbar(red_blue, length=40, thickness=4))
    assert (labelled[:, 4:] < 128).any()  # the labels are drawn (dark text on white)
    np.testing.assert_array_equal(R.colorbar(length=3, thickness=1)[::-1, 0], R.heatmap(np.array([[0.0, 0.5, 1.0]]))[0])


def solid(h, w, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def test_figure_tile_placement_and_padding():
    red, green, blue = solid(2, 3, (255, 0, 0)), solid(4, 1, (0, 255, 0)), solid(1, 2, (0, 0, 255))
    got = R.figure([[red, green], [blue]], pad=1, background=9)
    # columns 3 and 1 wide, rows 4 and 1 tall; 1-pixel gaps and border: 7 x 8
    expected = np.full((8, 7, 3), 9, np.uint8)
    expected[2:4, 1:4] = (255, 0, 0)  # centred vertically in its 4-pixel row: (4 - 2) // 2 = 1 down
    expected[1:5, 5:6] = (0, 255, 0)
    expected[6:7, 1:3] = (0, 0, 255)  # centred horizontally in its 3-pixel column: (3 - 2) // 2 = 0
    np.testing.assert_array_equal(got, expected)


def test_figure_scale_none_cells_alpha_and_grey_panels():
    rgba = np.zeros((1, 1, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)
    got = R.figure([[rgba, None, np.full((1, 1), 0.5)]], pad=0, scale=2)
    assert got.shape == (2, 4, 3)  # the None column is empty: zero width
    np.testing.assert_array_equal(got[:, :2], solid(2, 2, (255, 127, 127)))  # 255 (1 - 128/255) = 127 over white
    np.testing.assert_array_equal(got[:, 2:], solid(2, 2, (128, 128, 128)))


def test_figure_titles_add_bands_and_keep_panels_intact():
    from polyviz.render.text import text_size

    red = solid(20, 20, (255, 0, 0))
    panels = [[red, solid(20, 20, (0, 0, 255))], [solid(20, 20, (0, 255, 0)), None]]
    rows, cols = ["Grad-CAM", "saliency"], ["cat", "a long column title"]
    titled = R.figure(panels, pad=2, row_titles=rows, col_titles=cols, title="T")
    left = max(text_size(t)[0] for t in rows) + 2
    top = text_size("T")[1] + 2 + max(text_size(t)[1] for t in cols) + 2
    widths = [max(20, text_size(t)[0]) for t in cols]
    heights = [max(20, text_size(t)[1]) for t in rows]
    assert titled.shape == (top + sum(heights) + 3 * 2, left + sum(widths) + 3 * 2, 3)
    # the red panel sits below the title bands and right of the row titles, centred in its cell, unchanged
    y, x = top + 2 + (heights[0] - 20) // 2, left + 2 + (widths[0] - 20) // 2
    np.testing.assert_array_equal(titled[y : y + 20, x : x + 20], red)
    # dark text pixels exist in the title band and in the row-title column
    assert (titled[:top, :] < 100).any() and (titled[top:, :left] < 100).any()
    # a title-free figure has no such margins
    assert R.figure(panels, pad=2).shape == (2 * 20 + 3 * 2, 2 * 20 + 3 * 2, 3)


def test_figure_grid_shape_for_methods_by_images():
    tiles = [[solid(8, 8, (k, k, k)) for k in range(4)] for _ in range(3)]
    assert R.figure(tiles, pad=3).shape == (3 * 8 + 4 * 3, 4 * 8 + 5 * 3, 3)


# ---------------------------------------------------------------- activation and filter grids


def test_activation_grid_tile_placement_padding_minmax():
    maps = np.zeros((2, 2, 3))
    maps[..., 0] = [[0, 1], [2, 3]]  # -> 0, 85, 170, 255
    maps[..., 1] = 7.0  # constant -> 0
    maps[..., 2] = [[3, 2], [1, 0]]
    got = R.activation_grid(maps, columns=2, normalize="minmax", cmap=grey, pad=1, background=99)
    expected = np.full((5, 5), 99)
    expected[0:2, 0:2] = [[0, 85], [170, 255]]
    expected[0:2, 3:5] = 0
    expected[3:5, 0:2] = [[255, 170], [85, 0]]  # the fourth place stays background
    np.testing.assert_array_equal(got[..., 0], expected)
    assert R.activation_grid(maps[None], columns=2, normalize="minmax", cmap=grey).shape == (5, 5, 3)


def ref_chollet_grid(layer_activation, images_per_row, truncate=True):
    """Deep Learning with Python (1st ed.), listing 5.30's display grid, for one layer."""
    n_features = layer_activation.shape[-1]
    size = layer_activation.shape[1]
    n_cols = n_features // images_per_row
    display_grid = np.zeros((size * n_cols, images_per_row * size))
    for col in range(n_cols):
        for row in range(images_per_row):
            channel_image = layer_activation[0, :, :, col * images_per_row + row].copy()
            channel_image -= channel_image.mean()
            channel_image /= channel_image.std()
            channel_image *= 64
            channel_image += 128
            channel_image = np.clip(channel_image, 0, 255)
            if truncate:
                channel_image = channel_image.astype("uint8")
            display_grid[col * size : (col + 1) * size, row * size : (row + 1) * size] = channel_image
    return display_grid


def test_activation_grid_matches_chollet():
    acts = np.random.default_rng(5).gamma(1.0, size=(1, 6, 6, 32)).astype(np.float32)
    expected = ref_chollet_grid(acts, 16)
    got = R.activation_grid(acts, pad=0, cmap=grey)  # columns default to 16, normalize 'std'
    assert got.shape == (12, 96, 3)
    # Chollet truncates to uint8, polyviz rounds: at most one level apart
    assert np.abs(got[..., 0].astype(int) - expected).max() <= 1
    exact = ref_chollet_grid(acts.astype(np.float64), 16, truncate=False) / 255
    np.testing.assert_array_equal(R.activation_grid(acts, pad=0), np.round(colormaps["viridis"](exact)[..., :3] * 255))


def test_activation_grid_channel_selection_and_global_norm():
    maps = np.stack([np.full((2, 2), float(k)) for k in range(5)], axis=-1)
    got = R.activation_grid(maps, channels=[4, 0], normalize="global", cmap=grey, pad=0)
    np.testing.assert_array_equal(got[..., 0], [[255, 255, 0, 0], [255, 255, 0, 0]])
    assert R.activation_grid(maps, channels=3, normalize="none", cmap=grey, pad=0).shape == (2, 6, 3)
    assert R.activation_grid(maps, scale=3, pad=1, columns=5).shape == (6, 5 * 6 + 4, 3)


def test_filter_grid_rgb_first_layer():
    k = np.zeros((1, 1, 3, 2))  # HWIO
    k[0, 0, :, 0] = [0.0, 1.0, 2.0]  # -> (0, 128, 255) after per-tile min-max (0.5 -> 127.5 -> 128)
    k[0, 0, :, 1] = 5.0  # constant -> mid grey
    got = R.filter_grid(k, scale=1, pad=1)
    expected = np.array([[[0, 128, 255], [255, 255, 255], [128, 128, 128]]], np.uint8)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(R.filter_grid(k.transpose(3, 2, 0, 1), layout="OIHW", scale=1), got)
    # default scale makes tiles at least 16 pixels: 3x3 kernels -> 6x (18 pixels), 4 filters in 2 columns
    big = np.random.default_rng(6).normal(size=(3, 3, 3, 4))
    assert R.filter_grid(big).shape == (2 * 18 + 1, 2 * 18 + 1, 3)


def test_filter_grid_per_input_channel():
    k = np.zeros((1, 2, 2, 2))  # kh=1, kw=2, 2 inputs, 2 filters
    k[0, :, 0, 0] = [1.0, 3.0]
    k[0, :, 1, 0] = [2.0, -2.0]
    k[0, :, 0, 1] = [0.0, 0.0]
    k[0, :, 1, 1] = [4.0, 5.0]
    got = R.filter_grid(k, scale=1, pad=1, cmap=grey)
    # rows = filters, columns = input channels, each tile min-max'ed: (1, 2) tiles, 1-pixel gaps -> 3 x 5
    expected = np.array(
        [[0, 255, 255, 255, 0], [255, 255, 255, 255, 255], [128, 128, 255, 0, 255]],
    )
    np.testing.assert_array_equal(got[..., 0], expected)
    glob = R.filter_grid(k, scale=1, pad=0, cmap=grey, normalize="global")  # (v + 2) / 7
    np.testing.assert_array_equal(glob[..., 0], np.round((np.array([[1, 3, 2, -2], [0, 0, 4, 5]]) + 2) / 7 * 255))
    assert R.filter_grid(np.zeros((3, 3, 3, 2)), rgb=False, scale=1, pad=0).shape == (6, 9, 3)
    assert R.filter_grid(np.zeros((3, 3, 8, 5)), filters=2, inputs=[0, 7], scale=2, pad=0).shape == (12, 12, 3)


# ---------------------------------------------------------------- files


def test_save_png_and_png_bytes_round_trip(tmp_path):
    rgb = np.random.default_rng(7).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    path = R.save_png(rgb, tmp_path / "deeper" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    rgba = np.concatenate([rgb, np.full((5, 4, 1), 77, np.uint8)], axis=-1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(R.png_bytes(rgba)))), rgba)
    np.testing.assert_array_equal(np.asarray(Image.open(R.save_png(np.full((2, 2), 0.5), tmp_path / "g.png"))), np.full((2, 2, 3), 128))
    with pytest.raises(InputError, match="array"):
        R.save_png(np.full((2, 2, 3), 3.0), tmp_path / "bad.png")
    with pytest.raises(InputError, match="path"):
        R.save_png(rgb, tmp_path)


# ---------------------------------------------------------------- Explanation


def explanation(attribution, inputs=None, layout="NHWC"):
    n = attribution.shape[0]
    return Explanation(np.asarray(attribution, np.float32), np.zeros(n, int), "test", "numpy", inputs=inputs, layout=layout)


def test_explanation_render_styles():
    rng = np.random.default_rng(8)
    maps, inputs = rng.normal(size=(2, 4, 4)).astype(np.float32), rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
    e = explanation(maps, inputs)
    np.testing.assert_array_equal(e.render(1), R.overlay(inputs[1], maps[1]))
    np.testing.assert_array_equal(e.render(1, style="heatmap", cmap=red_blue), R.heatmap(maps[1], cmap=red_blue))
    np.testing.assert_array_equal(e.render(0, sign="all", alpha=0.3), R.overlay(inputs[0], maps[0], sign="all", alpha=0.3))
    np.testing.assert_array_equal(e.render(-1, style="masked", vmax=1.0), R.masked_image(inputs[1], maps[1], vmax=1.0))
    np.testing.assert_array_equal(explanation(maps).render(0), R.heatmap(maps[0]))  # inputs not kept
    # input-shaped NCHW attributions: the gradient styles see them channels-last
    grads = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    g = explanation(grads, inputs[:1], layout="NCHW")
    np.testing.assert_array_equal(g.render(style="gradient"), R.gradient_image(grads[0].transpose(1, 2, 0)))
    np.testing.assert_array_equal(g.render(style="grayscale"), R.grayscale(grads[0].transpose(1, 2, 0)))
    np.testing.assert_array_equal(g.render(style="negative"), R.positive_negative(grads[0].transpose(1, 2, 0))[1])
    np.testing.assert_array_equal(g.render(style="heatmap"), R.heatmap(grads[0].sum(axis=0)))


def test_explanation_save_and_repr_png(tmp_path):
    maps = np.random.default_rng(9).normal(size=(2, 5, 3)).astype(np.float32)
    e = explanation(maps)
    path = e.save(tmp_path / "m.png", index=1, style="heatmap", sign="positive")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), e.render(1, style="heatmap", sign="positive"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(e._repr_png_()))), e.render(0))
    assert Image.open(e.save(tmp_path / "m.jpg")).format == "JPEG"


def test_explanation_render_end_to_end_on_every_backend(bk):
    from backends import build
    from polyviz.testing import tiny_spec

    spec = tiny_spec()
    model, _ = build(bk, spec)
    x = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype(np.float32)
    if bk == "torch":
        x = x.transpose(0, 3, 1, 2)
    e = polyviz.explain(model, x, "gradcam", target=1)
    hwc = x[1].transpose(1, 2, 0) if bk == "torch" else x[1]
    np.testing.assert_array_equal(e.render(1, alpha=0.4), R.overlay(hwc, e.attribution[1], alpha=0.4))
    s = polyviz.explain(model, x, "saliency", target=0)
    np.testing.assert_array_equal(s.render(0, style="grayscale"), R.grayscale(s.attribution_hwc(0)))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: R.heatmap(np.zeros((2, 2, 3))), "map2d"),
        (lambda: R.heatmap(np.array([[np.nan, 1.0]])), "map2d.*NaN"),
        (lambda: R.heatmap(np.array([["a"]])), "map2d"),
        (lambda: R.heatmap(V, sign="both"), "sign"),
        (lambda: R.heatmap(V, clip_percentile=0), "clip_percentile"),
        (lambda: R.heatmap(V, clip_percentile=101), "clip_percentile"),
        (lambda: R.heatmap(V, vmax=-1), "vmax"),
        (lambda: R.heatmap(V, size=(0, 3)), "size"),
        (lambda: R.alpha_scaled(np.zeros((2, 2, 3)), V, background="white"), "background"),
        (lambda: R.heatmap(V, cmap="jte"), "cmap.*jet"),
        (lambda: R.heatmap(V, cmap=lambda v: v), "cmap"),
        (lambda: R.heatmap(V, cmap=3), "cmap"),
        (lambda: R.overlay(np.zeros((2, 2, 3)), V, alpha=1.5), "alpha"),
        (lambda: R.overlay(np.zeros((2, 2, 2)), V), "image"),
        (lambda: R.overlay(np.full((2, 2, 3), 300, np.int32), V), "image"),
        (lambda: R.original(np.zeros((2, 2)), value_range=(1, 0)), "value_range"),
        (lambda: R.masked_image(np.zeros((2, 2, 3)), V, threshold=2), "threshold"),
        (lambda: R.masked_image(np.zeros((2, 2, 3)), V, fill=(1, 2)), "fill"),
        (lambda: R.gradient_image(np.zeros((2, 2, 2, 2))), "attr_hwc"),
        (lambda: R.grayscale(np.zeros((3, 8, 8))), "attr_hwc.*channels-first"),
        (lambda: R.picture(V, style="heat"), "style.*heatmap"),
        (lambda: R.picture(V, style="heatmap", alpha=0.5), "alpha"),
        (lambda: R.picture(V, style="original"), "image"),
        (lambda: R.figure([]), "panels"),
        (lambda: R.figure(np.zeros((2, 2, 3))), "panels"),
        (lambda: R.figure([[np.zeros((2, 2, 3))]], row_titles=["a", "b"]), "row_titles"),
        (lambda: R.figure([[np.full((2, 2, 3), 2.0)]]), r"panels\[0\]\[0\]"),
        (lambda: R.figure([[np.zeros((2, 2))]], pad=-1), "pad"),
        (lambda: R.colorbar(orientation="diagonal"), "orientation"),
        (lambda: R.colorbar(length=1), "length"),
        (lambda: R.activation_grid(np.zeros((4, 4))), "maps_hwc"),
        (lambda: R.activation_grid(np.zeros((4, 4, 2)), normalize="l2"), "normalize"),
        (lambda: R.activation_grid(np.zeros((4, 4, 2)), channels=[5]), "channels"),
        (lambda: R.filter_grid(np.zeros((3, 3, 3))), "kernels_khwio"),
        (lambda: R.filter_grid(np.zeros((3, 3, 3, 1)), layout="NCHW"), "layout"),
        (lambda: R.filter_grid(np.zeros((3, 3, 4, 1)), rgb=True), "rgb"),
        (lambda: R.filter_grid(np.zeros((3, 3, 3, 1)), scale=0), "scale"),
        (lambda: explanation(np.zeros((2, 3, 3))).render(2), "index"),
        (lambda: explanation(np.zeros((2, 3, 3))).render(0, style="masked"), "image"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_render_is_exported_without_frameworks():
    import subprocess
    import sys

    code = "import sys, polyviz; polyviz.render.heatmap([[1.0]]); print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_framework_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(R.heatmap(torch.tensor(V, requires_grad=True)), R.heatmap(V))
