"""Quantus 0.6.0 as a test-only oracle (LGPL: called, nothing copied). It must be imported after
torch and torch._dynamo when TensorFlow is installed, so only through :func:`quantus`."""

import importlib.util

import numpy as np
import pytest

needs_quantus = pytest.mark.skipif(importlib.util.find_spec("quantus") is None, reason="quantus is not installed")


def quantus():
    try:
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401
    except ImportError:
        pass
    import quantus as q

    return q


def call(metric, x_nhwc, y, a, s=None, model=None, **kwargs):
    """``metric`` on channels-first float64 copies: x (N, H, W, C) -> (N, C, H, W); a maps (N, H, W)
    -> (N, 1, H, W), input-shaped (N, H, W, C) -> (N, C, H, W); masks likewise."""
    def cf(arr):
        arr = np.asarray(arr, np.float64)
        return arr[:, None].copy() if arr.ndim == 3 else np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    out = metric(model=model, x_batch=cf(x_nhwc), y_batch=np.asarray(y), a_batch=cf(a),
                 s_batch=None if s is None else cf(s), channel_first=True, **kwargs)
    return np.asarray(out, np.float64)
