"""What the ``polyviz`` command reads: models by name or file, and images from files and folders.

Models: ``demo`` (the shapes demo network), ``vgg16``/``vgg19`` (ImageNet weights from the local
cache or ``weights``; ``seed`` for numpy-drawn weights), a saved model file (``.keras``/``.h5`` for
Keras, always with ``safe_mode=True``; for torch TorchScript, a ``.safetensors`` or state-dict file
with ``arch`` (a torchvision name), and, only with ``trust_pickle=True`` because loading them can
run code, ``torch.save(model)`` pickles and ``torch.export`` ``.pt2`` files), or a torchvision
model name. The file suffix picks the backend, so no framework is imported here; the backend's
``load_model`` reads the file. Images: PIL, RGB, resized to the model's input size, in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError, ModelError, did_you_mean
from polyviz.preprocess import Preprocess
from polyviz.registry import available_backends, backend_class

__all__ = ["LoadedModel", "load_model", "load_images", "image_files", "MODEL_SUFFIXES", "IMAGE_SUFFIXES",
           "BUILTIN_MODELS", "class_names_for"]

#: File suffix -> the backend that reads it.
MODEL_SUFFIXES = {".keras": "keras", ".h5": "keras", ".hdf5": "keras",
                  ".pt": "torch", ".pth": "torch", ".pkl": "torch", ".ts": "torch", ".torchscript": "torch",
                  ".safetensors": "torch", ".pt2": "torch"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
BUILTIN_MODELS = ("demo", "vgg16", "vgg19")


@dataclass
class LoadedModel:
    """A model and what the command needs to feed it: the backend name, the input size (H, W)
    (None: any), the preprocessing to apply in the graph, the class names (None: unknown), and
    ``layer_names`` {canonical name: native name} when the model was built from a spec."""

    model: Any
    backend: str
    name: str
    size: tuple[int, int] | None
    preprocess: Preprocess | None = None
    class_names: list[str] | None = None
    layer_names: dict[str, str] = field(default_factory=dict)
    source: Any = None  # (spec, weights) when built from a NetworkSpec


def _installed(preferred: str | None) -> str:
    if preferred is not None:
        backend_class(preferred)  # clear error when absent
        return preferred
    names = list(available_backends())
    for name in ("torch", "keras", *names):
        if name in names:
            try:
                if backend_class(name).framework_version() is not None:
                    return name
            except Exception:  # noqa: S112 - a broken framework: try the next
                continue
    raise InputError("backend: no framework installed; pip install 'polyviz[torch]' or 'polyviz[keras]'")


def imagenet_names() -> list[str] | None:
    """ImageNet's class names where a backend ships them (torchvision does), else None."""
    try:
        cls = backend_class("torch")
        if cls.framework_version() is None or not hasattr(cls, "imagenet_categories"):
            return None
        return list(cls.imagenet_categories())
    except Exception:
        return None


def class_names_for(n_classes: int) -> list[str] | None:
    """ImageNet names for a 1000-way output, else None."""
    return imagenet_names() if n_classes == 1000 else None


