"""Feature groups: partitions of an image's pixels that perturbation methods switch on and off.

Feature ablation, feature permutation, Shapley value sampling, LIME and KernelSHAP attribute a
score to *groups* of pixels rather than to single values. A group covers every channel of its
pixels. This module builds the groups in numpy, identically for every framework:

* :func:`pixels` -- every pixel its own group (H * W groups);
* :func:`patches` -- square (or rectangular) tiles of ``size`` pixels in raster order; tiles at the
  right and bottom edge are cut short when the size does not divide the image;
* :func:`superpixels` -- SLIC-style superpixels (Achanta et al. 2012, "SLIC superpixels compared
  to state-of-the-art superpixel methods", IEEE TPAMI), a small numpy implementation;
* a user mask -- integer group ids, (H, W) for every sample or (N, H, W) one per sample.

:func:`feature_groups` turns the ``features=`` option of those methods into a :class:`Partition`:
(N, H, W) labels with the ids of each sample relabelled to 0..G_n-1 (every id used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyviz.errors import InputError, did_you_mean

__all__ = ["Partition", "FEATURE_KINDS", "pixels", "patches", "superpixels", "feature_groups"]

#: The named kinds of feature groups the ``features=`` option accepts (besides an int array).
FEATURE_KINDS = ("pixels", "patches", "superpixels")


@dataclass(frozen=True, eq=False)
class Partition:
    """Pixels of each sample split into groups.

    ``labels`` (N, H, W) int64: the group of each pixel, ids 0..counts[n]-1 in sample n, every id
    used; ``counts`` (N,): groups per sample; ``shared``: True when every sample has the same
    labels (pixels, patches, one (H, W) user mask), so that masks of several samples can share one
    description.
    """

    labels: np.ndarray
    counts: np.ndarray
    shared: bool

    @property
    def max_groups(self) -> int:
        """The largest group count over the samples."""
        return int(self.counts.max())

    def spread(self, values: list[np.ndarray]) -> np.ndarray:
        """(N, H, W) float32 map giving every pixel its group's value; ``values[n]`` has
        ``counts[n]`` entries."""
        return np.stack([np.asarray(v, np.float64)[lab] for v, lab in zip(values, self.labels)]).astype(np.float32)


def positive_pair(value: object, name: str) -> tuple[int, int]:
    """An int or a pair (height, width) of positive ints, checked (errors name ``name``)."""
    vals = (value, value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else value
    try:
        h, w = vals  # type: ignore[misc]
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a positive int or a pair (height, width) of them, got {value!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise InputError(f"{name}: expected positive ints, got {value!r}")
    return int(h), int(w)


def pixels(height: int, width: int) -> np.ndarray:
    """(H, W) labels: pixel (i, j) is group ``i * W + j``."""
    return np.arange(height * width, dtype=np.int64).reshape(height, width)


def patches(height: int, width: int, size: int | tuple[int, int] = 16) -> np.ndarray:
    """(H, W) labels of tiles of ``size`` (an int or (height, width)) pixels, numbered in raster
    order from the top-left; tiles on the bottom and right edges are cut short where ``size`` does
    not divide the image."""
    ph, pw = positive_pair(size, "patch_size")
    per_row = -(-width // pw)
    rows = np.arange(height)[:, None] // ph
    cols = np.arange(width)[None, :] // pw
    return (rows * per_row + cols).astype(np.int64)


def superpixels(
    image: np.ndarray, n_segments: int = 50, compactness: float = 0.1, *, max_iter: int = 10,
    min_size_factor: float = 0.25,
) -> np.ndarray:
    """SLIC-style superpixels of one image (H, W, C): (H, W) labels 0..G-1, every label used.

    A numpy version of SLIC (Achanta et al. 2012): k-means in (colour, position) space.

    * Colours are the image's own values (no Lab conversion: a model input may be any colour
      space), min-max scaled over the whole image to [0, 1].
    * About ``n_segments`` seeds sit on a regular grid of ny x nx cells, ny = round(sqrt(n_segments
      H / W)), nx = round(n_segments / ny), at the cell centres (the seeds are not moved to the
      lowest gradient); S = sqrt(H W / n_segments) is the nominal grid step.
    * Each iteration assigns every pixel within a 2S x 2S window of a centre to the centre of
      least distance D^2 = |colour - colour_k|^2 + (compactness / S)^2 |position - position_k|^2,
      then moves every centre to the mean colour and position of its pixels; at most
      ``max_iter`` iterations, fewer once no label changes. A pixel that no window reaches goes to
      the nearest centre.
    * Connectivity cleanup: each segment's 4-connected components become separate groups, and
      components smaller than ``min_size_factor * H W / n_segments`` pixels are merged into the
      neighbouring component that shares the longest border with them.

    ``compactness`` weighs position against colour: a colour difference equal to ``compactness``
    (in [0, 1] units) costs as much as moving one grid step S. Larger values give squarer
    superpixels; 0 clusters on colour alone (within the windows). The result is deterministic.
    Labels are numbered in raster order of each group's first pixel.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise InputError(f"image: expected one image (H, W, C), got shape {img.shape}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, int | np.integer) or n_segments < 1:
        raise InputError(f"n_segments: expected an int >= 1, got {n_segments!r}")
    if isinstance(compactness, bool) or not isinstance(compactness, int | float | np.number) or not (
        np.isfinite(compactness) and compactness >= 0
    ):
        raise InputError(f"compactness: expected a finite number >= 0, got {compactness!r}")
    h, w, _ = img.shape
    lo, hi = img.min(), img.max()
    colour = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    step = float(np.sqrt(h * w / n_segments))
    ny = int(min(h, max(1, round(np.sqrt(n_segments * h / w)))))
    nx = int(min(w, max(1, round(n_segments / ny))))
    cy = np.repeat((np.arange(ny) + 0.5) * h / ny - 0.5, nx)
    cx = np.tile((np.arange(nx) + 0.5) * w / nx - 0.5, ny)
    centres_colour = colour[np.round(cy).astype(int), np.round(cx).astype(int)]
    weight = (float(compactness) / step) ** 2
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.full((h, w), -1, dtype=np.int64)
    radius = step  # half the 2S window
    for _ in range(max(1, int(max_iter))):
        dist = np.full((h, w), np.inf)
        new = np.full((h, w), -1, dtype=np.int64)
        for k in range(len(cy)):
            y0, y1 = max(0, int(np.floor(cy[k] - radius))), min(h, int(np.ceil(cy[k] + radius)) + 1)
            x0, x1 = max(0, int(np.floor(cx[k] - radius))), min(w, int(np.ceil(cx[k] + radius)) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            d = ((colour[y0:y1, x0:x1] - centres_colour[k]) ** 2).sum(axis=-1) + weight * (
                (yy[y0:y1, x0:x1] - cy[k]) ** 2 + (xx[y0:y1, x0:x1] - cx[k]) ** 2
            )
            better = d < dist[y0:y1, x0:x1]
            dist[y0:y1, x0:x1][better] = d[better]
            new[y0:y1, x0:x1][better] = k
        lost = new < 0
        if lost.any():
            py, px = yy[lost], xx[lost]
            new[lost] = np.argmin((py[:, None] - cy[None]) ** 2 + (px[:, None] - cx[None]) ** 2, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        flat = labels.ravel()
        counts = np.bincount(flat, minlength=len(cy)).astype(np.float64)
        used = counts > 0
        cy[used] = (np.bincount(flat, yy.ravel(), len(cy)) / np.maximum(counts, 1))[used]
        cx[used] = (np.bincount(flat, xx.ravel(), len(cy)) / np.maximum(counts, 1))[used]
        for c in range(colour.shape[-1]):
            centres_colour[used, c] = (np.bincount(flat, colour[..., c].ravel(), len(cy)) / np.maximum(counts, 1))[used]
    components = _connected_components(labels)
    min_size = max(1, int(min_size_factor * h * w / n_segments))
    components = _merge_small(components, min_size)
    return np.unique(components, return_inverse=True)[1].reshape(h, w).astype(np.int64)


def _connected_components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal labels: each pixel gets the smallest flat index of its
    component (min-label propagation with pointer jumping)."""
    h, w = labels.shape
    comp = np.arange(h * w, dtype=np.int64).reshape(h, w)
    same_down = labels[1:, :] == labels[:-1, :]
    same_right = labels[:, 1:] == labels[:, :-1]
    while True:
        prev = comp
        comp = comp.copy()
        down = np.minimum(comp[1:, :], comp[:-1, :])
        comp[1:, :] = np.where(same_down, np.minimum(comp[1:, :], down), comp[1:, :])
        comp[:-1, :] = np.where(same_down, np.minimum(comp[:-1, :], down), comp[:-1, :])
        right = np.minimum(comp[:, 1:], comp[:, :-1])
        comp[:, 1:] = np.where(same_right, np.minimum(comp[:, 1:], right), comp[:, 1:])
        comp[:, :-1] = np.where(same_right, np.minimum(comp[:, :-1], right), comp[:, :-1])
        flat = comp.ravel()
        for _ in range(8):  # pointer jumping: follow each root's own root
            flat = flat[flat]
        comp = flat.reshape(h, w)
        if np.array_equal(comp, prev):
            return comp


def _merge_small(comp: np.ndarray, min_size: int) -> np.ndarray:
    """Merge components smaller than ``min_size`` pixels into the neighbour sharing the longest
    border, smallest components first, until none is left that has a neighbour."""
    comp = comp.copy()
    while True:
        ids, inverse, sizes = np.unique(comp, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(comp.shape)
        small = sizes < min_size
        if not small.any() or len(ids) == 1:
            return comp
        a = np.concatenate([inverse[1:, :].ravel(), inverse[:, 1:].ravel()])
        b = np.concatenate([inverse[:-1, :].ravel(), inverse[:, :-1].ravel()])
        differ = a != b
        a, b = np.concatenate([a[differ], b[differ]]), np.concatenate([b[differ], a[differ]])
        keep = small[a]
        if not keep.any():
            return comp
        pairs, border = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0, return_counts=True)
        order = np.lexsort((-border, sizes[pairs[:, 0]]))  # smallest component first, longest border
        target: dict[int, int] = {}
        dests: set[int] = set()
        for src, dst in pairs[order].tolist():
            if src not in target and src not in dests and dst not in target:  # no chains in a round
                target[src] = dst
                dests.add(dst)
        remap = np.arange(len(ids))
        for src, dst in target.items():
            remap[src] = dst
        comp = ids[remap[inverse]]


def _user_mask(mask: np.ndarray, n: int, height: int, width: int) -> tuple[np.ndarray, bool]:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"features: a mask must hold integer group ids, got dtype {arr.dtype} (expected an int "
            f"array (H, W) = ({height}, {width}) or (N, H, W) = ({n}, {height}, {width}))"
        )
    if arr.shape == (height, width):
        return np.unique(arr, return_inverse=True)[1].reshape(1, height, width), True
    if arr.shape == (n, height, width):
        return np.stack([np.unique(m, return_inverse=True)[1].reshape(height, width) for m in arr]), False
    raise InputError(
        f"features: a mask of group ids must be (H, W) = ({height}, {width}) or one per sample "
        f"(N, H, W) = ({n}, {height}, {width}), got shape {arr.shape}"
    )


def feature_groups(
    x: np.ndarray,
    features: str | np.ndarray = "superpixels",
    *,
    patch_size: int | tuple[int, int] = 16,
    n_segments: int = 50,
    compactness: float = 0.1,
) -> Partition:
    """The feature groups of a channels-last batch ``x`` (N, H, W, C).

    ``features``: "pixels", "patches" (tiles of ``patch_size``), "superpixels" (:func:`superpixels`
    of each sample with ``n_segments`` and ``compactness``), or an int array of group ids, (H, W)
    for every sample or (N, H, W) one per sample; the ids of a mask may be any integers and are
    relabelled 0..G-1 in sorted order, per sample.
    """
    x = np.asarray(x)
    n, height, width = x.shape[:3]
    if isinstance(features, str):
        if features == "pixels":
            labels, shared = pixels(height, width)[None], True
        elif features == "patches":
            labels, shared = patches(height, width, patch_size)[None], True
        elif features == "superpixels":
            labels = np.stack([superpixels(img, n_segments, compactness) for img in x])
            shared = n == 1
        else:
            raise InputError(
                f"features: unknown kind of feature groups {features!r}.{did_you_mean(features, FEATURE_KINDS)} "
                f"Expected one of {', '.join(map(repr, FEATURE_KINDS))} or an int array of group ids"
            )
    elif isinstance(features, np.ndarray | list | tuple) or hasattr(features, "__array__"):
        labels, shared = _user_mask(np.asarray(features), n, height, width)  # numpy, lists, CPU tensors
    else:
        raise InputError(
            f"features: expected one of {', '.join(map(repr, FEATURE_KINDS))} or an int array of group "
            f"ids, got {type(features).__name__}"
        )
    labels = np.broadcast_to(labels, (n, height, width)).astype(np.int64)  # a writable copy
    counts = labels.reshape(n, -1).max(axis=1) + 1
    return Partition(labels=labels, counts=counts.astype(np.int64), shared=shared)
