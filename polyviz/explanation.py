"""The result of an explanation: raw values plus what produced them, and a way to look at them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Raw, signed, unnormalised float32 attributions and their metadata.

    ``attribution``: input-shaped in the caller's layout for input-space methods (``kind="input"``),
    (N, H, W) at input resolution for map methods (CAMs, occlusion; ``kind="map"``), or shaped like
    one layer's output for layer methods (``kind="layer"``): (N, h, w, C) channels-last whatever the
    caller's layout (as ``neuron=`` indices and ``Backend.layer_activations`` are), or (N, units).
    ``layer_attribution``: (N, h, w) at the layer's resolution (CAM methods). ``target``: the
    class explained per sample. ``scores``: the model's score for that class where computed.
    Normalising, clipping and colouring happen only in :meth:`render`.
    """

    attribution: np.ndarray
    target: np.ndarray
    method: str
    backend: str
    layer: str | None = None
    layer_attribution: np.ndarray | None = None
    scores: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)
    layout: str = "NHWC"
    inputs: np.ndarray | None = field(default=None, repr=False)  # (N, H, W, C) channels-last
    #: "input", "map" or "layer" (see above); None infers "map" for (N, H, W), else "input".
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = "map" if np.ndim(self.attribution) == 3 else "input"
        if self.kind not in ("input", "map", "layer"):
            from polyviz.errors import InputError

            raise InputError(f"kind: expected 'input', 'map' or 'layer', got {self.kind!r}")

    def heatmap(self, index: int = 0) -> np.ndarray:
        """(H, W) map of sample ``index``: the map itself, or the sum over channels of an
        input-shaped attribution (signed); for a layer attribution (h, w, C), the sum over its
        channels at the layer's resolution (:meth:`render` upsamples it to the input)."""
        a = self.attribution[index]
        if self.kind == "map":
            return a
        if self.kind == "layer":
            if a.ndim != 3:
                from polyviz.errors import InputError

                raise InputError(
                    f"attribution: the attribution of layer {self.layer!r} has shape {a.shape} per sample, no "
                    "(h, w, C) map to show; read explanation.attribution instead"
                )
            return a.sum(axis=-1)
        return a.sum(axis=0) if self.layout == "NCHW" else a.sum(axis=-1)

    def _check_index(self, index: int) -> int:
        from polyviz.errors import InputError

        n = self.attribution.shape[0]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise InputError(f"index: expected a sample index in [0, {n}), got {index!r}")
        return int(index) % n

    def attribution_hwc(self, index: int = 0) -> np.ndarray:
        """Sample ``index``'s attribution channels-last: (H, W, C) for input-shaped attributions,
        (H, W) for maps."""
        a = self.attribution[self._check_index(index)]
        if self.kind == "input" and self.layout == "NCHW":
            return np.transpose(a, (1, 2, 0))
        return a

    def render(
        self,
        index: int = 0,
        *,
        style: str = "overlay",
        sign: str | None = None,
        cmap: Any = None,
        alpha: float | None = None,
        clip_percentile: float | None = None,
        **options: Any,
    ) -> np.ndarray:
        """A uint8 picture of sample ``index`` (see :func:`polyviz.render.picture`).

        ``style``: 'overlay' (default: the heat map blended over the input image, or the bare heat
        map when the input is not kept), 'heatmap', 'masked', 'alpha', 'original', or for
        input-shaped attributions 'gradient', 'grayscale', 'positive', 'negative'. ``sign`` ('absolute'
        by default for the map styles: 'absolute', 'positive', 'negative' or 'all'), ``cmap``
        (None: 'jet', or 'bwr' for sign 'all'), ``alpha`` (0.5 for 'overlay') and ``clip_percentile``
        go to the style that takes them, as do further ``options`` (e.g. ``vmax``). A layer
        attribution (h, w, C) renders with the map styles only: its channel sum, upsampled
        (bilinear, :mod:`polyviz.interpolation`) to the input's size when the input is kept. Display
        normalisation happens here only; the stored values stay raw.
        """
        from polyviz.render import picture

        i = self._check_index(index)
        given = {"sign": sign, "cmap": cmap, "alpha": alpha, "clip_percentile": clip_percentile}
        opts = {k: v for k, v in given.items() if v is not None}
        map_styles = ("overlay", "heatmap", "masked", "alpha")
        if style in map_styles:
            opts.setdefault("sign", "absolute")
        image = None if self.inputs is None else self.inputs[i]
        if self.kind == "layer" and style not in (*map_styles, "original"):
            from polyviz.errors import InputError

            raise InputError(f"style: a layer attribution renders with the map styles {map_styles}, not {style!r}")
        attribution = self.heatmap(i) if style in map_styles else self.attribution_hwc(i)
        if self.kind == "layer" and style in map_styles and image is not None and attribution.shape != image.shape[:2]:
            from polyviz import interpolation

            attribution = interpolation.resize(attribution, tuple(image.shape[:2]))
        return picture(attribution, image, style=style, **opts, **options)

    def save(self, path: str | Path, index: int = 0, **style: Any) -> Path:
        """Write :meth:`render` of sample ``index`` (``style`` and options as there) as a PNG file,
        or in the format of another image suffix PIL knows ('.jpg', ...)."""
        from polyviz.render import save_png

        path = Path(path)
        picture = self.render(index, **style)
        if path.suffix.lower() in ("", ".png"):
            return save_png(picture, path)
        from PIL import Image

        from polyviz.render._atomic import atomic_write

        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            from polyviz.errors import InputError

            raise InputError(f"path: no image format for the suffix {path.suffix!r} of {str(path)!r}; use .png or .jpg")
        img = Image.fromarray(picture[..., :3] if picture.shape[-1] == 4 else picture)
        return atomic_write(path, lambda fh: img.save(fh, format=fmt))  # atomic, never through a planted symlink

    def _repr_png_(self) -> bytes:
        """Notebooks show an explanation as :meth:`render` of its first sample."""
        from polyviz.render import png_bytes

        return png_bytes(self.render(0))
