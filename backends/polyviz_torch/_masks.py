"""Full-size masks built on the model's device from their small descriptions, chunk by chunk.

The definition is :func:`polyviz.protocol.materialize_masks` (numpy); this builds the same masks
with torch ops: boxes by comparisons, feature groups by indexing, low-resolution masks upsampled by
the matrices of :func:`polyviz.interpolation.resize_matrix` (``Ry @ m @ Rx.T``), then cropped at
the given offsets and min-max normalised per mask when asked.
"""

from __future__ import annotations

import numpy as np
import torch

from polyviz import interpolation
from polyviz.errors import InputError
from polyviz.protocol import Boxes, FeatureGroups, LowResMasks, MaskSpec

__all__ = ["MaskBuilder"]


class MaskBuilder:
    """Builds masks ``[start, stop)`` of a mask description as an (M, H, W) tensor."""

    def __init__(self, spec: MaskSpec, height: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.height, self.width = height, width
        self.device, self.dtype = device, dtype
        if isinstance(spec, Boxes):
            boxes = np.asarray(spec.boxes, dtype=np.int64).reshape(-1, 4)
            self.boxes = torch.as_tensor(boxes, device=device)
        elif isinstance(spec, FeatureGroups):
            groups = np.asarray(spec.groups, dtype=np.int64)
            keep = np.asarray(spec.keep, dtype=np.float32)
            if groups.shape != (height, width):
                raise InputError(f"masks: feature groups of shape {groups.shape} do not match the input {height}x{width}")
            if keep.ndim != 2 or (groups.size and (groups.min() < 0 or groups.max() >= keep.shape[1])):
                raise InputError(f"masks: keep must be (M, G) with every group id in [0, G); got keep {keep.shape}")
            self.groups = torch.as_tensor(groups, device=device)
            self.keep = torch.as_tensor(keep, device=device, dtype=torch.float32)
        elif isinstance(spec, LowResMasks):
            masks = np.asarray(spec.masks, dtype=np.float32)
            if masks.ndim != 3:
                raise InputError(f"masks: low-resolution masks must be (M, h, w), got shape {masks.shape}")
            size = tuple(spec.upsampled_size or (height, width))
            self.size = (int(size[0]), int(size[1]))
            self.low = torch.as_tensor(masks, device=device)
            self.ry = torch.tensor(interpolation.resize_matrix(masks.shape[1], self.size[0], spec.mode), device=device)
            self.rx = torch.tensor(interpolation.resize_matrix(masks.shape[2], self.size[1], spec.mode), device=device)
            self.offsets = None
            if spec.offsets is not None:
                offsets = np.asarray(spec.offsets, dtype=np.int64)
                if offsets.shape != (len(masks), 2):
                    raise InputError(f"offsets: expected ({len(masks)}, 2), got {offsets.shape}")
                if len(offsets) and (
                    offsets.min() < 0
                    or offsets[:, 0].max() + height > self.size[0]
                    or offsets[:, 1].max() + width > self.size[1]
                ):
                    raise InputError(
                        f"offsets: an {height}x{width} window at these offsets leaves the upsampled "
                        f"{self.size[0]}x{self.size[1]} masks"
                    )
                self.offsets = torch.as_tensor(offsets, device=device)
        else:
            raise InputError(f"masks: expected LowResMasks, FeatureGroups or Boxes, got {type(spec).__name__}")

    def masks(self, start: int, stop: int) -> torch.Tensor:
        """Masks ``start`` to ``stop`` as (stop - start, H, W) in the model's dtype."""
        return self._build(start, stop).to(self.dtype)

    def _build(self, start: int, stop: int) -> torch.Tensor:
        h, w = self.height, self.width
        spec = self.spec
        if isinstance(spec, Boxes):
            b = self.boxes[start:stop]
            ys = torch.arange(h, device=self.device)
            xs = torch.arange(w, device=self.device)
            in_y = (ys[None, :] >= b[:, 0:1].clamp(min=0)) & (ys[None, :] < b[:, 2:3])
            in_x = (xs[None, :] >= b[:, 1:2].clamp(min=0)) & (xs[None, :] < b[:, 3:4])
            return 1.0 - (in_y[:, :, None] & in_x[:, None, :]).to(torch.float32)
        if isinstance(spec, FeatureGroups):
            return self.keep[start:stop][:, self.groups]
        up = torch.einsum("Hh,mhw,Ww->mHW", self.ry, self.low[start:stop], self.rx)
        if self.offsets is not None:
            off = self.offsets[start:stop]
            rows = off[:, 0:1] + torch.arange(h, device=self.device)[None, :]
            cols = off[:, 1:2] + torch.arange(w, device=self.device)[None, :]
            picks = torch.arange(len(off), device=self.device)[:, None, None]
            up = up[picks, rows[:, :, None], cols[:, None, :]]
        if spec.normalize:
            lo = up.amin(dim=(1, 2), keepdim=True)
            hi = up.amax(dim=(1, 2), keepdim=True)
            span = hi - lo
            up = torch.where(span > 0, (up - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(up))
        return up
