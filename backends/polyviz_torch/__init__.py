"""PyTorch backend for polyviz.

Importing this package does not import torch: the torch-using modules (``_impl``, ``_rules``,
``_masks``, ``_probe``, ``_build``, ``_zoo``, ``_state``) are imported inside the backend's methods,
once a torch model is handed to it. :func:`model_lock` is the per-model lock polyviz calls hold
(see :mod:`polyviz_torch._threads`): hold it around your own forward of a model that polyviz may be
explaining from another thread.
"""

from polyviz_torch._backend import TorchBackend
from polyviz_torch._threads import model_lock

__all__ = ["TorchBackend", "model_lock"]
