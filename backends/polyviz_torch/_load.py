"""Models from files and names, loaded so that a file from an untrusted source cannot run code
unless the caller opts in (``trust_pickle=True``, the command's ``--trust-pickle``).

How each file is read, safest first (the order polyviz recommends):

1. Weights with an architecture name: a ``.safetensors`` file (no pickle at all: the preferred
   format) or a state dict saved with ``torch.save(model.state_dict(), path)`` (``.pt``/``.pth``,
   read with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers),
   plus ``arch=`` a torchvision model name (``resnet50``) that builds the network.
2. TorchScript (``torch.jit.save``; ``.ts``/``.torchscript``, or a TorchScript zip under any name):
   ``torch.jit.load`` unpickles no Python objects and runs no Python code; the graph calls only
   torch operators. Hooks do not fire inside a scripted module, so layer methods (CAMs) refuse it.
3. ``torch.export`` programs (``.pt2``): ``torch.export.load`` unpickles parts of the archive
   (pickled tensors and constants, a ``weights_only=False`` fallback) and evaluates its shape
   expressions with sympy, so it needs ``trust_pickle=True``. Loaded through
   ``torch.export.unflatten``, which keeps the module tree, so hooks and CAMs work.
4. A whole pickled module (``torch.save(model)``): only with ``trust_pickle=True``.

Without the opt-in, every pickle is read with ``weights_only=True`` first, which refuses an object
it does not know *before* building it, so a ``__reduce__`` payload never runs.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any

from polyviz.errors import InputError, ModelError, UntrustedFileError
from polyviz_torch._compat import guard_triton

__all__ = ["load_model", "read_state_dict", "imagenet_categories", "model_names"]

#: The one-line advice every refusal ends with.
SAFE_ALTERNATIVES = (
    "safe alternatives: the weights as .safetensors (safetensors.torch.save_file(model.state_dict(), path)) "
    "or a state dict (torch.save(model.state_dict(), path)) with the torchvision architecture "
    "(--arch NAME, API arch=NAME), or TorchScript (torch.jit.save(torch.jit.script(model), path)); "
    "only for a file from a source you trust: --trust-pickle (API trust_pickle=True)"
)
RISK = "loading it can run arbitrary code"


def _records(path: str) -> list[str]:
    """The names in a zip archive without torch's top folder (``net/code/...`` -> ``code/...``)."""
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as zf:
        return [n.split("/", 1)[1] if "/" in n else n for n in zf.namelist()]


def _archive_kind(path: str) -> str | None:
    """'torchscript' (``torch.jit.save``: ``constants.pkl`` and ``code/``), 'export' (``torch.export.save``:
    ``archive_format``, or the 2.7 format's ``serialized_exported_program.json``), or None."""
    records = _records(path)
    if any(r == "constants.pkl" or r.startswith("code/") for r in records):
        return "torchscript"
    if any(r in ("archive_format", "serialized_exported_program.json") or r.startswith("models/") for r in records):
        return "export"
    return None


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (whatever its suffix)."""
    return _archive_kind(path) == "torchscript"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _NeedsPickle(Exception):
    """``torch.load(weights_only=True)`` refused the file: it needs more than tensors and containers."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _weights_only(path: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain containers and numbers only. Its
    unpickler refuses an unknown global or opcode before calling anything, so no payload runs.
    Raises _NeedsPickle (with what it refused) or ModelError (not a torch file)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise _NeedsPickle(f"the global {found.group(1)}") from None
        op = re.search(r"Unsupported (?:operand|class) ([^\s.]+)", text)
        raise _NeedsPickle(f"pickle opcode {op.group(1)}, outside what weights-only loading reads" if op
                           else "objects beyond tensors") from None
    except Exception as exc:
        raise ModelError(f"cannot read {path!r} with torch.load ({type(exc).__name__}: {_first_line(exc)})") from None


def _refuse_pickle(argument: str, path: str, detail: str) -> UntrustedFileError:
    advice = SAFE_ALTERNATIVES if argument == "model" else (
        "save the weights alone: torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), "
        "path)")
    return UntrustedFileError(
        f"{argument}: {path!r} is a full pickle, not weights only (it needs {detail}); {RISK}, so polyviz does "
        f"not load it by default; {advice}"
    )


