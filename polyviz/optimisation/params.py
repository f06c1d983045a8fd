"""Image parameterisations: how the optimised numbers become an image in [0, 1].

Each parameterisation maps a float32 parameter array ``z`` to a channels-last batch of images
``x = image(z)`` (N, H, W, C) in [0, 1], and chains an image gradient back to the parameters with
the exact adjoint of its Jacobian (``backward(z, g) = J(z)^T g``), so the optimiser runs on ``z``
in numpy while the backend only ever sees images.

* :class:`PixelParam` - the pixels themselves, kept in [0, 1] by projection (clipping) after each
  step (Simonyan et al. 2013; Yosinski et al. 2015).
* :class:`FourierParam` - Lucid's parameterisation (Olah, Mordvintsev & Schubert, "Feature
  Visualization", Distill 2017): a real 2-D Fourier spectrum scaled by 1/f (so that every
  frequency has about the same energy, as in natural images), an inverse real FFT, a linear colour
  decorrelation (the square root of ImageNet's colour covariance) and a sigmoid into [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["PixelParam", "FourierParam", "COLOR_CORRELATION_SVD_SQRT", "make_param"]

#: Square root of ImageNet's RGB covariance (Lucid's ``color_correlation_svd_sqrt``).
COLOR_CORRELATION_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float64
)


class PixelParam:
    """``x = z``: the image is the parameter, projected back into [0, 1] after every step."""

    name = "pixel"

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def init(self, rng: np.random.Generator, std: float = 0.05, start: np.ndarray | None = None) -> np.ndarray:
        """Grey (0.5) plus Gaussian noise of ``std``, or ``start`` itself."""
        if start is not None:
            return np.clip(np.asarray(start, np.float32), 0.0, 1.0).copy()
        z = 0.5 + std * rng.standard_normal(self.shape)
        return np.clip(z, 0.0, 1.0).astype(np.float32)

    def image(self, z: np.ndarray) -> np.ndarray:
        return z

    def backward(self, z: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g

    def project(self, z: np.ndarray) -> np.ndarray:
        return np.clip(z, 0.0, 1.0, out=z)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude (cycles per pixel) of every entry of a (h, w // 2 + 1) half spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FourierParam:
    """Lucid's ``fft_image`` + ``to_valid_rgb``: ``x = sigmoid(D(irfft2(s * (re + i im)) / 4))``.

    ``s = sqrt(H W) / max(f, 1 / max(H, W)) ** decay_power`` is the 1/f scaling; ``D`` multiplies
    each pixel's colour by ``COLOR_CORRELATION_SVD_SQRT / max column norm`` when ``decorrelate``
    (3-channel images only). ``z`` holds the real and imaginary parts, shape (2, N, C, H, W//2+1).
    """

    name = "fourier"

    def __init__(self, shape: tuple[int, int, int, int], decorrelate: bool = True, decay_power: float = 1.0) -> None:
        self.shape = tuple(int(s) for s in shape)
        n, h, w, c = self.shape
        freqs = rfft2d_freqs(h, w)
        self.scale = (np.sqrt(h * w) / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power).astype(np.float64)
        # irfft2's adjoint: columns other than 0 (and w/2 for even w) stand for two conjugate entries
        self.doubling = np.full(freqs.shape[1], 2.0)
        self.doubling[0] = 1.0
        if w % 2 == 0:
            self.doubling[-1] = 1.0
        self.decorrelate = bool(decorrelate) and c == 3
        corr = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
        self.color = corr  # x_rgb = t @ color.T

    @property
    def param_shape(self) -> tuple[int, ...]:
        n, h, w, c = self.shape
        return (2, n, c, h, w // 2 + 1)

    def init(self, rng: np.random.Generator, std: float = 0.01, start: np.ndarray | None = None) -> np.ndarray:
        """Spectrum entries ~ N(0, std), as Lucid (a nearly uniform grey image)."""
        if start is not None:
            raise ValueError("the Fourier parameterisation starts from noise, not from an image")
        return (std * rng.standard_normal(self.param_shape)).astype(np.float32)

    def _pre_sigmoid(self, z: np.ndarray) -> np.ndarray:
        n, h, w, c = self.shape
        spectrum = (z[0].astype(np.float64) + 1j * z[1].astype(np.float64)) * self.scale
        t = np.fft.irfft2(spectrum, s=(h, w)) / 4.0  # (N, C, H, W)
        t = np.moveaxis(t, 1, -1)
        if self.decorrelate:
            t = t @ self.color.T
        return t

    def image(self, z: np.ndarray) -> np.ndarray:
        t = self._pre_sigmoid(z)
        return (1.0 / (1.0 + np.exp(-t))).astype(np.float32)

    def backward(self, z: np.ndarray, g: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """``J^T g``: sigmoid derivative, colour matrix transposed, then irfft2's adjoint
        ``(c / HW) rfft2`` (c = 2 for columns that stand for a conjugate pair), times the scale."""
        n, h, w, c = self.shape
        if x is None:
            x = self.image(z)
        x64 = x.astype(np.float64)
        gt = np.asarray(g, np.float64) * x64 * (1.0 - x64)
        return self._linear_adjoint(gt)

    def _linear_adjoint(self, gt: np.ndarray) -> np.ndarray:
        n, h, w, c = self.shape
        if self.decorrelate:
            gt = gt @ self.color
        gt = np.moveaxis(gt, -1, 1) / 4.0  # (N, C, H, W)
        spec = np.fft.rfft2(gt) * (self.doubling / (h * w)) * self.scale
        return np.stack([spec.real, spec.imag]).astype(np.float32)

    def linear(self, z: np.ndarray) -> np.ndarray:
        """The linear part (before the sigmoid), float64: for the adjoint tests."""
        return self._pre_sigmoid(z)

    def project(self, z: np.ndarray) -> np.ndarray:
        return z


def make_param(param: str, shape: tuple[int, int, int, int], decorrelate: bool = True) -> PixelParam | FourierParam:
    """The parameterisation called ``param`` ("pixel" or "fourier") for images of ``shape``."""
    if param == "pixel":
        return PixelParam(shape)
    if param == "fourier":
        return FourierParam(shape, decorrelate=decorrelate)
    from polyviz.errors import InputError

    raise InputError(f"param: expected 'pixel' or 'fourier', got {param!r}")
