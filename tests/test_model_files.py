"""Model files from untrusted sources (issue 12, item 1): nothing in a file runs unless the caller
opts in with ``trust_pickle=True`` / ``--trust-pickle``, and every safe format loads the model
exactly (a forward of the loaded model equals the original's).

Each payload here, when unpickled, creates a marker file (``open(marker, "w")``); the tests assert
that the marker never appears."""

import ast
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import polyviz
from backends import INSTALLED, both_frameworks
from polyviz.cli import main
from polyviz.errors import ModelError, UntrustedFileError
from polyviz.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
needs_torch = pytest.mark.skipif("torch" not in INSTALLED, reason="torch is not installed")
needs_keras = pytest.mark.skipif("keras" not in INSTALLED, reason="keras is not installed")


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line(exc_or_text):
    text = str(exc_or_text)
    assert "\n" not in text, text
    return text


def tiny_torch(seed=0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


def forward(model, x):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


X = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload in a model file ran"


@pytest.fixture
def image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rgb = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    return folder


def payload_files(tmp_path, marker):
    """{kind: path}: a pickle that is only a payload, a payload beside a real state dict (the file
    polyviz used to unpickle and then refuse as "a state dict"), and a plain ``pickle.dump``."""
    import torch

    files = {"payload": tmp_path / "payload.pt", "payload+state_dict": tmp_path / "checkpoint.pth",
             "plain pickle": tmp_path / "model.pkl"}
    torch.save(Payload(marker), files["payload"])
    torch.save({"state_dict": tiny_torch().state_dict(), "extra": Payload(marker)}, files["payload+state_dict"])
    with open(files["plain pickle"], "wb") as f:
        pickle.dump(Payload(marker), f)
    return files


# ---- the payload never runs ------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("kind", ["payload", "payload+state_dict", "plain pickle"])
def test_payload_does_not_run_through_load_model(kind, tmp_path, marker):
    from polyviz_torch import TorchBackend

    path = payload_files(tmp_path, marker)[kind]
    for load in (lambda: load_model(str(path)), lambda: TorchBackend.load_model(str(path))):
        with pytest.raises(UntrustedFileError) as info:
            load()
        text = one_line(info.value)
        assert text.startswith("model: ") and "full pickle" in text and "arbitrary code" in text
        assert ".safetensors" in text and "--arch" in text and "TorchScript" in text and "--trust-pickle" in text
        assert not marker.exists()


@needs_torch
def test_payload_does_not_run_as_weights(tmp_path, marker):
    """The same files given as weights: for a torchvision name, with arch=, and for VGG16."""
    from polyviz_torch import TorchBackend
    from polyviz_torch._zoo import vgg

    files = payload_files(tmp_path, marker)
    for path in map(str, files.values()):
        for load, args, kwargs in ((load_model, ("resnet18",), {"weights": path}), (load_model, (path,), {"arch": "resnet18"}),
                                   (TorchBackend.load_model, ("resnet18", path), {})):
            with pytest.raises(UntrustedFileError, match="^weights: .*full pickle.*arbitrary code"):
                load(*args, **kwargs)
    with pytest.raises(UntrustedFileError, match="^weights: .*full pickle"):
        vgg("vgg16", str(files["payload+state_dict"]))


def _argv(command, path, image, out):
    if command == "explain":
        return ["explain", str(image), "--model", str(path), "--out", str(out), "--no-progress"]
    if command == "gallery":
        return ["gallery", str(image), "--model", str(path), "--out", str(out), "--no-progress"]
    if command == "crosscheck":
        return ["crosscheck", "--model", str(path), "--no-progress"]
    return ["summary", str(path)]


@needs_torch
@pytest.mark.parametrize("command", ["explain", "summary", "gallery",
                                     pytest.param("crosscheck", marks=both_frameworks)])
@pytest.mark.parametrize("kind", ["payload", "payload+state_dict"])
def test_payload_does_not_run_through_the_commands(command, kind, tmp_path, marker, image, capsys):
    path = payload_files(tmp_path, marker)[kind]
    assert main(_argv(command, path, image, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"polyviz: error: model: {str(path)!r} is a full pickle")
    assert "arbitrary code" in err[0] and "--trust-pickle" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


@needs_torch
def test_weights_payload_does_not_run_through_the_commands(tmp_path, marker, image, capsys):
    path = payload_files(tmp_path, marker)["payload+state_dict"]
    for argv in (["summary", "resnet18", "--weights", str(path)],
                 ["explain", str(image), "--model", str(path), "--arch", "resnet18", "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("polyviz: error: weights: ") and "full pickle" in err[0]


# ---- the opt-in ----------------------------------------------------------------------------------
@needs_torch
def test_trusted_pickle_loads_with_the_opt_in(tmp_path, image, capsys):
    """A legitimate torch.save(model) is refused by default and loads with trust_pickle / --trust-pickle."""
    import torch

    net = tiny_torch()
    path = tmp_path / "net.pt"
    torch.save(net, path)
    with pytest.raises(UntrustedFileError, match="torch.nn.modules.container.Sequential"):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True).model
    np.testing.assert_array_equal(forward(loaded, X), forward(net, X))
    from polyviz_torch import TorchBackend

    np.testing.assert_array_equal(forward(TorchBackend.load_model(str(path), trust_pickle=True), X), forward(net, X))
    argv = ["explain", str(image / "a.png"), "--model", str(path), "--method", "saliency", "--size", "16",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    assert main([*argv, "--trust-pickle"]) == 0
    capsys.readouterr()
    assert (tmp_path / "out" / "a_saliency.png").is_file()
    assert main(["summary", str(path), "--trust-pickle", "--size", "16"]) == 0


# ---- safe formats ----------------------------------------------------------------------------------
@needs_torch
def test_state_dict_and_safetensors_with_arch(tmp_path, image, capsys):
    """Weights plus a torchvision architecture name: a state dict (weights_only=True) and
    safetensors, through arch=, --arch and the model-name + weights form."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    net = torchvision.models.get_model("resnet18", weights=None).eval()
    with torch.no_grad():  # weights unlike torchvision's init, so that a load that did nothing shows
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    pth, st = tmp_path / "r18.pth", tmp_path / "r18.safetensors"
    torch.save(net.state_dict(), pth)
    save_file(net.state_dict(), str(st))
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    expected = forward(net, x)
    for lm in (load_model(str(pth), arch="resnet18"), load_model(str(st), arch="resnet18"),
               load_model("resnet18", weights=str(st)), load_model("resnet18", weights=str(pth))):
        assert lm.backend == "torch"
        np.testing.assert_array_equal(forward(lm.model, x), expected)
    for path in (pth, st):  # without an architecture: a clear error
        with pytest.raises(ModelError, match="holds a state dict.*--arch"):
            load_model(str(path))
    assert main(["explain", str(image / "a.png"), "--model", str(st), "--arch", "resnet18", "--size", "32",
                 "--method", "saliency", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / "a_saliency.png").is_file()
    capsys.readouterr()
    assert main(["explain", str(image / "a.png"), "--model", str(st), "--arch", "resnet81", "--no-progress"]) == 2
    assert "arch: no torchvision model 'resnet81'" in capsys.readouterr().err


@needs_torch
@pytest.mark.parametrize("name", ["net.ts", "net.pt"])
def test_torchscript_loads(name, tmp_path):
    """TorchScript, named .ts or .pt (recognised by its contents): equal forward and input gradients."""
    import torch

    net = tiny_torch()
    path = tmp_path / name
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = load_model(str(path)).model
    assert isinstance(loaded, torch.jit.ScriptModule)
    np.testing.assert_array_equal(forward(loaded, X), forward(net, X))
    got = polyviz.saliency(loaded, X, target=1, progress=False).attribution
    np.testing.assert_allclose(got, polyviz.saliency(net, X, target=1, progress=False).attribution, rtol=1e-5, atol=1e-7)


def _export(tmp_path):
    import torch

    net = tiny_torch()
    program = torch.export.export(net, (torch.from_numpy(X),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    return net, path


def _plant_pickled_weight(path, marker):
    """Rewrite a .pt2 so that its first weight is a pickled payload (``use_pickle``), as a hostile file would."""
    import torch

    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    config_name = next(n for n in entries if n.endswith("weights/model_weights_config.json"))
    config = json.loads(entries[config_name])
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    entries[config_name.rsplit("/", 1)[0] + "/" + meta["path_name"]] = buffer.getvalue()
    entries[config_name] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)


@needs_torch
def test_export_program_needs_the_opt_in(tmp_path, marker):
    """torch.export.load unpickles parts of a .pt2: a planted payload runs through it, so polyviz
    refuses .pt2 files without trust_pickle, before torch.export.load sees them."""
    import torch

    _, path = _export(tmp_path)
    _plant_pickled_weight(path, marker)
    renamed = tmp_path / "net.pt"  # the same archive under a pickle's suffix: recognised by its contents
    renamed.write_bytes(path.read_bytes())
    for candidate in (path, renamed):
        with pytest.raises(UntrustedFileError) as info:
            load_model(str(candidate))
        assert "torch.export archive" in one_line(info.value) and "arbitrary code" in str(info.value)
        assert not marker.exists()
    # why: torch.export.load itself runs the payload (if torch ever stops doing so, revisit the refusal)
    try:
        torch.export.load(str(path))
    except Exception:  # noqa: S110 - the payload's return value is no tensor: torch fails after running it
        pass
    assert marker.exists(), "torch.export.load no longer unpickles planted weights: .pt2 may not need the opt-in"
    marker.unlink()


@needs_torch
def test_export_program_loads_with_the_opt_in(tmp_path):
    """With trust_pickle a .pt2 loads through torch.export.unflatten: the module tree is kept, so
    layer hooks (Grad-CAM) work; values equal the original model's."""
    net, path = _export(tmp_path)
    loaded = load_model(str(path), trust_pickle=True).model
    np.testing.assert_array_equal(forward(loaded, X), forward(net, X))
    for method, options in (("saliency", {}), ("gradcam", {"layer": "2"})):
        got = polyviz.explain(loaded, X, method, target=1, progress=False, **options).attribution
        want = polyviz.explain(net, X, method, target=1, progress=False, **options).attribution
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- Keras: safe_mode always -------------------------------------------------------------------------
@needs_keras
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_never_runs(suffix, tmp_path, marker, image, capsys):
    """A Lambda layer's bytecode is refused in .keras and legacy .h5 files, even after
    keras.config.enable_unsafe_deserialization() (polyviz passes safe_mode=True itself)."""
    import keras
    from keras.src.backend.common import global_state  # test-only: to restore Keras' global after the test

    inputs = keras.Input((16, 16, 3))
    body = keras.layers.Conv2D(2, 3)(inputs)
    body = keras.layers.Lambda(eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]"))(body)  # noqa: S307
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(body))
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    marker.unlink(missing_ok=True)  # saving traced the lambda; only loading is under test
    before = global_state.get_global_attribute("safe_mode_saving")
    try:
        for unsafe_globally in (False, True):
            if unsafe_globally:
                keras.config.enable_unsafe_deserialization()
            with pytest.raises(UntrustedFileError, match="Lambda.*arbitrary code.*safe_mode=True"):
                load_model(str(path))
            assert not marker.exists()
            assert main(["explain", str(image), "--model", str(path), "--out", str(tmp_path / "o"),
                         "--no-progress"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("polyviz: error: model: ") and "Lambda" in err[0]
            assert not marker.exists()
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


@needs_keras
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_files_load(suffix, tmp_path):
    """A Keras model without code loads from .keras and .h5 with equal outputs."""
    import keras

    inputs = keras.Input((16, 16, 3))
    body = keras.layers.Conv2D(2, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(body)))
    path = tmp_path / f"net{suffix}"
    model.save(path)
    x = np.transpose(X, (0, 2, 3, 1))
    lm = load_model(str(path))
    assert lm.backend == "keras" and lm.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(lm.model(x)), np.asarray(model(x)))


# ---- every place a file is deserialised ---------------------------------------------------------------
def _calls(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            dotted = []
            while isinstance(func, ast.Attribute):
                dotted.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                dotted.append(func.id)
            if ".".join(reversed(dotted)).endswith(name):
                yield node


def _keyword(call, name):
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def test_every_deserialiser_in_the_package_is_safe_by_default():
    """A static census of polyviz and its backends: torch.load passes weights_only=True (False only in
    the two trusted branches of polyviz_torch/_load.py), np.load passes allow_pickle=False, Keras
    model loads pass safe_mode=True, and nothing calls pickle.load(s) or torch.export.load elsewhere."""
    sources = sorted((ROOT / "polyviz").rglob("*.py")) + sorted((ROOT / "backends").rglob("*.py"))
    unsafe_torch_load = []
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        rel = source.relative_to(ROOT).as_posix()
        for call in _calls(tree, "torch.load"):
            value = _keyword(call, "weights_only")
            assert isinstance(value, ast.Constant), f"{rel}:{call.lineno}: torch.load without a literal weights_only"
            if value.value is not True:
                unsafe_torch_load.append(rel)
        for call in _calls(tree, "np.load"):
            value = _keyword(call, "allow_pickle")
            assert isinstance(value, ast.Constant) and value.value is False, f"{rel}:{call.lineno}: np.load"
        for name in ("saving.load_model", "models.load_model"):
            for call in _calls(tree, name):
                value = _keyword(call, "safe_mode")
                assert isinstance(value, ast.Constant) and value.value is True, f"{rel}:{call.lineno}: {name}"
        for name in ("pickle.load", "pickle.loads", "export.load", "jit.load"):
            for call in _calls(tree, name):
                assert rel == "backends/polyviz_torch/_load.py", f"{rel}:{call.lineno}: {name}"
    # one trusted branch: _full_pickle, called only after trust_pickle
    assert unsafe_torch_load == ["backends/polyviz_torch/_load.py"], unsafe_torch_load
