"""PyTorch backend for polyviz.

Importing this package does not import torch: the torch-using modules (``_impl``, ``_rules``,
``_masks``, ``_probe``, ``_build``, ``_zoo``, ``_state``) are imported inside the backend's methods,
once a torch model is handed to it.
"""

from polyviz_torch._backend import TorchBackend

__all__ = ["TorchBackend"]
