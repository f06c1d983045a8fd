"""Adversarial examples: the fast gradient sign method (Goodfellow, Shlens & Szegedy 2014,
"Explaining and Harnessing Adversarial Examples", arXiv:1412.6572) and its iterative form (basic
iterative method, Kurakin, Goodfellow & Bengio 2016, arXiv:1607.02533), untargeted or targeted.

Each step: a forward pass gives the softmax ``p`` of the current images; the gradient of the
cross-entropy ``-log p_y`` is the input gradient of ``sum((p - onehot(y)) * logits)`` (the
backend's :class:`~polyviz.protocol.OutputWeighting` objective with ``p`` held fixed, which is the
exact cross-entropy gradient). Untargeted: ``x += a * sign(grad CE(y))`` with ``y`` the predicted
(or given) label; targeted: ``x -= a * sign(grad CE(target))``; then clip to the L-infinity ball
of radius ``eps`` around ``x`` and to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polyviz.api import predict
from polyviz.errors import InputError, TargetError
from polyviz.optimisation.result import OptimisationResult
from polyviz.optimisation.setup import check_images, check_positive, get_backend
from polyviz.preprocess import Preprocess
from polyviz.protocol import OutputWeighting

__all__ = ["adversarial"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def adversarial(
    model: Any,
    x: Any,
    target: int | Sequence[int] | None = None,
    *,
    eps: float = 8 / 255,
    steps: int = 1,
    step_size: float | None = None,
    label: int | Sequence[int] | None = None,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], object] | None = None,
    backend: str | None = None,
    preprocess: Preprocess | str | None = None,
    batch_size: int | None = None,
    layout: str | None = None,
) -> OptimisationResult:
    """Adversarial images for ``x`` (in [0, 1], native layout unless ``layout=``) within
    ``||x' - x||_inf <= eps``. ``steps=1``: FGSM (step ``eps``); more: the iterative method with
    ``step_size`` (default ``2.5 eps / steps``). ``target``: None (untargeted: move away from
    ``label``, default the predicted class) or the class(es) to reach. ``labels`` /
    ``original_labels`` of the result are the predictions after / before; ``history`` and
    ``values`` the cross-entropy of the label (untargeted) or target (targeted)."""
    be = get_backend(model, backend, preprocess)
    xs, layout_name = check_images(be, x, layout)
    check_positive("eps", eps)
    check_positive("steps", steps, integer=True)
    if step_size is None:
        step_size = eps if steps == 1 else 2.5 * eps / steps
    check_positive("step_size", step_size)
    n = len(xs)
    logits = predict(be, xs, batch_size)
    k = logits.shape[-1]
    original = logits.argmax(axis=1)

    def per_sample(value: Any, name: str) -> np.ndarray:
        arr = np.asarray(value)
        arr = np.full(n, arr) if arr.ndim == 0 else arr
        if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any() or (arr >= k).any():
            raise TargetError(f"{name}: expected a class index in [0, {k}) or one per image ({n}), got {value!r}")
        return arr.astype(np.int64)

    targeted = target is not None
    if targeted and label is not None:
        raise InputError("label: give either target= (targeted attack) or label= (untargeted), not both")
    y = per_sample(target, "target") if targeted else (original if label is None else per_sample(label, "label"))
    onehot = np.eye(k)[y]
    direction = -1.0 if targeted else 1.0
    size = int(batch_size or n)
    adv = xs.copy()
    history = []
    iterator = range(int(steps))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc="adversarial", unit="step", leave=False)
        iterator = bar
    for step in iterator:
        p = _softmax(logits)
        history.append(-np.log(np.maximum(p[np.arange(n), y], 1e-30)))
        weights = (p - onehot).astype(np.float32)
        grad = np.concatenate([
            be.input_gradient(adv[i : i + size], OutputWeighting(weights[i : i + size])).gradient
            for i in range(0, n, size)
        ])
        adv = adv + np.float32(direction * step_size) * np.sign(grad)
        adv = np.clip(np.clip(adv, xs - eps, xs + eps), 0.0, 1.0).astype(np.float32)
        logits = predict(be, adv, batch_size)
        if bar is not None:
            bar.set_postfix(cross_entropy=f"{float(history[-1].mean()):.4g}")
        if callback is not None and callback(step, adv.copy()) is False:
            break
    if bar is not None:
        bar.close()
    p = _softmax(logits)
    final = -np.log(np.maximum(p[np.arange(n), y], 1e-30))
    return OptimisationResult(
        images=adv, history=history, values=final,
        method="adversarial", backend=be.name, layout=layout_name,
        options={"eps": eps, "steps": steps, "step_size": step_size, "targeted": targeted, "y": y.tolist()},
        labels=logits.argmax(axis=1), original_labels=original,
    )
