"""Backward-rule maths written once for every backend (LRP, DeepLIFT, guided backprop).

Each module here is framework-neutral arithmetic over a small table of tensor operations that a
backend supplies (see ``polyviz.rules.deeplift.DeepLiftOps``); :class:`NumpyOps` implementations
serve the conformance suite's oracle. No module in this package imports a framework.
"""
