"""Backward-rule maths written once for every backend.

Framework-neutral arithmetic over a small table of tensor operations a backend supplies
(:mod:`polyviz.rules.ops`); no module here imports a framework. LRP: :mod:`polyviz.rules.lrp`.
"""

from polyviz.rules import lrp, ops

__all__ = ["lrp", "ops"]
