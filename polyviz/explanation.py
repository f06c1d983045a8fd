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

    def render(self, index: int = 0, *, sign: str = "absolute", cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
        """An (H, W, 3) uint8 picture: the heat map blended over the input image.

        ``sign``: 'absolute' (|map|), 'positive', 'negative' or 'all' (signed, centred). Display
        normalisation happens here only; the stored values stay raw.
        """
        from matplotlib import colormaps

        heat = self.heatmap(index).astype(np.float64)
        if sign == "absolute":
            heat = np.abs(heat)
        elif sign == "positive":
            heat = np.maximum(heat, 0)
        elif sign == "negative":
            heat = np.maximum(-heat, 0)
        elif sign != "all":
            from polyviz.errors import InputError

            raise InputError(f"sign: expected 'absolute', 'positive', 'negative' or 'all', got {sign!r}")
        if sign == "all":
            scale = np.abs(heat).max()
            norm = 0.5 + 0.5 * heat / scale if scale > 0 else np.full_like(heat, 0.5)
        else:
            top = heat.max()
            norm = heat / top if top > 0 else np.zeros_like(heat)
        colour = colormaps[cmap](norm)[..., :3]
        if self.inputs is not None:
            img = self.inputs[index].astype(np.float64)
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            img = img[..., :3]
            span = img.max() - img.min()
            img = (img - img.min()) / span if span > 0 else np.zeros_like(img)
            colour = (1 - alpha) * img + alpha * colour
        return (np.clip(colour, 0, 1) * 255).round().astype(np.uint8)

    def save(self, path: str | Path, index: int = 0, **render_options: Any) -> Path:
        """Write :meth:`render` of sample ``index`` as an image file (PNG by extension)."""
        from PIL import Image

        path = Path(path)
        Image.fromarray(self.render(index, **render_options)).save(path)
        return path

    def _repr_png_(self) -> bytes:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.render(0)).save(buf, format="PNG")
        return buf.getvalue()
