"""The conformance suite run on a framework-free reference backend: proves the suite's checks pass
on a correct implementation (the framework backends run the same suite in tests/test_backends.py)."""

import pytest
from numpy_backend import NumpyBackend

from polyviz.testing import CHECKS, Conformance

SKIP = {"check_native_callable", "check_safety_when_objective_raises"}  # numpy has no autograd


@pytest.mark.parametrize("check", [c for c in CHECKS if c.__name__ not in SKIP], ids=lambda c: c.__name__)
def test_reference_backend_conforms(check):
    check(Conformance(NumpyBackend))
