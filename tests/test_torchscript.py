"""TorchScript modules run no Python hooks (issue 14, item 6): methods that need them are refused
with that reason instead of blaming the layer, or, for ReLU rules and DeepLIFT, instead of silently
returning saliency / input x gradient. Gradient methods still work (checked against torch autograd)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import polyviz  # noqa: E402
from polyviz.cli import main  # noqa: E402
from polyviz.errors import CapabilityError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _scripted():
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    return module, torch.jit.script(module)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "guided_backprop", "deeplift", "lrp", "layer_activation"])
def test_hooked_methods_say_torchscript_has_no_hooks(method):
    _, scripted = _scripted()
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(CapabilityError, match="^model: a TorchScript module runs no Python hooks"):
        polyviz.explain(scripted, x, method, target=1, progress=False)


def test_saliency_on_torchscript_is_the_input_gradient():
    module, scripted = _scripted()
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    xt = torch.tensor(x, requires_grad=True)
    (grad,) = torch.autograd.grad(module(xt)[0, 1], xt)
    e = polyviz.explain(scripted, x, "saliency", target=1, progress=False)
    np.testing.assert_allclose(e.attribution, grad.numpy(), rtol=1e-5, atol=1e-7)


def test_cli_gradcam_on_a_torchscript_file_names_the_reason(tmp_path, capsys):
    from PIL import Image

    _, scripted = _scripted()
    path = tmp_path / "net.ts"
    scripted.save(str(path))
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    code = main(["explain", str(image), "--model", str(path), "--input-size", "16", "--method", "gradcam",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "TorchScript" in err[0], err
