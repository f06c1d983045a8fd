"""VGG16/VGG19 (Simonyan & Zisserman 2014) from torchvision, with ImageNet weights from a file.

``weights="imagenet"`` reads torchvision's checkpoint from the torch hub cache
(``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``); when it is absent, one short download is
tried, and otherwise :class:`polyviz.errors.WeightsNotFoundError` says which file to put where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from typing import Any

import torch
from torch import nn

from polyviz.errors import InputError, ModelError, WeightsNotFoundError
from polyviz_torch._compat import guard_triton

__all__ = ["vgg", "checkpoint_url", "load_state_dict"]

#: Seconds before a weights download attempt gives up.
DOWNLOAD_TIMEOUT = 5.0

_NAMES = ("vgg16", "vgg19")


def checkpoint_url(name: str) -> str:
    """torchvision's IMAGENET1K_V1 checkpoint URL for ``name``."""
    guard_triton()
    import torchvision.models as tvm

    enum = {"vgg16": tvm.VGG16_Weights, "vgg19": tvm.VGG19_Weights}[name]
    return str(enum.IMAGENET1K_V1.url)


def _download(url: str, path: str) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:  # noqa: S310 - fixed https URL
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _imagenet_file(name: str) -> str:
    url = checkpoint_url(name)
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(directory, os.path.basename(url))
    if os.path.exists(path):
        return path
    try:
        _download(url, path)
    except Exception as exc:
        raise WeightsNotFoundError(
            f"weights: the ImageNet weights of {name} ({os.path.basename(url)}) are not in {directory} "
            f"and could not be downloaded ({type(exc).__name__}: {exc}). Download {url} and put it in "
            f"{directory} (or set TORCH_HOME), or pass weights=<path to a state dict>."
        ) from exc
    return path


def load_state_dict(model: nn.Module, path: str, *, trust_pickle: bool = False) -> None:
    """Load a state-dict file (``.safetensors``, or ``torch.save(state_dict)`` read with
    ``weights_only=True``; see ``polyviz_torch._load.read_state_dict``) into ``model``; mismatched
    keys or shapes give a ModelError."""
    from polyviz_torch._load import read_state_dict

    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights: no file at {path!r}")
    fit_state_dict(model, read_state_dict(path, trust_pickle=trust_pickle), path)


def fit_state_dict(model: nn.Module, state: dict, path: str) -> None:
    """Load ``state`` (read from ``path``) into ``model``; mismatched keys or shapes give a ModelError."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if problems:
        raise ModelError(
            f"weights: {path!r} does not fit {type(model).__name__} ({len(problems)} differences): "
            + "; ".join(problems[:5])
        )
    model.load_state_dict(state)


def vgg(name: str, weights: Any = None) -> nn.Module:
    """torchvision ``vgg16``/``vgg19`` in eval mode; ``weights`` None (torchvision's init),
    "imagenet" (hub checkpoint) or a path to a state-dict file."""
    guard_triton()
    import torchvision.models as tvm

    if name not in _NAMES:
        raise InputError(f"name: expected one of {_NAMES}, got {name!r}")
    # the file is found and read before 138M parameters are built: a missing or refused file fails fast
    if weights is None:
        path = None
    elif isinstance(weights, str) and weights == "imagenet":
        path = _imagenet_file(name)
    elif isinstance(weights, str | os.PathLike):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"weights: no file at {path!r}")
    else:
        raise InputError(f"weights: expected None, 'imagenet' or a file path, got {type(weights).__name__}")
    if path is None:
        return getattr(tvm, name)(weights=None).eval()
    from polyviz_torch._load import read_state_dict

    state = read_state_dict(path)
    model = getattr(tvm, name)(weights=None)
    fit_state_dict(model, state, path)
    return model.eval()
