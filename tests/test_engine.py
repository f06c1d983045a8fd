"""The framework-free engine: import isolation, registry, errors, interpolation, preprocessing."""

import subprocess
import sys
import warnings
import weakref

import numpy as np
import pytest
from numpy_backend import NumpyBackend, NumpyModel

import polyviz
from polyviz import registry
from polyviz.errors import BackendNotFoundError, InputError, did_you_mean
from polyviz.interpolation import resize, resize_matrix
from polyviz.preprocess import Preprocess
from polyviz.protocol import Backend, LayerInfo


def test_import_polyviz_imports_no_framework():
    code = (
        "import sys, polyviz, polyviz.registry, polyviz.testing, polyviz.models, polyviz.cli, polyviz_torch, polyviz_keras\n"
        "polyviz.registry.available_backends()\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_first_party_backends_are_entry_points_keras_first():
    found = registry.refresh()
    assert list(found)[:2] == ["keras", "torch"]
    assert found["torch"].__module__.startswith("polyviz_torch")
    assert found["keras"].__module__.startswith("polyviz_keras")


class _FakeEntryPoint:
    def __init__(self, name, value, loader):
        self.name, self.value, self._loader = name, value, loader

    def load(self):
        return self._loader()


def _boom():
    raise ImportError("simulated broken plugin")


def test_broken_plugin_warns_and_is_skipped(monkeypatch):
    eps = [_FakeEntryPoint("broken", "broken_pkg:Backend", _boom), _FakeEntryPoint("numpy", "numpy_backend:NumpyBackend", lambda: NumpyBackend)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.warns(RuntimeWarning, match="broken"):
        found = registry.refresh()
    assert "broken" not in found and found["numpy"] is NumpyBackend
    monkeypatch.undo()
    registry.refresh()


def test_detection_forcing_and_errors(monkeypatch):
    from polyviz.testing import tiny_spec

    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    model = NumpyModel(tiny_spec(), {})
    assert registry.detect(model) is NumpyBackend
    backend = polyviz.backend_for(model)
    assert polyviz.backend_for(model) is backend  # cached per model
    assert isinstance(polyviz.backend_for(model, "numpy"), NumpyBackend)
    with pytest.raises(BackendNotFoundError, match=r"model: .*installed backends: keras, torch, numpy"):
        polyviz.backend_for(object())
    with pytest.raises(BackendNotFoundError, match=r"backend: 'jax' is not installed.*pip install"):
        polyviz.backend_for(model, backend="jax")
    with pytest.raises(BackendNotFoundError, match="backend: 'torch' cannot drive"):
        polyviz.backend_for(model, backend="torch")


def test_model_can_name_its_backend(monkeypatch):
    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)

    class Tagged:
        __polyviz_backend__ = "numpy"

    assert registry.detect(Tagged()) is NumpyBackend


def test_backend_cache_dies_with_the_model(monkeypatch):
    import gc

    from polyviz.testing import tiny_spec

    monkeypatch.setitem(registry._manual, "numpy", NumpyBackend)
    model = NumpyModel(tiny_spec(), {})
    polyviz.backend_for(model)
    assert model in registry._instances
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # neither the cache nor the backend keeps the model alive


def test_capability_error_names_the_capability():
    class Minimal(Backend):
        name = "minimal"
        capabilities = frozenset({"forward"})

        @classmethod
        def claims(cls, model):
            return True

        def _forward(self, x):
            return x.reshape(len(x), -1)

        def _layers(self):
            return [LayerInfo("only", "Layer", (2,), 0, False)]

    backend = Minimal(object.__new__(type("M", (), {})))
    with pytest.raises(polyviz.CapabilityError, match="'input_gradient'"):
        backend.input_gradient(np.zeros((1, 2, 2, 3), np.float32), polyviz.ClassScore(0))
    with pytest.raises(polyviz.CapabilityError, match="'build'"):
        Minimal.build(None)


def test_did_you_mean():
    assert "block5_conv3" in did_you_mean("block5_con3", ["block5_conv3", "block4_conv3", "fc1"])
    assert did_you_mean("zzz", ["fc1"]) == ""


def test_resize_matches_torch_and_tensorflow():
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    maps = np.random.default_rng(0).random((3, 7, 5)).astype(np.float32)
    ours = resize(maps, (224, 160))
    t = torch.nn.functional.interpolate(torch.tensor(maps)[:, None], size=(224, 160), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, t[:, 0].numpy(), atol=1e-5)
    k = tf.image.resize(maps[..., None], (224, 160), method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(ours, k, atol=1e-5)
    near = resize(maps, (14, 10), mode="nearest")
    t = torch.nn.functional.interpolate(torch.tensor(maps)[:, None], size=(14, 10), mode="nearest-exact")
    np.testing.assert_array_equal(near, t[:, 0].numpy())


def test_resize_closed_forms():
    assert np.allclose(resize_matrix(4, 4), np.eye(4))
    const = np.full((2, 3, 3), 2.5, np.float32)
    assert np.allclose(resize(const, (17, 9)), 2.5)
    with pytest.raises(InputError, match="upsample"):
        resize_matrix(3, 6, "bicubic")


def test_preprocess_presets_match_the_frameworks():
    torchvision = pytest.importorskip("torchvision")
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    img = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    norm = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = norm(torch.tensor(img).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(Preprocess.torchvision().apply(img), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Preprocess.torchvision(255).apply(img * 255), expected, rtol=1e-5, atol=1e-5)
    caffe = keras.applications.vgg16.preprocess_input(img * 255.0)
    np.testing.assert_allclose(Preprocess.caffe().apply(img * 255), np.asarray(caffe), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(Preprocess.caffe(1.0).apply(img), np.asarray(caffe), rtol=1e-5, atol=1e-3)
    with pytest.raises(InputError, match="preprocess"):
        Preprocess.named("imagenet")


def test_cli_info_lists_backends(capsys):
    from polyviz.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend torch" in out and "backend keras" in out and "input_gradient" in out


def test_warnings_are_not_errors_for_healthy_registry():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.refresh()
