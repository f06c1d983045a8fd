"""The same methods in tf-keras-vis, for ``polyviz bench --peers``.

Each entry is a zero-argument callable doing one attribution the way a tf-keras-vis user would,
with the visualiser built once (it clones the model) outside the timed call. Left out when
tf-keras-vis is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["peer_benchmarks"]


def peer_benchmarks(model: Any, x: np.ndarray, target: np.ndarray, layer: str, batch: int = 32) -> dict[str, dict[str, Callable[[], Any]]]:
    """{method: {"tf-keras-vis": callable}} for one NHWC numpy image batch of size 1."""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return {}
    score = CategoricalScore([int(t) for t in target])
    x = np.asarray(x, np.float32)
    modifier = ReplaceToLinear()
    saliency = Saliency(model, model_modifier=modifier, clone=True)
    cams = {name: cls(model, model_modifier=modifier, clone=True)
            for name, cls in (("gradcam", Gradcam), ("gradcam_plus_plus", GradcamPlusPlus), ("layercam", Layercam),
                              ("scorecam", Scorecam))}
    out: dict[str, dict[str, Callable[[], Any]]] = {
        "saliency": {"tf-keras-vis": lambda: saliency(score, x, keepdims=True, normalize_map=False)},
        "smoothgrad": {"tf-keras-vis": lambda: saliency(score, x, smooth_samples=25, keepdims=True, normalize_map=False)},
    }
    for name, cam in cams.items():
        if name == "scorecam":
            out[name] = {"tf-keras-vis": lambda cam=cam: cam(score, x, penultimate_layer=layer, batch_size=batch)}
        else:
            out[name] = {"tf-keras-vis": lambda cam=cam: cam(score, x, penultimate_layer=layer)}
    return out
