"""What the ``polyviz`` command reads: models by name or file, and images from files and folders.

Models: ``demo`` (the shapes demo network), ``vgg16``/``vgg19`` (ImageNet weights from the local
cache or ``weights``; ``seed`` for numpy-drawn weights), a saved model file (``.keras``/``.h5`` for
Keras, always with ``safe_mode=True``; for torch TorchScript, a ``.safetensors`` or state-dict file
with ``arch`` (a torchvision name), and, only with ``trust_pickle=True`` because loading them can
run code, ``torch.save(model)`` pickles and ``torch.export`` ``.pt2`` files), or a torchvision
model name. The file suffix picks the backend, so no framework is imported here; the backend's
``load_model`` reads the file. Images: PIL, RGB, resized to the model's input size, in [0, 1]
(16-bit images rescaled, transparency composited onto white, at most 64 megapixels: see
:func:`read_image`), streamed in batches by :func:`iter_image_batches`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError, ModelError, did_you_mean
from polyviz.preprocess import Preprocess
from polyviz.registry import available_backends, backend_class

__all__ = ["LoadedModel", "load_model", "load_images", "image_files", "MODEL_SUFFIXES", "IMAGE_SUFFIXES",
           "BUILTIN_MODELS", "class_names_for", "read_image", "iter_image_batches", "ImageBatch", "ImageReadError",
           "check_image_headers", "max_image_pixels", "MAX_IMAGE_PIXELS"]

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


# ---- reading images -----------------------------------------------------------------------------
#: Default largest image, in pixels (width x height as the file's header declares it): 64 megapixels.
#: An image over the limit is refused from its header, before it is decoded. Change it with the
#: ``max_pixels`` argument or the ``POLYVIZ_MAX_IMAGE_PIXELS`` environment variable.
MAX_IMAGE_PIXELS = 64_000_000
MAX_PIXELS_ENV = "POLYVIZ_MAX_IMAGE_PIXELS"
#: Named backgrounds that transparent pixels are composited onto (default ``white``).
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(InputError):
    """An image file that cannot be used (unreadable, truncated, over the pixel limit); ``path``
    names it, so that a batch can report it and go on with the others."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` when given, else ``$POLYVIZ_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS`. PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, about 179
    megapixels) still applies above it: raise that one too for larger images."""
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return MAX_IMAGE_PIXELS
        try:
            max_pixels = int(float(text))
        except ValueError:
            raise InputError(f"{MAX_PIXELS_ENV}: expected a number of pixels such as 64000000, got {text!r}") from None
        what = MAX_PIXELS_ENV
    else:
        what = "max_pixels"
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"{what}: expected a positive number of pixels, got {max_pixels!r}")
    return int(max_pixels)


def _background(background: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(background, str):
        key = background.strip().lower()
        if key in BACKGROUNDS:
            return BACKGROUNDS[key]
        if len(key) == 7 and key.startswith("#"):
            try:
                return (int(key[1:3], 16), int(key[3:5], 16), int(key[5:7], 16))
            except ValueError:
                pass
    elif isinstance(background, (tuple, list)) and len(background) == 3 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in background):
        return (int(background[0]), int(background[1]), int(background[2]))
    raise InputError(f"background: expected white, black, gray, '#rrggbb' or an (r, g, b) tuple of 0..255, "
                     f"got {background!r}")


def _megapixels(n: int) -> str:
    return f"{n / 1e6:g} megapixels"


def _open(path: Path, limit: int) -> Any:
    """PIL's lazy image of ``path`` (header read, nothing decoded), checked against ``limit``."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit: the header said so
        import re

        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1))} pixels" if found else "more pixels than PIL allows"
        raise ImageReadError(f"images: {str(path)!r} declares {size}, over the limit of {_megapixels(limit)} "
                             f"({MAX_PIXELS_ENV} or max_pixels=)", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"images: cannot read {str(path)!r} as an image ({type(exc).__name__})", path) from None
    w, h = im.size
    if w * h > limit:
        im.close()
        raise ImageReadError(f"images: {str(path)!r} declares {w}x{h} = {w * h} pixels, over the limit of "
                             f"{_megapixels(limit)} ({MAX_PIXELS_ENV} or max_pixels= raises it)", path)
    return im


def check_image_headers(files: list[Path], *, max_pixels: int | None = None) -> list[ImageReadError]:
    """Open every file's header (nothing is decoded): the files that are not images or declare
    more pixels than the limit, as errors in file order. Cheap enough to run before a model loads."""
    limit = max_image_pixels(max_pixels)
    errors = []
    for f in files:
        try:
            _open(f, limit).close()
        except ImageReadError as exc:
            errors.append(exc)
    return errors