def load_model(
    name: str,
    backend: str | None = None,
    weights: str | Path | None = None,
    *,
    size: int | None = None,
    seed: int | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load ``name`` (see the module docstring) in ``backend`` (default: the file's framework, or
    torch when installed). ``size``: input pixels for models that do not fix one (default 224).
    ``seed``: VGG with numpy-drawn weights instead of ImageNet weights (at another ``size`` than
    224, VGG's convolutions with a 512-unit dense head). ``arch``: the torchvision model name that
    ``name``, a weights file (``.safetensors`` or a state dict), is for. ``trust_pickle``: also load
    files that can run code when loaded (``torch.save(model)`` pickles, ``.pt2``); give it only for
    files from a source you trust (default: such files raise UntrustedFileError, nothing runs)."""
    from polyviz import models

    if not isinstance(name, str) or not name:
        raise InputError(f"model: expected demo, vgg16, vgg19, a model file or a torchvision name, got {name!r}")
    if weights is not None and not Path(weights).is_file():
        raise InputError(f"weights: no file {str(weights)!r}")
    key = name.lower()
    if arch is not None:
        if not isinstance(arch, str) or not arch:
            raise InputError(f"arch: expected a torchvision model name (resnet50), got {arch!r}")
        if not Path(name).is_file():
            raise InputError(f"arch: needs the model to be a weights file (.safetensors, or a .pt/.pth state "
                             f"dict); no file {name!r}")
        if backend not in (None, "torch"):
            raise InputError(f"backend: arch= names a torchvision model (torch), not {backend}")
        model = backend_class("torch").load_model(name, weights, arch=arch, trust_pickle=trust_pickle)
        px = int(size or 224)
        return LoadedModel(model, "torch", f"{arch} ({Path(name).name})", (px, px), models.preprocess_for("torch"),
                           imagenet_names())
    if key == "demo":
        from polyviz.models.demo import demo_spec, load_weights

        b = _installed(backend)
        spec = demo_spec()
        w = load_weights(weights, spec)
        model, names = backend_class(b).build(spec, w)
        return LoadedModel(model, b, "demo", (64, 64), None, list(models.DEMO_CLASSES), names, (spec, w))
    if key in ("vgg16", "vgg19"):
        b = _installed(backend)
        if seed is not None and size in (None, 224):
            model = models.vgg16(b, seed=int(seed)) if key == "vgg16" else models.vgg19(b, seed=int(seed))
            return LoadedModel(model, b, f"{key} (seeded random weights)", (224, 224), None, imagenet_names())
        if seed is not None:  # VGG's convolutions at another size, with a 512-unit head
            from polyviz.models.spec import VGG_CONFIGS, random_weights, vgg_spec

            px = int(size or 224)
            spec = vgg_spec(VGG_CONFIGS[key], input_shape=(px, px, 3), dense=(512, 512), classes=1000)
            w = random_weights(spec, int(seed))
            model, names = backend_class(b).build(spec, w)
            return LoadedModel(model, b, f"{key} (seeded random weights)", (px, px), None, imagenet_names(), names,
                               (spec, w))
        model = models.vgg16(b, weights or "imagenet") if key == "vgg16" else models.vgg19(b, weights or "imagenet")
        px = int(size or 224)
        return LoadedModel(model, b, key, (px, px), models.preprocess_for(b), imagenet_names())
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix in MODEL_SUFFIXES or path.exists():
        if not path.is_file():
            raise InputError(f"model: no file {name!r}")
        b = MODEL_SUFFIXES.get(suffix)
        if b is None:
            raise InputError(f"model: cannot tell the framework of {name!r} from its suffix; expected one of "
                             f"{', '.join(sorted(MODEL_SUFFIXES))}")
        if backend is not None and backend != b:
            raise InputError(f"backend: {name!r} is a {b} model file, not {backend}")
        return _from_file(path, b, weights, size, trust_pickle)
    # a torchvision name (only the torch backend knows them)
    b = backend or "torch"
    cls = backend_class(b) if b in available_backends() else None
    if cls is None or not hasattr(cls, "load_model") or b != "torch":
        raise InputError(f"model: unknown model {name!r}; expected demo, vgg16, vgg19, a model file "
                         f"({', '.join(sorted(MODEL_SUFFIXES))}) or a torchvision name (torch)."
                         f"{did_you_mean(key, BUILTIN_MODELS)}")
    try:
        model = cls.load_model(name, weights, trust_pickle=trust_pickle)
    except InputError as exc:
        hint = did_you_mean(key, BUILTIN_MODELS)
        raise InputError(f"model: unknown model {name!r}; expected demo, vgg16, vgg19, a model file or a "
                         f"torchvision name.{hint or str(exc).partition('.')[2]}") from None
    px = int(size or 224)
    return LoadedModel(model, b, name, (px, px), models.preprocess_for("torch"), imagenet_names())


def _from_file(path: Path, backend: str, weights: Any, size: int | None, trust_pickle: bool = False) -> LoadedModel:
    cls = backend_class(backend)
    if not hasattr(cls, "load_model"):
        raise ModelError(f"model: the {backend} backend cannot load model files")
    # Keras files are not pickles (polyviz's Keras loader always passes safe_mode=True): the opt-in is torch's
    extra = {"trust_pickle": trust_pickle} if backend == "torch" else {}
    model = cls.load_model(str(path), weights, **extra)
    px: tuple[int, int] | None = (int(size), int(size)) if size else None
    if backend == "keras":
        shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
        if shape[1] is not None and shape[2] is not None:
            px = (int(shape[1]), int(shape[2]))
    if px is None:
        px = (224, 224)
    return LoadedModel(model, backend, path.name, px, None, None)


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders' image files in name order."""
    if not paths:
        raise InputError("images: give at least one image file or folder")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {str(p)!r}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"images: no such file or folder {str(p)!r}")
    return files


def load_images(paths: list[str | Path], size: tuple[int, int] | int) -> tuple[list[Path], np.ndarray]:
    """(files, (N, H, W, 3) float32 in [0, 1]): every image RGB, resized to ``size`` (bilinear)."""
    from PIL import Image, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else size
    files = image_files(paths)
    out = np.empty((len(files), h, w, 3), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                rgb = im.convert("RGB").resize((w, h), Image.BILINEAR)
                out[i] = np.asarray(rgb, np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(f"images: cannot read {str(f)!r} as an image ({type(exc).__name__})") from None
    return files, out
