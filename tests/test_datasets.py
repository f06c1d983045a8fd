"""The shapes data set: determinism, array contract, and masks checked against closed-form geometry."""

import subprocess
import sys

import numpy as np
import pytest

from polyviz.datasets import SHAPE_CLASSES, ShapesData, shapes
from polyviz.errors import InputError

#: area / R^2 of each shape, R = the largest distance from the shape's centre to its boundary
#: (see polyviz/datasets/shapes.py for the geometry: square half-side 0.8 r, star inner radius
#: 0.45 r, cross half-width 0.3 r, ring inner radius 0.55 r).
AREA_OVER_R2 = {
    "disc": np.pi,
    "square": 2.0,  # (1.6 r)^2 / (0.8 sqrt(2) r)^2
    "triangle": 3 * np.sqrt(3) / 4,  # equilateral, circumradius R
    "star": 5 * 0.45 * np.sin(np.pi / 5),  # 10 triangles (R, 0.45 R, angle pi/5)
    "cross": (2 * 2 * 0.6 - 0.6**2) / (1 + 0.3**2),  # two 2r x 0.6r bars, R^2 = r^2 + (0.3 r)^2
    "ring": np.pi * (1 - 0.55**2),
}


@pytest.fixture(scope="module")
def data():
    return shapes(600, seed=7)


def test_contract(data):
    assert isinstance(data, ShapesData) and len(data) == 600
    assert data.images.shape == (600, 64, 64, 3) and data.images.dtype == np.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.labels.shape == (600,) and data.labels.dtype == np.int64
    assert data.masks.shape == (600, 64, 64) and data.masks.dtype == bool
    assert data.class_names == SHAPE_CLASSES == ("disc", "square", "triangle", "star", "cross", "ring")
    assert np.bincount(data.labels).tolist() == [100] * 6  # balanced
    small = shapes(5, seed=1, size=32)
    assert small.images.shape == (5, 32, 32, 3) and small.masks.shape == (5, 32, 32)
    assert len(shapes(0)) == 0


def test_deterministic_in_the_seed(data):
    again = shapes(600, seed=7)
    for a, b in [(data.images, again.images), (data.labels, again.labels), (data.masks, again.masks)]:
        np.testing.assert_array_equal(a, b)
    other = shapes(600, seed=8)
    assert not np.array_equal(data.images, other.images)
    assert not np.array_equal(data.masks, other.masks)


def test_masks_are_whole_objects_inside_the_image(data):
    area = data.masks.sum(axis=(1, 2))
    assert area.min() >= 100  # radius >= 0.19 * 64 px: even the thinnest shape covers > 100 px
    border = np.zeros((64, 64), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    assert not (data.masks & border).any()  # whole object, never cut by the frame


def test_object_differs_from_its_surroundings(data):
    """The object's pixels stand out: its mean colour is far from that of a 3 px band around it."""
    far = []
    for img, m in zip(data.images, data.masks):
        grown = np.pad(m, 3)
        grown = np.any([np.roll(grown, (dy, dx), (0, 1)) for dy in range(-3, 4) for dx in range(-3, 4)], axis=0)
        band = grown[3:-3, 3:-3] & ~m
        far.append(np.linalg.norm(img[m].mean(0) - img[band].mean(0)))
    far = np.array(far)
    assert np.median(far) > 0.35 and (far > 0.15).mean() > 0.97, (np.median(far), np.sort(far)[:10])


def test_mask_geometry_matches_closed_form():
    """area / R^2 (R: the farthest mask pixel from the shape's centre) matches each shape's
    closed form, e.g. pi for a disc: the masks are the shapes they claim to be, at the right size."""
    d = shapes(360, seed=3)
    yy, xx = np.mgrid[0:64, 0:64]
    for k, name in enumerate(SHAPE_CLASSES):
        ratios = []
        for m in d.masks[d.labels == k]:
            ys, xs = yy[m], xx[m]
            # centre: the centroid (the true centre for all six shapes, all symmetric about it)
            cy, cx = ys.mean(), xs.mean()
            # pixel centres stop short of the boundary by a fraction of a pixel
            big_r = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 0.25
            ratios.append(m.sum() / big_r**2)
        got = float(np.median(ratios))
        assert got == pytest.approx(AREA_OVER_R2[name], rel=0.06), (name, got, AREA_OVER_R2[name])


def test_disc_area_is_pi_r_squared():
    """A disc's area from its mask agrees with pi r^2 for r from its extent (width = 2 r)."""
    d = shapes(300, seed=11)
    for m in d.masks[d.labels == SHAPE_CLASSES.index("disc")]:
        cols = np.flatnonzero(m.any(axis=0))
        rows = np.flatnonzero(m.any(axis=1))
        r = (cols[-1] - cols[0] + 1 + rows[-1] - rows[0] + 1) / 4
        assert m.sum() == pytest.approx(np.pi * r * r, rel=0.08)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 2.5}, {"n": 3, "seed": -1}, {"n": 3, "size": 8}])
def test_bad_arguments(kwargs):
    with pytest.raises(InputError, match=next(iter(k for k in ("size", "seed", "n") if k in kwargs))):
        shapes(**kwargs)


def test_imports_no_framework():
    code = (
        "import sys, polyviz.datasets; polyviz.datasets.shapes(2); "
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]; "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
