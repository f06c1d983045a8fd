"""The optimisation loop: gradient ascent (Adam or plain) on an image parameterisation, driven only
by the backend's input gradient of an objective.

One step, for the whole batch (all channels or classes at once, in chunks of ``batch_size``):

1. ``x = param.image(z)``; draw one random transformation ``T`` per image (jitter, scale, rotation,
   crop; :mod:`polyviz.optimisation.transforms`);
2. one backend call per chunk: objective values and ``g = d objective / d (T x)``, with the model's
   preprocessing applied by the backend inside the differentiable path;
3. pull back through the transformation, ``g_x = T^T g``; optionally normalise each image's
   gradient to mean |g_x| = 1 (so that the penalty weights mean the same for every network and
   layer), subtract the penalties' gradients (L1, L2, alpha-norm, TV);
4. ``g_z = J_param^T g_x``; an Adam (Kingma & Ba 2014) or plain ascent step on ``z``; the pixel
   parameterisation is projected back into [0, 1]; Yosinski et al.'s edits (blur every k steps,
   small-norm and small-contribution clipping) act on the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from polyviz.errors import InputError
from polyviz.optimisation import regularisers as R
from polyviz.optimisation.params import FourierParam, PixelParam
from polyviz.optimisation.transforms import Robustness
from polyviz.protocol import Backend, Objective

__all__ = ["Penalties", "Edits", "Adam", "Ascent", "make_optimizer", "objective_gradient", "optimise"]


@dataclass(frozen=True)
class Penalties:
    """Weights of the image priors (0 = off); see :mod:`polyviz.optimisation.regularisers`."""

    l1: float = 0.0
    l2: float = 0.0
    tv: float = 0.0
    tv_beta: float = 2.0
    alpha: float = 0.0
    alpha_power: float = 6.0

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "tv", "alpha"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"{name}: expected a weight >= 0, got {value!r}")

    def gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(penalty per image, its gradient), or None when every weight is 0."""
        total, grad = np.zeros(len(x)), None
        for weight, fn in (
            (self.l1, R.l1),
            (self.l2, R.l2),
            (self.tv, lambda a: R.total_variation(a, self.tv_beta)),
            (self.alpha, lambda a: R.alpha_norm(a, self.alpha_power)),
        ):
            if weight:
                value, g = fn(x)
                total = total + weight * value
                grad = weight * g if grad is None else grad + weight * g
        return None if grad is None else (total, grad)


