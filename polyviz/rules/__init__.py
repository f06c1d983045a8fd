"""Backward-rule maths written once for every backend (LRP, DeepLIFT, guided backprop).

Each module here is framework-neutral arithmetic over a small table of tensor operations that a
backend supplies (LRP: :mod:`polyviz.rules.ops`; DeepLIFT: ``polyviz.rules.deeplift.DeepLiftOps``;
guided backprop: ``polyviz.rules.guided``); ``NumpyOps`` implementations serve the conformance
suite's oracle. No module in this package imports a framework.
"""

from polyviz.rules import deeplift, guided, lrp, ops

__all__ = ["deeplift", "guided", "lrp", "ops"]
