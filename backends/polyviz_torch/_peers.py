"""The same methods in the peer libraries (Captum, pytorch-grad-cam), for ``polyviz bench --peers``.

Each entry is a zero-argument callable doing one full attribution the way a user of that library
would, with the peer's object built once outside the timed call. Peers that are not installed are
left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["peer_benchmarks"]


def _captum(model: Any, x: torch.Tensor, target: int, layer: Any, batch: int) -> dict[str, dict[str, Callable[[], Any]]]:
    try:
        from captum import attr
    except ImportError:
        return {}
    window = max(x.shape[-1] // 7, 1)
    stride = max(x.shape[-1] // 14, 1)
    return {
        "saliency": {"captum": lambda: attr.Saliency(model).attribute(x, target=target, abs=False)},
        "input_x_gradient": {"captum": lambda: attr.InputXGradient(model).attribute(x, target=target)},
        "guided_backprop": {"captum": lambda: attr.GuidedBackprop(model).attribute(x, target=target)},
        "integrated_gradients": {"captum": lambda: attr.IntegratedGradients(model).attribute(x, target=target, n_steps=50)},
        "smoothgrad": {
            "captum": lambda: attr.NoiseTunnel(attr.Saliency(model)).attribute(
                x, target=target, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=batch, abs=False
            )
        },
        "gradcam": {"captum": lambda: attr.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)},
        "occlusion": {
            "captum": lambda: attr.Occlusion(model).attribute(
                x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                target=target, perturbations_per_eval=batch,
            )
        },
    }


def _deeplift_and_lrp(model: Any, x: torch.Tensor, target: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Captum's DeepLift (on a copy without in-place ReLUs, which it refuses) and zennit's
    EpsilonGammaBox (the rules polyviz's bench runs LRP with)."""
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    try:
        from captum import attr
    except ImportError:
        attr = None
    if attr is not None:
        import copy

        plain = copy.deepcopy(model)
        for module in plain.modules():
            if isinstance(module, torch.nn.ReLU):
                module.inplace = False
        out["deeplift"] = {"captum": lambda: attr.DeepLift(plain).attribute(x, baselines=0.0, target=target)}
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonGammaBox
    except ImportError:
        return out

    with torch.no_grad():
        seed = torch.nn.functional.one_hot(torch.tensor([target]), int(model(x).shape[1])).to(x.dtype)

    def zennit() -> Any:
        with Gradient(model=model, composite=EpsilonGammaBox(low=0.0, high=1.0)) as attributor:
            return attributor(x, seed)

    out["lrp"] = {"zennit": zennit}
    return out


def _grad_cam(model: Any, x: torch.Tensor, target: int, layer: Any, batch: int) -> dict[str, dict[str, Callable[[], Any]]]:
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return {}
    targets = [ClassifierOutputTarget(target)]
    out: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, cls in (("gradcam", pgc.GradCAM), ("gradcam_plus_plus", pgc.GradCAMPlusPlus), ("layercam", pgc.LayerCAM),
                      ("scorecam", pgc.ScoreCAM)):

        def run(cls: Any = cls) -> Any:
            with cls(model=model, target_layers=[layer]) as cam:  # hooks removed on exit
                cam.batch_size = batch
                return cam(input_tensor=x, targets=targets)

        out[name] = {"pytorch-grad-cam": run}
    return out


def peer_benchmarks(model: Any, x: np.ndarray, target: np.ndarray, layer: str, batch: int = 32) -> dict[str, dict[str, Callable[[], Any]]]:
    """{method: {peer name: callable}} for one NCHW numpy image batch of size 1."""
    device = next(model.parameters()).device
    # a contiguous NCHW tensor, as torchvision's transforms hand it to a user: a transposed numpy
    # array would arrive in channels_last strides, which oneDNN runs 12-25% faster on CPU and
    # would time the peer on a different memory format than its users see
    tensor = torch.as_tensor(np.ascontiguousarray(x, np.float32), device=device).contiguous()
    module = dict(model.named_modules())[layer]
    t = int(target[0])
    merged: dict[str, dict[str, Callable[[], Any]]] = {}
    for source in (_captum(model, tensor, t, module, batch), _grad_cam(model, tensor, t, module, batch),
                   _deeplift_and_lrp(model, tensor, t)):
        for method, peers in source.items():
            merged.setdefault(method, {}).update(peers)
    return merged
