"""Concurrent polyviz calls on one torch model: serialised per model, hooks that act in one thread.

A torch model is shared mutable state: a backend call switches every module to eval mode and
registers forward hooks on it for the duration of the call. Two calls overlapping on one model
from two threads would see each other's hooks and restore each other's training flags. So:

* **One polyviz call per model at a time.** :func:`model_lock` gives each model a re-entrant lock
  (kept in a :class:`weakref.WeakKeyDictionary`, so it dies with the model). It is held for the
  whole of every call that touches the model: the probe forward, :func:`polyviz_torch._impl.guarded`
  (from its snapshot of the training flags to their restoration, hooks removed) and the deep copy
  made by ``with_weights``. Calls on *different* models run in parallel.
* **polyviz hooks act only in the thread that installed them.** :func:`add_hook` wraps every hook
  polyviz registers: in any other thread it returns None, leaving the module's output untouched.
  So a forward the user runs on the same model from another thread while a polyviz call is in
  progress is never captured, steered or aborted by a polyviz hook.
* Grad mode and ``TorchFunctionMode`` stacks (the ReLU, LRP and DeepLIFT rules) are thread-local
  in torch, so they never reach another thread.

What is *not* isolated: the training flags. While a polyviz call runs, the model's modules are in
eval mode, and a forward the user runs concurrently from another thread (outside polyviz) sees eval
mode too (Dropout off, BatchNorm using its running statistics and not updating them). Hold
:func:`model_lock` around such a forward (``with polyviz_torch.model_lock(model): ...``) to exclude
polyviz calls for its duration. ``nn.DataParallel`` over several GPUs runs replicas in worker
threads, where polyviz hooks do not act: explain ``model.module`` instead.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["model_lock", "add_hook"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
#: For models that cannot be weakly referenced (none of torch's, but a backend may be handed anything).
_FALLBACK = threading.RLock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock that serialises polyviz calls on ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
        except TypeError:  # not weakly referenceable or not hashable
            return _FALLBACK
        return lock


def add_hook(handles: list[Any], module: Any, hook: Callable[..., Any], *, pre: bool = False) -> None:
    """Register ``hook`` on ``module`` (a forward hook, or a forward pre-hook with ``pre``) so that
    it acts only when the module runs in the calling thread; append its handle to ``handles``."""
    owner = threading.get_ident()

    @functools.wraps(hook)
    def in_owner_thread(*args: Any) -> Any:
        if threading.get_ident() != owner:
            return None  # another thread's forward: leave the module's input/output as it is
        return hook(*args)

    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    handles.append(register(in_owner_thread))