def read_image(
    path: str | Path | Any,
    size: tuple[int, int] | int,
    *,
    max_pixels: int | None = None,
    background: str | tuple[int, int, int] = "white",
) -> np.ndarray:
    """One image file (a path, or a binary file object named by its ``str``) as (H, W, 3) float32
    in [0, 1], resized to ``size`` (bilinear).

    - 8-bit images: RGB / 255 (grey levels repeated on the three channels), as PIL gives them.
    - 16-bit images (PIL modes ``I;16``, ``I;16B``, ``I`` of a 16-bit PNG or TIFF): / 65535, resized
      in float32, so no precision is lost (a 16-bit PNG scales like its 8-bit version, 257 = 65535 /
      255). Mode ``I`` values outside 0..65535 are clipped. 32-bit float images (mode ``F``) must
      hold values in [0, 1] and are refused otherwise.
    - Transparency (RGBA, LA, PA, a palette or grey image with a transparent colour) is composited
      onto ``background`` (default white; ``black``, ``gray``, ``'#rrggbb'`` or an (r, g, b) tuple).
    - An image whose header declares more than the pixel limit (:func:`max_image_pixels`, 64
      megapixels by default) is refused before it is decoded.

    Raises :class:`ImageReadError` (an :class:`InputError`) naming the file when it cannot be used.
    """
    from PIL import Image

    path = path if hasattr(path, "read") else Path(path)  # a binary file object (bytes read by Ray Data) too
    h, w = (size, size) if isinstance(size, int) else size
    bg = _background(background)
    im = _open(path, max_image_pixels(max_pixels))
    try:
        with im:
            im.load()
            mode = im.mode
            has_key = "transparency" in im.info and mode in ("P", "L", "RGB", "1")
            if mode in _ALPHA_MODES or has_key:
                rgba = im.convert("RGBA")
                flat = Image.new("RGBA", rgba.size, (*bg, 255))
                flat.alpha_composite(rgba)
                rgb = flat.convert("RGB").resize((w, h), Image.BILINEAR)
                return np.asarray(rgb, np.float32) / 255.0
            if mode in _SIXTEEN_BIT or mode == "F":
                grey = np.asarray(im, np.float32)
                if mode == "F":
                    lo, hi = float(np.nanmin(grey)), float(np.nanmax(grey))
                    if not (np.isfinite(grey).all() and lo >= 0.0 and hi <= 1.0):
                        raise ImageReadError(f"images: {str(path)!r} is a float image with values in [{lo:g}, {hi:g}]; "
                                             "expected [0, 1]", path)
                else:
                    grey = np.clip(grey, 0.0, 65535.0) / 65535.0
                small = np.asarray(Image.fromarray(grey, "F").resize((w, h), Image.BILINEAR), np.float32)
                return np.repeat(np.clip(small, 0.0, 1.0)[..., None], 3, axis=-1)
            rgb = im.convert("RGB").resize((w, h), Image.BILINEAR)
            return np.asarray(rgb, np.float32) / 255.0
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        detail = str(exc).split("\n")[0][:80]
        raise ImageReadError(f"images: cannot read {str(path)!r} as an image ({type(exc).__name__}"
                             f"{': ' + detail if detail else ''})", path) from None


@dataclass
class ImageBatch:
    """A batch of :func:`iter_image_batches`: the ``files`` read, their ``indices`` in the list
    given, their ``images`` (n, H, W, 3) float32 in [0, 1], and the ``errors`` of the files
    skipped since the previous batch."""

    files: list[Path]
    indices: list[int]
    images: np.ndarray
    errors: list[ImageReadError] = field(default_factory=list)


def iter_image_batches(
    files: list[str | Path],
    size: tuple[int, int] | int,
    batch: int = 8,
    *,
    skip_errors: bool = True,
    max_pixels: int | None = None,
    background: str | tuple[int, int, int] = "white",
) -> Iterator[ImageBatch]:
    """Read ``files`` lazily, ``batch`` images at a time (:func:`read_image` for each), so memory
    holds one batch whatever the number of files. With ``skip_errors`` an unusable file is left
    out and reported in the next batch's ``errors`` (a last batch may hold errors only); without,
    its :class:`ImageReadError` is raised at once."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"batch: expected a positive number of images, got {batch!r}")
    h, w = (size, size) if isinstance(size, int) else size
    limit = max_image_pixels(max_pixels)
    _background(background)
    done: list[Path] = []
    indices: list[int] = []
    buf = np.empty((int(batch), h, w, 3), np.float32)
    errors: list[ImageReadError] = []
    for i, f in enumerate(map(Path, files)):
        try:
            buf[len(done)] = read_image(f, (h, w), max_pixels=limit, background=background)
        except ImageReadError as exc:
            if not skip_errors:
                raise
            errors.append(exc)
            continue
        done.append(f)
        indices.append(i)
        if len(done) == batch:
            yield ImageBatch(done, indices, buf.copy(), errors)
            done, indices, errors = [], [], []
    if done or errors:
        yield ImageBatch(done, indices, buf[:len(done)].copy(), errors)


def load_images(
    paths: list[str | Path],
    size: tuple[int, int] | int,
    *,
    max_pixels: int | None = None,
    background: str | tuple[int, int, int] = "white",
) -> tuple[list[Path], np.ndarray]:
    """(files, (N, H, W, 3) float32 in [0, 1]): every image as :func:`read_image` reads it. All of
    them are held in memory at once: for many images, :func:`iter_image_batches` streams them."""
    h, w = (size, size) if isinstance(size, int) else size
    files = image_files(paths)
    out = np.empty((len(files), h, w, 3), np.float32)
    for i, f in enumerate(files):
        out[i] = read_image(f, (h, w), max_pixels=max_pixels, background=background)
    return files, out
