"""Every installed backend passes the conformance suite of polyviz.testing (gradients, rules,
layer access, masked inputs, preprocessing, bad inputs, and safety of the user's model)."""

import pytest

from backends import ALL
from polyviz.registry import backend_class
from polyviz.testing import CHECKS, Conformance

_conformance: dict[str, Conformance] = {}


def conformance(name: str) -> Conformance:
    if name not in _conformance:
        _conformance[name] = Conformance(backend_class(name))
    return _conformance[name]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("backend", ALL)
def test_conformance(backend, check):
    check(conformance(backend))
