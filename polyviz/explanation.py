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

    ``attribution``: input-shaped in the caller's layout for input-space methods, or (N, H, W) at
    input resolution for map methods (CAMs, occlusion). ``layer_attribution``: (N, h, w) at the
    layer's resolution (CAM methods). ``target``: the class explained per sample. ``scores``: the
    model's score for that class where computed. Normalising, clipping and colouring happen only
    in :meth:`render`.
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

    @property
    def kind(self) -> str:
        """'map' for (N, H, W) maps, 'input' for input-shaped attributions."""
        return "map" if self.attribution.ndim == 3 else "input"

    def heatmap(self, index: int = 0) -> np.ndarray:
        """(H, W) map of sample ``index``: the map itself, or the sum over channels of an
        input-shaped attribution (signed)."""
        a = self.attribution[index]
        if self.kind == "map":
            return a
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
        go to the style that takes them, as do further ``options`` (e.g. ``vmax``). Display
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
        attribution = self.heatmap(i) if style in map_styles else self.attribution_hwc(i)
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

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture[..., :3] if picture.shape[-1] == 4 else picture).save(path)
        return path

    def _repr_png_(self) -> bytes:
        """Notebooks show an explanation as :meth:`render` of its first sample."""
        from polyviz.render import png_bytes

        return png_bytes(self.render(0))
