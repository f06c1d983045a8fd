"""The backends installed in this environment, for parametrised tests (skipped, not failed, when a
framework is missing)."""

import contextlib
import importlib.util
import sys

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


# --------------------------------------------------------------------------------------------
# VGG16 at two sizes, and cross-framework agreement that holds on any CPU
# --------------------------------------------------------------------------------------------

# VGG16's layer pattern (13 convs in 5 blocks, 5 max pools, 3 dense layers; the same module
# indices: features.29 is block5_conv3's ReLU), narrow and at 64 px: every code path of the
# 224 px network in a fraction of a second per pass. The full size runs in the slow set.
MINI_VGG16 = [[8, 8], [16, 16], [32, 32, 32], [32, 32, 32], [32, 32, 32]]
SIZES = [pytest.param("mini"), pytest.param("full", marks=pytest.mark.slow)]


def px(size):
    """The input side of the ``size`` network: 224 (full) or 64 (mini)."""
    return 224 if size == "full" else 64


def vgg16_spec(size, backend, plain=False):
    """The spec of seeded VGG16 laid out as ``backend`` ships it (see polyviz.models.seeded_vgg_spec);
    at "mini" the same layout, narrow and at 64 px (torch's adaptive pool is the identity, as at 224).
    ``plain``: the same layers in every framework (no adaptive pool, dropout or softmax head), same
    weights, for methods that see those layers (LRP's pool rule stabilises the adaptive pool)."""
    from polyviz.models.spec import VGG_CONFIGS, vgg_spec

    if plain:
        if size == "full":
            return vgg_spec(VGG_CONFIGS["vgg16"])
        return vgg_spec(MINI_VGG16, input_shape=(64, 64, 3), dense=(64, 64), classes=10)
    if size == "full":
        return polyviz.models.seeded_vgg_spec("vgg16", backend)
    if backend == "torch":
        return vgg_spec(MINI_VGG16, input_shape=(64, 64, 3), dense=(64, 64), classes=10, dropout=0.5, adaptive_pool=(2, 2))
    return vgg_spec(MINI_VGG16, input_shape=(64, 64, 3), dense=(64, 64), classes=10, classifier_activation="softmax")


def seeded_vgg16(size, backend, float64=False, seed=0, plain=False):
    """Seeded VGG16 (``polyviz.models.vgg16(backend, seed=seed)`` at "full") in ``backend``, the same
    numpy weights in every framework and precision. Float64: torch via ``.double()``, Keras built from
    the spec in float64 (see keras_float64). ``plain``: see vgg16_spec."""
    spec = vgg16_spec(size, backend, plain)
    if backend == "torch":
        model, _ = backend_class("torch").build(spec, random_weights(spec, seed))
        model = model.eval()
        return model.double() if float64 else model
    with keras_float64() if float64 else contextlib.nullcontext():
        model, _ = backend_class("keras").build(spec, random_weights(spec, seed))
    assert model.compute_dtype == ("float64" if float64 else "float32")
    return model


def torchvision_vgg16(size):
    """torchvision's VGG16 initialised under ``torch.manual_seed(0)``, in eval mode; at "mini", a
    torch VGG16 with torchvision's module layout (features.N, avgpool, classifier.N), narrow and at
    64 px, with seeded numpy weights."""
    if size == "mini":
        return seeded_vgg16("mini", "torch", seed=5)
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


def converted_vgg16(size, float64=False):
    """(torch model, Converted) for torchvision's VGG16 (initialised under ``torch.manual_seed(0)``)
    and its conversion to Keras; at "mini", a torch VGG16 with torchvision's module layout
    (features.N, avgpool, classifier.N), narrow and at 64 px. Float64: the torch model ``.double()``-ed
    and the Keras conversion built in float64, from the same float32 weights."""
    from polyviz.models import convert

    tmodel = torchvision_vgg16(size)
    shape = (px(size), px(size), 3)
    with keras_float64() if float64 else contextlib.nullcontext():
        converted = convert(tmodel, to="keras", input_shape=shape)
    if float64:
        tmodel = tmodel.double()  # after the conversion, which reads float32 weights
    return tmodel, converted


def release():
    """Drop framework state between large models (Keras' global graph, Python cycles)."""
    import gc

    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    gc.collect()


# Float32 round-off, even where it flips a ReLU or max-pool near-tie, moves a VGG16 attribution by a
# few percent at most (measured up to 6e-2 relative L2 for a gradient taken just below a flipped
# max-pool, 3e-3 typical); a wrong rule, a dropped layer or a mis-ordered axis moves it by O(1).
ROUNDOFF_CAP = 0.15


def assert_agree(a32, b32, a64, b64, what, *, tol64=1e-6, cap=ROUNDOFF_CAP):
    """Torch (a) against Keras (b), each in float32 and float64, without a constant that holds on
    one CPU only.

    - float64: the two frameworks agree to ``tol64``. This is where the methods are compared: at
      float64 round-off (~1e-16) no near-tie flips, and what is left is the protocol's final
      float32 rounding of the returned arrays (measured 0 to 3e-8 on the mini VGG16, the most
      where a method subtracts nearly equal scores); neither depends on the CPU beyond one float32
      ulp. A wrong rule, epsilon or layer fails here (an extra pooling layer's LRP stabiliser
      showed as 3.4e-5).
    - float32: which ReLU/max-pool near-ties flip depends on the CPU's kernels (oneDNN, ATen,
      summation order), so the float32 difference is not asserted against a fixed number. It is
      asserted against the noise floor measured here: each framework's float32 result against its
      own float64 run. By the triangle inequality the cross-framework float32 difference is at most
      the sum of the two floors plus the float64 difference, so the bound ``3 * floor`` holds on
      any CPU once the float64 check passes. The floors themselves must stay round-off
      (``cap``): a float32-only bug (a lost cast, a wrong layout) is O(1)."""
    assert np.abs(np.asarray(a64)).max() > 0, what
    d64 = rel(b64, a64)
    assert d64 <= tol64, f"{what}: float64 torch vs Keras {d64:.2e} > {tol64:.0e}"
    floor_a, floor_b = rel(a32, a64), rel(b32, b64)
    assert floor_a <= cap and floor_b <= cap, f"{what}: float32 vs float64 {floor_a:.2e} (torch), {floor_b:.2e} (Keras)"
    d32 = rel(b32, a32)
    bound = max(1e-6, 3 * max(floor_a, floor_b) + d64)
    assert d32 <= bound, f"{what}: float32 torch vs Keras {d32:.2e} > {bound:.2e} (noise floor)"
