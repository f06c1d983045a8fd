"""Models from files and names: a pickled ``nn.Module`` or TorchScript file, torchvision's model
names, and torchvision's ImageNet class names (shipped with torchvision, no download)."""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Any

from polyviz.errors import InputError, ModelError
from polyviz_torch._compat import guard_triton

__all__ = ["load_model", "imagenet_categories", "model_names"]


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (``torch.save`` zips have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name or name.startswith("code/") for name in zf.namelist())


def model_names() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    guard_triton()
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> Any:
    """An ``nn.Module`` in eval mode from ``source``: a file written by ``torch.save(model)`` (a
    pickle: load only files you trust) or ``torch.jit.save``, or a torchvision model name
    (``resnet18``; torchvision's random init, or ``weights``, a state-dict file)."""
    import torch

    from polyviz.errors import did_you_mean
    from polyviz_torch._zoo import load_state_dict

    path = os.fspath(source)
    if os.path.isfile(path):
        if weights is not None:
            raise InputError(f"weights: {path!r} is a whole model; weights= is for model names (vgg16, resnet18...)")
        try:
            with warnings.catch_warnings():  # torch.jit's deprecation notices are not the user's concern here
                warnings.simplefilter("ignore", FutureWarning)
                if _is_torchscript(path):
                    model = torch.jit.load(path, map_location="cpu")
                else:
                    model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(f"model: cannot load {path!r} with torch ({type(exc).__name__}: {exc})") from exc
        if isinstance(model, dict):
            raise ModelError(
                f"model: {path!r} holds a state dict (weights only), not a model; give the architecture "
                "(--model vgg16 --weights FILE) or save the whole module with torch.save(model, path)"
            )
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"model: {path!r} holds a {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    names = model_names()
    if path not in names:
        raise InputError(f"model: no file {path!r} and no torchvision model of that name.{did_you_mean(path, names)}")
    guard_triton()
    import torchvision.models as tvm

    model = tvm.get_model(path, weights=None)
    if weights is not None:
        load_state_dict(model, os.fspath(weights))
    return model.eval()


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order, from torchvision's weight metadata."""
    guard_triton()
    import torchvision.models as tvm

    return list(tvm.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
