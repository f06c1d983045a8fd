"""Backend discovery through the ``polyviz.backends`` entry-point group, and model -> backend detection.

Backends are plugins: first-party ones (``polyviz_torch``, ``polyviz_keras``) register exactly as a
third-party ``polyviz_jax`` would. Discovery is cached (:func:`refresh` rescans); a plugin that
fails to load gives a warning, not a crash. Detection asks each backend whether it ``claims`` the
model, which looks at ``sys.modules`` and types and never imports a framework that is not loaded.
Keras is asked before torch, because a Keras 3 model on the torch backend is also an ``nn.Module``.
"""

from __future__ import annotations

import warnings
import weakref
from importlib.metadata import entry_points
from typing import Any

from polyviz.errors import BackendNotFoundError, PolyvizError
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend

__all__ = ["available_backends", "backend_class", "backend_for", "detect", "refresh", "register", "PRIORITY"]

GROUP = "polyviz.backends"
#: Detection order: lower first. Unlisted backends come after these, by name.
PRIORITY = {"keras": 0, "torch": 10}
#: Extras to suggest when nothing claims a model.
EXTRAS = {"torch": "polyviz[torch]", "keras": "polyviz[keras]"}

_classes: dict[str, type[Backend]] | None = None
_manual: dict[str, type[Backend]] = {}
_instances: weakref.WeakKeyDictionary[Any, dict[Any, Backend]] = weakref.WeakKeyDictionary()


def _load() -> dict[str, type[Backend]]:
    found: dict[str, type[Backend]] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            warnings.warn(
                f"polyviz: two backends are registered as {ep.name!r}; keeping the first "
                f"({found[ep.name].__module__}), ignoring {ep.value}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break polyviz
            warnings.warn(
                f"polyviz: backend plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            warnings.warn(
                f"polyviz: backend plugin {ep.name!r} ({ep.value}) is not a polyviz.protocol.Backend "
                "subclass and is skipped",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        found[ep.name] = cls
    return found


def _registry() -> dict[str, type[Backend]]:
    global _classes
    if _classes is None:
        _classes = _load()
    merged = dict(_classes)
    merged.update(_manual)
    return dict(sorted(merged.items(), key=lambda kv: (PRIORITY.get(kv[0], 100), kv[0])))


def refresh() -> dict[str, type[Backend]]:
    """Rescan the entry points (after installing a plugin) and return the backends found."""
    global _classes
    _classes = None
    _instances.clear()
    return _registry()


def register(name: str, cls: type[Backend]) -> None:
    """Register a backend class by hand (tests, notebooks); entry points are the normal way."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise PolyvizError(f"cls: expected a polyviz.protocol.Backend subclass, got {cls!r}")
    _manual[name] = cls


def available_backends() -> dict[str, type[Backend]]:
    """Installed backends by name, in detection order."""
    return _registry()


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (clear error listing the installed ones)."""
    classes = _registry()
    if name not in classes:
        installed = ", ".join(classes) or "none"
        extra = EXTRAS.get(name, f"the plugin that provides {name!r}")
        raise BackendNotFoundError(
            f"backend: {name!r} is not installed (installed backends: {installed}). "
            f"Install it with: pip install '{extra}'"
        )
    return classes[name]


def detect(model: Any) -> type[Backend]:
    """The backend class that claims ``model`` (``__polyviz_backend__`` on the model wins)."""
    named = getattr(model, "__polyviz_backend__", None)
    if isinstance(named, str):
        return backend_class(named)
    classes = _registry()
    for cls in classes.values():
        try:
            if cls.claims(model):
                return cls
        except Exception as exc:  # a plugin's claims() must not break detection
            warnings.warn(f"polyviz: backend {cls.name!r} failed in claims(): {exc}", RuntimeWarning, stacklevel=2)
    installed = ", ".join(classes) or "none"
    hints = ", ".join(f"pip install '{extra}'" for name, extra in EXTRAS.items() if name not in classes)
    raise BackendNotFoundError(
        f"model: no installed polyviz backend claims a {type(model).__module__}.{type(model).__qualname__} "
        f"(installed backends: {installed}). polyviz drives torch.nn.Module and Keras 3 models"
        + (f"; to add a framework: {hints}" if hints else "")
        + ", or pass backend='torch'|'keras' to force one."
    )


def backend_for(
    model: Any,
    backend: str | None = None,
    *,
    preprocess: Preprocess | str | None = None,
    **options: Any,
) -> Backend:
    """A backend instance driving ``model``, detected or forced by name.

    Instances are cached weakly per model and options, so compiled functions (Keras) are reused
    across calls and die with the model.
    """
    if isinstance(model, Backend):
        return model
    cls = backend_class(backend) if backend is not None else detect(model)
    if backend is not None and not cls.claims(model):
        raise BackendNotFoundError(
            f"backend: {backend!r} cannot drive a {type(model).__module__}.{type(model).__qualname__}"
        )
    preprocess = Preprocess.named(preprocess)
    key = (cls, preprocess, tuple(sorted(options.items())))
    try:
        per_model = _instances.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no caching
        return cls(model, preprocess=preprocess, **options)
    try:
        hash(key)
    except TypeError:
        return cls(model, preprocess=preprocess, **options)
    instance = per_model.get(key)
    if instance is None:
        instance = cls(model, preprocess=preprocess, **options)
        per_model[key] = instance
    return instance