@dataclass(frozen=True)
class Edits:
    """Yosinski et al.'s edits of the pixels between steps (pixel parameterisation only)."""

    blur_every: int = 0
    blur_sigma: float = 0.0
    clip_norm: float = 0.0  # percentile
    clip_contribution: float = 0.0  # percentile

    def __post_init__(self) -> None:
        for name in ("clip_norm", "clip_contribution"):
            value = getattr(self, name)
            if not 0 <= value < 100:
                raise InputError(f"{name}: expected a percentile in [0, 100), got {value!r}")
        if self.blur_every < 0 or self.blur_sigma < 0:
            raise InputError("blur_every, blur_sigma: expected values >= 0")

    @property
    def active(self) -> bool:
        return bool((self.blur_every and self.blur_sigma) or self.clip_norm or self.clip_contribution)

    def apply(self, step: int, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self.blur_every and self.blur_sigma and (step + 1) % self.blur_every == 0:
            x = R.gaussian_blur(x, self.blur_sigma)
        if self.clip_norm:
            x = R.clip_small_norm(x, self.clip_norm)
        if self.clip_contribution:
            x = R.clip_small_contribution(x, grad, self.clip_contribution)
        return x


NO_TRANSFORM = Robustness()
NO_PENALTY = Penalties()
NO_EDIT = Edits()


class Adam:
    """Adam ascent (Kingma & Ba 2014): ``z += lr * m_hat / (sqrt(v_hat) + eps)``."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def step(self, z: np.ndarray, g: np.ndarray, lr: float | None = None) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros_like(z), np.zeros_like(z)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * (g * g)
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        z += np.float32(self.lr if lr is None else lr) * (m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)
        return z


class Ascent:
    """Plain gradient ascent: ``z += lr * g``."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def step(self, z: np.ndarray, g: np.ndarray, lr: float | None = None) -> np.ndarray:
        z += np.float32(self.lr if lr is None else lr) * g.astype(np.float32)
        return z


def make_optimizer(name: str, lr: float) -> Adam | Ascent:
    if name == "adam":
        return Adam(lr)
    if name in ("ascent", "sgd"):
        return Ascent(lr)
    raise InputError(f"optimizer: expected 'adam' or 'ascent', got {name!r}")


def objective_gradient(
    backend: Backend, x: np.ndarray, objective_for: Callable[[slice], Objective], batch_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Objective values (N,) and input gradients for ``x``: one backend call per chunk of
    ``batch_size`` images (one call for the whole batch when ``batch_size`` is None)."""
    n = len(x)
    size = n if not batch_size else int(batch_size)
    if size >= n:
        res = backend.input_gradient(x, objective_for(slice(0, n)))
        return np.asarray(res.values, np.float64), res.gradient
    values, grads = [], []
    for start in range(0, n, size):
        sl = slice(start, min(start + size, n))
        res = backend.input_gradient(x[sl], objective_for(sl))
        values.append(res.values)
        grads.append(res.gradient)
    return np.concatenate(values).astype(np.float64), np.concatenate(grads)


def _normalise(g: np.ndarray) -> np.ndarray:
    scale = np.abs(g).reshape(len(g), -1).mean(axis=1)
    return g / np.maximum(scale, 1e-20)[:, None, None, None]


def optimise(
    backend: Backend,
    objective_for: Callable[[slice], Objective],
    param: PixelParam | FourierParam,
    z: np.ndarray,
    *,
    steps: int,
    optimizer: Adam | Ascent,
    rng: np.random.Generator,
    robustness: Robustness = NO_TRANSFORM,
    penalties: Penalties = NO_PENALTY,
    edits: Edits = NO_EDIT,
    normalize: bool = True,
    sign: float = 1.0,
    objective_scale: np.ndarray | None = None,
    grad_filter: Callable[[np.ndarray], np.ndarray] | None = None,
    lr_at: Callable[[int], float] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    desc: str = "optimise",
    step_offset: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``steps`` steps from ``z``; returns the final ``z`` and the objective values per step
    (one (N,) array per step, as the backend computed them on the transformed images).

    ``sign=-1`` descends the objective (inversion); ``objective_scale`` (N, 1, 1, 1) weighs each
    image's objective gradient before the penalties are subtracted. ``grad_filter`` maps the image gradient before
    the parameter step (deep dream's octaves). ``callback(step, images)`` gets every step's images
    (N, H, W, C) in [0, 1]; returning ``False`` stops the run.
    """
    n, h, w, _ = param.shape
    history: list[np.ndarray] = []
    iterator = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc=desc, unit="step", leave=False)
        iterator = bar
    for step in iterator:
        x = param.image(z)
        transform = robustness.sample(rng, n, (h, w))
        xt = x if transform is None else transform.apply(x)
        values, g = objective_gradient(backend, xt, objective_for, batch_size)
        history.append(values)
        if transform is not None:
            g = transform.adjoint(g)
        g = g.astype(np.float64) * sign
        if objective_scale is not None:
            g = g * objective_scale
        if normalize:
            g = _normalise(g)
        pen = penalties.gradient(x)
        if pen is not None:
            g = g - pen[1]
        if grad_filter is not None:
            g = grad_filter(g)
        gz = param.backward(z, g, x) if isinstance(param, FourierParam) else g.astype(np.float32)
        z = optimizer.step(z, gz, None if lr_at is None else lr_at(step_offset + step))
        z = param.project(z)
        if edits.active:
            z = edits.apply(step_offset + step, z, g)
        if bar is not None:
            bar.set_postfix(objective=f"{float(values.mean()):.4g}")
        if callback is not None and callback(step_offset + step, param.image(z)) is False:
            break
    if bar is not None:
        bar.close()
    return z, history
