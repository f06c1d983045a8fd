"""Model preprocessing declared as data, applied by the backend inside the differentiable path.

``x_model = (reorder(x * scale) - mean) / std`` where ``reorder`` flips RGB to BGR when
``channel_order == "BGR"``. Gradients are therefore taken with respect to the caller's image
(for instance in [0, 1] or [0, 255]), not the normalised tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyviz.errors import InputError

__all__ = ["Preprocess", "PRESETS", "TORCHVISION_MEAN", "TORCHVISION_STD", "CAFFE_MEAN_BGR"]

TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: Preset names :meth:`Preprocess.named` knows; "none" is no preprocessing (None).
PRESETS = ("torchvision", "caffe", "tf", "raw", "none")


@dataclass(frozen=True)
class Preprocess:
    """Per-channel affine preprocessing: scale, optional RGB->BGR flip, then (x - mean) / std.

    ``mean`` and ``std`` are given in the model's channel order (after the flip). ``input_range``:
    the largest value of the caller's images (they lie in [0, input_range]) where it is known; the
    presets declare it, and :func:`polyviz.explain` warns (:class:`~polyviz.errors.InputRangeWarning`)
    when ``x`` lies far outside it. None: not declared, no check.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    channel_order: str = "RGB"
    input_range: float | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order: expected 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.input_range is not None:
            try:
                value = float(self.input_range)
            except (TypeError, ValueError):
                value = float("nan")
            if isinstance(self.input_range, bool) or not (np.isfinite(value) and value > 0):
                raise InputError(f"input_range: expected a finite number > 0 or None, got {self.input_range!r}")
            object.__setattr__(self, "input_range", value)
        object.__setattr__(self, "mean", tuple(float(m) for m in np.atleast_1d(self.mean)))
        object.__setattr__(self, "std", tuple(float(s) for s in np.atleast_1d(self.std)))
        if any(s == 0 for s in self.std):
            raise InputError("std: every channel's std must be non-zero")

    @classmethod
    def torchvision(cls, input_range: float = 1.0) -> Preprocess:
        """torchvision ImageNet models: RGB in [0, input_range] -> ImageNet mean/std normalised."""
        return cls(TORCHVISION_MEAN, TORCHVISION_STD, scale=1.0 / float(input_range), input_range=input_range)

    @classmethod
    def caffe(cls, input_range: float = 255.0) -> Preprocess:
        """Keras ``vgg16.preprocess_input`` ('caffe'): RGB in [0, input_range] -> BGR, [0, 255],
        ImageNet mean subtracted, no scaling by std."""
        return cls(CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), scale=255.0 / float(input_range), channel_order="BGR",
                   input_range=input_range)

    @classmethod
    def tf(cls, input_range: float = 1.0) -> Preprocess:
        """Keras' 'tf' mode (``preprocess_input`` of Inception v3, Xception, MobileNet, ResNet v2):
        RGB in [0, input_range] -> [-1, 1]."""
        return cls((1.0,), (1.0,), scale=2.0 / float(input_range), input_range=input_range)

    @classmethod
    def raw(cls, input_range: float = 1.0) -> Preprocess:
        """RGB in [0, input_range] -> [0, 255] as is: models that normalise inside themselves
        (Keras EfficientNet, EfficientNetV2, ConvNeXt, RegNet applications)."""
        return cls((0.0,), (1.0,), scale=255.0 / float(input_range), input_range=input_range)

    @classmethod
    def named(cls, name: str | Preprocess | None, input_range: float | None = None) -> Preprocess | None:
        """Resolve a preset name ('torchvision', 'caffe', 'tf', 'raw', 'none'), a Preprocess, or None."""
        if name is None or isinstance(name, Preprocess) or name == "none":
            return None if name == "none" else name
        presets = {"torchvision": cls.torchvision, "caffe": cls.caffe, "tf": cls.tf, "raw": cls.raw}
        if name not in presets:
            raise InputError(f"preprocess: unknown preset {name!r}; expected one of {list(PRESETS)}")
        return presets[name]() if input_range is None else presets[name](input_range)

    def arrays(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) broadcast to ``channels`` values, float32."""
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (channels,))
        return mean.copy(), std.copy()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The reference numpy definition, channels-last; backends do the same in-graph."""
        x = np.asarray(x, np.float32) * np.float32(self.scale)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean, std = self.arrays(x.shape[-1])
        return (x - mean) / std

    def describe(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "scale": self.scale, "channel_order": self.channel_order,
                "input_range": self.input_range}