def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False, argument: str = "weights") -> dict:
    """The state dict in ``path``: a ``.safetensors`` file, or a ``torch.save(state_dict)`` file read with
    ``weights_only=True`` (``{"state_dict": ...}`` checkpoints are unwrapped). A file that needs full
    unpickling is refused (UntrustedFileError) unless ``trust_pickle``. ``argument`` names the
    argument in error messages."""
    import torch

    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InputError(f"{argument}: {path!r} is a safetensors file; pip install safetensors") from None
        try:
            state: Any = load_file(path, device="cpu")
        except Exception as exc:
            raise ModelError(f"{argument}: cannot read {path!r} as safetensors ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None
    else:
        kind = _archive_kind(path)
        if kind is not None:
            saved = "torch.jit.save" if kind == "torchscript" else "torch.export.save"
            raise ModelError(f"{argument}: {path!r} is a whole model ({saved}), not a state dict; give it as the "
                             "model file")
        try:
            state = _weights_only(path)
        except _NeedsPickle as exc:
            if not trust_pickle:
                raise _refuse_pickle(argument, path, exc.detail) from None
            state = _full_pickle(path, argument)
        except ModelError as exc:
            raise ModelError(f"{argument}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{argument}: {path!r} holds a {type(state).__name__}, not a state dict (names -> tensors)")
    return state


def _full_pickle(path: str, argument: str) -> Any:
    """``torch.load(weights_only=False)``: only after the caller said the file is trusted."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"{argument}: cannot load {path!r} with torch ({type(exc).__name__}: {_first_line(exc)})") from None


def model_names() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    guard_triton()
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision(name: str, weights: str | None, trust_pickle: bool, argument: str = "model") -> Any:
    """torchvision's ``name`` (random init), with the state dict in ``weights`` when given."""
    from polyviz.errors import did_you_mean
    from polyviz_torch._zoo import load_state_dict

    names = model_names()
    if name not in names:
        what = f"no torchvision model {name!r}" if argument == "arch" else f"no file {name!r} and no torchvision model of that name"
        raise InputError(f"{argument}: {what}.{did_you_mean(name, names)}")
    guard_triton()
    import torchvision.models as tvm

    model = tvm.get_model(name, weights=None)
    if weights is not None:
        load_state_dict(model, weights, trust_pickle=trust_pickle)
    return model.eval()


def _load_file(path: str, trust_pickle: bool) -> Any:
    """The model saved whole in ``path`` (see the module docstring for what is read how)."""
    import torch

    state_dict_help = ("give its torchvision architecture (--arch NAME, API arch=NAME; or --model NAME --weights "
                       "FILE), or save the whole model as TorchScript")
    if path.lower().endswith(".safetensors"):
        read_state_dict(path, argument="model")  # a readable file, or a clear error
        raise ModelError(f"model: {path!r} holds a state dict (weights only), not a model; {state_dict_help}")
    kind = _archive_kind(path)
    try:
        with warnings.catch_warnings():  # torch.jit's and torch.export's notices are not the user's concern here
            warnings.simplefilter("ignore")
            if kind == "torchscript":
                model = torch.jit.load(path, map_location="cpu")
            elif kind == "export" or path.lower().endswith(".pt2"):
                if not trust_pickle:
                    raise UntrustedFileError(
                        f"model: {path!r} is a torch.export archive; torch.export.load unpickles parts of it and "
                        f"evaluates its shape expressions (torch's documentation: never load one from an untrusted "
                        f"source), so {RISK}; polyviz does not load it by default; {SAFE_ALTERNATIVES}"
                    )
                model = torch.export.unflatten(torch.export.load(path))  # the module tree: hooks and CAMs work
            else:
                try:
                    model = _weights_only(path)
                except _NeedsPickle as exc:
                    if not trust_pickle:
                        raise _refuse_pickle("model", path, exc.detail) from None
                    model = _full_pickle(path, "model")
    except (UntrustedFileError, ModelError) as exc:
        if str(exc).startswith("model: "):
            raise
        raise ModelError(f"model: {exc}") from None
    except Exception as exc:
        raise ModelError(f"model: cannot load {path!r} with torch ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(model, dict):
        raise ModelError(f"model: {path!r} holds a state dict (weights only), not a model; {state_dict_help}")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model: {path!r} holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_model(
    source: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Any:
    """An ``nn.Module`` in eval mode from ``source``: a model file (TorchScript, or with
    ``trust_pickle`` a ``torch.save(model)`` pickle or a ``torch.export`` ``.pt2``), a weights file
    (``.safetensors`` or a state dict) with ``arch`` a torchvision model name, or a torchvision
    model name (random init, or ``weights``: a state-dict or ``.safetensors`` file).

    ``trust_pickle``: allow files that need full unpickling, which can run arbitrary code; give it
    only for files from a source you trust. Without it such a file raises
    :class:`polyviz.errors.UntrustedFileError` and nothing in it runs."""
    path = os.fspath(source)
    if arch is not None and not isinstance(arch, str):
        raise InputError(f"arch: expected a torchvision model name (resnet50), got {type(arch).__name__}")
    if os.path.isfile(path):
        if arch is not None:
            if weights is not None:
                raise InputError(f"weights: {path!r} already gives the weights of arch={arch!r}; drop weights=")
            return _torchvision(arch, path, trust_pickle, argument="arch")
        if weights is not None:
            raise InputError(f"weights: {path!r} is a whole model; weights= is for model names (vgg16, resnet18...)")
        return _load_file(path, trust_pickle)
    if arch is not None:
        raise InputError(f"arch: needs the model to be a weights file (.safetensors, or a .pt/.pth state dict); "
                         f"no file {path!r}")
    return _torchvision(path, None if weights is None else os.fspath(weights), trust_pickle)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order, from torchvision's weight metadata."""
    guard_triton()
    import torchvision.models as tvm

    return list(tvm.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
