import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's idle OpenMP threads spin by default and starve TensorFlow's on a small machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# torchvision pulls in triton (with CUDA builds of torch), whose LLVM clashes with TensorFlow's when
# loaded after it: load the torch stack first so that both frameworks can live in one process.
try:  # pragma: no cover - depends on what is installed
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:
    pass


import pytest  # noqa: E402


@pytest.fixture(params=["numpy", "torch", "keras"])
def bk(request, monkeypatch):
    """Every backend: the framework-free reference backend and each installed framework."""
    from numpy_backend import NumpyBackend

    from backends import have
    from polyviz import registry

    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    if not have(request.param):
        pytest.skip(f"the {request.param} backend is not available")
    return request.param


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Demo-network weights drawn with numpy, as a file (tests do not depend on the shipped, trained file)."""
    from polyviz.models.demo import demo_spec, save_weights
    from polyviz.models.spec import random_weights

    return str(save_weights(random_weights(demo_spec(), 0), tmp_path_factory.mktemp("w") / "demo.npz"))
