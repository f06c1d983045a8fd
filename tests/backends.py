"""The backends installed in this environment, for parametrised tests (skipped, not failed, when a
framework is missing)."""

import importlib.util

import pytest

FRAMEWORKS = {"torch": "torch", "keras": "tensorflow"}
INSTALLED = [name for name, module in FRAMEWORKS.items() if importlib.util.find_spec(module) is not None]
ALL = [pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=f"{name} is not installed")) for name in FRAMEWORKS]
both_frameworks = pytest.mark.skipif(len(INSTALLED) < 2, reason="needs torch and keras")
