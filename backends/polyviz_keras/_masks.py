"""Masked input batches built in TensorFlow, equal to :func:`polyviz.protocol.materialize_masks`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from polyviz.interpolation import resize_matrix
from polyviz.protocol import Boxes, FeatureGroups, LowResMasks, MaskSpec


def masks_tf(spec: MaskSpec, height: int, width: int, start: int, stop: int) -> tf.Tensor:
    """Masks ``start:stop`` of ``spec`` as a (m, H, W) float32 tensor."""
    if isinstance(spec, Boxes):
        boxes = tf.constant(np.asarray(spec.boxes, np.int64)[start:stop])
        ys = tf.range(height, dtype=tf.int64)[None, :, None]
        xs = tf.range(width, dtype=tf.int64)[None, None, :]
        y0, x0, y1, x1 = (boxes[:, i, None, None] for i in range(4))
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        return 1.0 - tf.cast(inside, tf.float32)
    if isinstance(spec, FeatureGroups):
        keep = tf.constant(np.asarray(spec.keep, np.float32)[start:stop])
        return tf.gather(keep, tf.constant(np.asarray(spec.groups, np.int64)), axis=1)
    if isinstance(spec, LowResMasks):
        small = tf.constant(np.asarray(spec.masks, np.float32)[start:stop])
        size = spec.upsampled_size or (height, width)
        ry = tf.constant(resize_matrix(int(small.shape[1]), int(size[0]), spec.mode))
        rx = tf.constant(resize_matrix(int(small.shape[2]), int(size[1]), spec.mode))
        up = tf.einsum("Hh,mhw,Ww->mHW", ry, small, rx)
        if spec.offsets is not None:
            offsets = np.asarray(spec.offsets, np.int64)[start:stop]
            up = tf.stack([up[i, oy : oy + height, ox : ox + width] for i, (oy, ox) in enumerate(offsets)])
        if spec.normalize:
            lo = tf.reduce_min(up, axis=[1, 2], keepdims=True)
            hi = tf.reduce_max(up, axis=[1, 2], keepdims=True)
            span = hi - lo
            up = tf.where(span > 0, (up - lo) / tf.where(span > 0, span, 1.0), 0.0)
        return up
    raise TypeError(type(spec).__name__)


def masked_batch(x: np.ndarray, spec: MaskSpec, baseline: np.ndarray, sample_index: np.ndarray,
                 start: int, stop: int) -> tf.Tensor:
    """``x[s] * m + b * (1 - m)`` for masks ``start:stop``, built in TensorFlow."""
    _, h, w, _ = x.shape
    m = masks_tf(spec, h, w, start, stop)[..., None]
    index = sample_index[start:stop]
    images = tf.gather(tf.constant(x), index)
    base = tf.constant(baseline if baseline.ndim < 4 else baseline[index])
    return images * m + base * (1.0 - m)
