"""The backends installed in this environment, for parametrised tests (skipped, not failed, when a
framework is missing)."""

import contextlib
import importlib.util

import numpy as np
import pytest

import polyviz.models
from polyviz.models.spec import random_weights
from polyviz.registry import backend_class

FRAMEWORKS = {"torch": "torch", "keras": "tensorflow"}
INSTALLED = [name for name, module in FRAMEWORKS.items() if importlib.util.find_spec(module) is not None]
ALL = [pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=f"{name} is not installed")) for name in FRAMEWORKS]
both_frameworks = pytest.mark.skipif(len(INSTALLED) < 2, reason="needs torch and keras")


def have(name):
    """True if the backend ``name`` is registered and loads."""
    try:
        backend_class(name)
    except Exception:
        return False
    return True


def build(backend, spec, seed=0):
    """(model, {spec layer: native layer}) of ``spec`` with seeded numpy weights in ``backend``."""
    return backend_class(backend).build(spec, random_weights(spec, seed))


def rel(a, b):
    """Relative L2 error of ``a`` against ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@contextlib.contextmanager
def keras_float64():
    """Keras layers built inside are float64. Both settings are needed: ``floatx`` for inputs and
    weights, and the global dtype policy, which Keras caches from ``floatx`` the first time any
    layer is made (so ``set_floatx`` alone is ignored once a model exists). Restored on exit."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)


def float64_conformance(backend_cls, build64, monkeypatch, rtol=1e-6):
    """Run the conformance suite on ``build64(spec, weights)`` (the tiny network built in float64)
    with every reference comparison tightened from float32 round-off to ``rtol``: the float64
    reference of polyviz.reference agrees with a float64 model to ~1e-10 before the protocol's
    final float32 rounding (~6e-8). Also checks that results come back as float32 numpy."""
    from functools import cached_property

    import numpy as np

    import polyviz.testing as pt
    from polyviz.protocol import ClassScore

    class Float64(pt.Conformance):
        @cached_property
        def built(self):
            return build64(self.spec, self.weights)

    float32_close = pt.assert_close
    monkeypatch.setattr(pt, "assert_close", lambda a, e, what, rtol_=None: float32_close(a, e, what, rtol=rtol))
    c = Float64(backend_cls)
    values, grad = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()))
    assert values.dtype == grad.dtype == c.backend.forward(c.x).dtype == np.float32
    acts = c.backend.layer_activations(c.x, [c.name("relu2")], include_output=True)
    assert all(a.dtype == np.float32 for a in acts.values())
    res = c.backend.layer_gradients(c.x, [c.name("relu2")], ClassScore(0))
    assert res.values.dtype == res.activations[c.name("relu2")].dtype == res.gradients[c.name("relu2")].dtype == np.float32
    for check in pt.CHECKS:
        check(c)


def seeded_vgg16_float64():
    """Seeded VGG16 in float64 in both frameworks, same weights: torch via ``.double()``, Keras
    built from the spec in float64 (see backends.keras_float64)."""
    tmodel = polyviz.models.vgg16(backend="torch", seed=0).eval().double()
    spec = polyviz.models.seeded_vgg_spec("vgg16", "keras")
    with keras_float64():
        kmodel, _ = backend_class("keras").build(spec, random_weights(spec, 0))
    assert kmodel.compute_dtype == "float64" and kmodel.get_layer("block1_conv1").kernel.dtype == "float64"
    return tmodel, kmodel


def captum_pool_safe(model):
    """A copy of a torch ``model`` with ``x * 1`` in front of every MaxPool2d: the same function,
    but Captum 0.9's DeepLift hooks then see the pool's gradient (a ReLU feeding a MaxPool2d
    directly is mis-attributed, pytorch/captum#1104; see tests/test_deeplift.py)."""
    import copy

    from torch import nn

    class TimesOne(nn.Module):
        def forward(self, x):
            return x * 1.0

    clone = copy.deepcopy(model)
    for module in list(clone.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.Sequential(TimesOne(), child))
    assert any(isinstance(m, TimesOne) for m in clone.modules())
    return clone.eval()
