"""The `polyviz` commands end to end, in-process (demo, explain, gallery, crosscheck, summary,
methods) and every error path: one line on stderr, exit code 2, no traceback."""

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_inspect import closed_form_params

import polyviz
from backends import INSTALLED, both_frameworks, build
from polyviz import compare
from polyviz.cli import main
from polyviz.datasets import shapes
from polyviz.errors import PolyvizError
from polyviz.explanation import Explanation
from polyviz.models.demo import DEMO_WEIGHTS, demo_spec
from polyviz.models.spec import vgg_spec

pytestmark = pytest.mark.skipif(not INSTALLED, reason="no framework installed")
FIRST = INSTALLED[0] if INSTALLED else "torch"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of three 64x64 shapes PNGs, and their arrays."""
    folder = tmp_path_factory.mktemp("images")
    data = shapes(3, seed=11)
    for i, im in enumerate(data.images):
        Image.fromarray((im * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder, data


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def table_rows(out):
    """{method: [cells]} of the Markdown table printed by a command."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ---- the shared machinery: closed forms --------------------------------------------------------
def test_relative_l2_and_pointing_game_closed_form():
    assert compare.relative_l2([3.0, 4.0], [3.0, 4.0]) == 0.0
    assert compare.relative_l2([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert compare.relative_l2([1.0, 0.0], [0.0, 2.0]) == pytest.approx(np.sqrt(5) / 2)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 2] = -5.0  # the magnitude counts: a negative peak inside the mask is a hit
    maps[1, 3, 3] = 1.0
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 1, 2] = True
    e = Explanation(attribution=maps, target=np.zeros(2, np.int64), method="m", backend="b")
    assert compare.pointing_hits(e, masks).tolist() == [True, False]
    # input-shaped attributions: |a| summed over channels, in either layout
    a = np.zeros((1, 4, 4, 3), np.float32)
    a[0, 1, 2] = [0.5, -0.5, 0.5]  # sum of magnitudes 1.5 beats a single 1.0
    a[0, 0, 0, 0] = 1.0
    e = Explanation(attribution=a, target=np.zeros(1, np.int64), method="m", backend="b", layout="NHWC")
    assert compare.pointing_hits(e, masks[:1]).tolist() == [True]
    e = Explanation(attribution=a.transpose(0, 3, 1, 2), target=np.zeros(1, np.int64), method="m", backend="b",
                    layout="NCHW")
    assert compare.pointing_hits(e, masks[:1]).tolist() == [True]


def test_parse_methods():
    assert compare.parse_methods(None) == compare.attribution_methods()
    assert compare.parse_methods("gradcam, saliency,gradcam") == ["gradcam", "saliency"]
    with pytest.raises(PolyvizError, match="Did you mean 'gradcam'"):
        compare.parse_methods("gradcma")


# ---- polyviz methods / summary ----------------------------------------------------------------
def test_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in polyviz.methods():
        assert re.search(rf"^{name}\s", out, re.M), name


@pytest.mark.parametrize("backend", INSTALLED)
def test_summary_demo(backend, weights, capsys):
    assert main(["summary", "demo", "--backend", backend, "--weights", weights]) == 0
    out = capsys.readouterr().out
    total = sum(closed_form_params(demo_spec()).values())
    assert f"Total params: {total:,}" in out and f"Trainable params: {total:,}" in out
    assert "(None, 8, 8, 64)" in out  # block5 works at 8x8


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch is not installed")
def test_summary_torchvision_name(capsys):
    """A torchvision model by name: ResNet-18 has 11,689,512 parameters (torchvision's model card)."""
    assert main(["summary", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 11,689,512" in out and "layer4.1.conv2 (Conv2d)" in out and "(None, 7, 7, 512)" in out
    assert "layer4 (Sequential)" not in out  # containers are not rows
    assert main(["summary", "resnet81"]) == 2
    assert "Did you mean" in error_line(capsys)


# ---- polyviz demo -------------------------------------------------------------------------------
@both_frameworks
def test_demo_end_to_end(tmp_path, weights, capsys):
    out_dir = tmp_path / "demo"
    code = main(["demo", "--out", str(out_dir), "--methods", "gradcam,saliency,cam", "--images", "2",
                 "--weights", weights, "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == {"gradcam", "saliency", "cam"}
    for cells in rows.values():
        assert float(cells[0]) < 1e-4 and cells[1] == "2/2"  # torch vs keras: overall, images within 1e-4
        assert re.fullmatch(r"[0-2]/2 \(\d+%\)", cells[2]) and re.fullmatch(r"[0-2]/2 \(\d+%\)", cells[3])
    page = out_dir / "index.html"
    assert page.is_file() and (out_dir / "figure_torch.png").is_file() and (out_dir / "figure_keras.png").is_file()

    class Images(HTMLParser):
        srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(page.read_text())
    # inputs and masks (2 + 2) and 3 methods x 2 images x 2 frameworks
    assert len(parser.srcs) == 4 + 12
    for src in parser.srcs:
        picture = np.asarray(Image.open(out_dir / src))
        assert picture.ndim == 3 and picture.std() > 0  # exists, decodes, not blank
    # the pointing numbers are those of the explanations themselves
    data = shapes(2, seed=7)
    model = polyviz.models.demo("torch", weights)
    e = polyviz.gradcam(model, data.images, layout="NHWC", progress=False)
    hits = compare.pointing_hits(e, data.masks)
    assert rows["gradcam"][2].startswith(f"{int(hits.sum())}/2")


def test_demo_unknown_method(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--methods", "gradcam,smoothgard", "--no-progress"]) == 2
    line = error_line(capsys)
    assert line.startswith("polyviz: error: methods: unknown method 'smoothgard'") and "Did you mean 'smoothgrad'" in line


def test_demo_missing_weights(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--weights", str(tmp_path / "nope.npz"), "--no-progress"]) == 2
    assert "weights: no file" in error_line(capsys)


# ---- polyviz explain ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", INSTALLED)
def test_explain_files_and_folder(backend, tmp_path, weights, images, capsys):
    folder, data = images
    out_dir = tmp_path / "out"
    code = main(["explain", str(folder / "img0.png"), str(folder), "--model", "demo", "--backend", backend,
                 "--weights", weights, "--method", "gradcam,saliency", "--out", str(out_dir), "--batch", "2",
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    # img0 twice (file and folder): the names are made unique
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert len(pngs) == 8 and pngs[0].startswith("000_img0_")
    assert out.count("  1. ") == 4 and out.count("  5. ") == 4
    assert sum(name in out for name in polyviz.models.DEMO_CLASSES) >= 5  # top-5 of the demo classes, by name
    # the written picture is the explanation's own rendering
    model = polyviz.models.demo(backend, weights)
    x = np.asarray(Image.open(folder / "img1.png").convert("RGB"), np.float32)[None] / 255.0
    expected = polyviz.gradcam(model, x, layout="NHWC", progress=False).render(0)
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "002_img1_gradcam.png")), expected)


def test_explain_target(tmp_path, weights, images, capsys):
    folder, _ = images
    args = ["explain", str(folder / "img0.png"), "--model", "demo", "--weights", weights, "--out", str(tmp_path),
            "--no-progress"]
    assert main([*args, "--target", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--target", "6"]) == 2
    assert "--target: the model has 6 classes" in error_line(capsys)
    assert main([*args, "--target", "cat"]) == 2
    assert "--target: expected a class index or 'top1'" in error_line(capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "vgg61"], "model: unknown model 'vgg61'"),
        (["--model", "missing.keras"], "model: no file 'missing.keras'"),
        (["--method", "gradcma"], "Did you mean 'gradcam'"),
        (["--layer", "block5_conv9"], "Did you mean 'block5_conv3'"),
        (["--weights", "nothere.npz"], "weights: no file 'nothere.npz'"),
    ],
)
def test_explain_errors(extra, message, tmp_path, weights, images, capsys, monkeypatch):
    folder, _ = images
    monkeypatch.chdir(tmp_path)
    argv = ["explain", str(folder / "img0.png"), "--model", "demo", "--weights", weights, "--out", str(tmp_path),
            "--no-progress", *extra]
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith("polyviz: error: ") and message in line


@pytest.mark.parametrize("backend", INSTALLED)
def test_explain_layer_by_spec_name(backend, tmp_path, weights, images):
    """The demo's layers answer to their spec names in every framework (features.N in torch)."""
    from polyviz.models.demo import load_weights
    from polyviz.registry import backend_class

    folder, _ = images
    assert main(["explain", str(folder / "img0.png"), "--model", "demo", "--backend", backend, "--weights", weights,
                 "--layer", "block4_conv1", "--out", str(tmp_path), "--no-progress"]) == 0
    model, native = backend_class(backend).build(demo_spec(), load_weights(weights))
    x = np.asarray(Image.open(folder / "img0.png").convert("RGB"), np.float32)[None] / 255.0
    expected = polyviz.gradcam(model, x, layer=native["block4_conv1"], layout="NHWC", progress=False).render(0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "img0_gradcam.png")), expected)


def test_explain_image_errors(tmp_path, weights, capsys):
    base = ["explain", "--model", "demo", "--weights", weights, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, str(tmp_path / "missing.png")]) == 2
    assert "images: no such file or folder" in error_line(capsys)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main([*base, str(bad)]) == 2
    line = error_line(capsys)
    assert "images: cannot read" in line and "bad.png" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, str(empty)]) == 2
    assert "images: no image files" in error_line(capsys)


def test_debug_shows_the_exception(tmp_path, weights):
    with pytest.raises(PolyvizError, match="images: no such file"):
        main(["--debug", "explain", str(tmp_path / "missing.png"), "--model", "demo", "--weights", weights])
    with pytest.raises(PolyvizError, match="images: no such file"):  # after the command name too
        main(["explain", str(tmp_path / "missing.png"), "--debug"])


@pytest.mark.parametrize("backend", INSTALLED)
def test_explain_saved_model(backend, tmp_path, images, capsys):
    """A model saved by the user (torch.save of the module, or keras' model.save) is loaded by suffix,
    and its explanation equals the one of the model in memory."""
    folder, _ = images
    spec = vgg_spec([[4], [8]], input_shape=(64, 64, 3), dense=(), classes=3, head="gap")
    model, _ = build(backend, spec, seed=2)
    if backend == "torch":
        import torch

        path = tmp_path / "net.pt"
        torch.save(model, path)
    else:
        path = tmp_path / "net.keras"
        model.save(path)
    out_dir = tmp_path / "out"
    size = ["--size", "64"] if backend == "torch" else []  # a Keras model knows its input size, torch's does not
    trust = ["--trust-pickle"] if backend == "torch" else []  # a torch.save(model) pickle loads only on request
    assert main(["explain", str(folder / "img0.png"), "--model", str(path), "--method", "saliency",
                 "--out", str(out_dir), "--no-progress", *size, *trust]) == 0
    assert "class (0)" in capsys.readouterr().out  # no class names for a user's model: indices
    x = np.asarray(Image.open(folder / "img0.png").convert("RGB"), np.float32)[None] / 255.0
    expected = polyviz.saliency(model, x, layout="NHWC", progress=False).render(0)
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "img0_saliency.png")), expected)


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch is not installed")
def test_explain_state_dict_is_not_a_model(tmp_path, images, capsys):
    import torch

    folder, _ = images
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert main(["explain", str(folder / "img0.png"), "--model", str(path), "--no-progress"]) == 2
    assert "holds a state dict" in error_line(capsys)


# ---- polyviz gallery / crosscheck ------------------------------------------------------------------
@both_frameworks
def test_gallery_both_frameworks(tmp_path, weights, images, capsys):
    folder, _ = images
    out_dir = tmp_path / "g"
    assert main(["gallery", str(folder), "--model", "demo", "--weights", weights, "--backend", "torch,keras",
                 "--methods", "gradcam,saliency", "--out", str(out_dir), "--no-progress"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == {"gradcam", "saliency"} and float(rows["gradcam"][0]) < 1e-4
    # 8-bit PNGs have flat patches whose equal conv outputs tie in max-pooling; torch and TensorFlow
    # route such a tie's gradient to different inputs, so input gradients agree less closely
    assert float(rows["saliency"][0]) < 5e-2
    html = (out_dir / "index.html").read_text()
    assert html.count("<img") == 3 + 2 * 3 * 2 and "img2.png" in html


@pytest.mark.parametrize("backend", INSTALLED)
def test_gallery_one_framework(backend, tmp_path, weights, images, capsys):
    folder, _ = images
    out_dir = tmp_path / "g"
    assert main(["gallery", str(folder / "img1.png"), "--model", "demo", "--weights", weights, "--backend", backend,
                 "--methods", "eigencam", "--out", str(out_dir), "--no-progress"]) == 0
    assert "| eigencam" in capsys.readouterr().out
    html = (out_dir / "index.html").read_text()
    assert html.count("<img") == 2 and backend not in html.split("<tbody>")[0]  # no sub-columns


@both_frameworks
def test_crosscheck(weights, capsys):
    argv = ["crosscheck", "--model", "demo", "--weights", weights, "--methods", "saliency,gradcam", "--images", "1",
            "--seed", "1", "--no-progress"]
    assert main([*argv, "--tolerance", "1e-4"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert "converted torch -> keras" in out and "every method agrees (<= 0.0001)" in out
    assert set(rows) == {"saliency", "gradcam"} and all(float(c[0]) < 1e-4 for c in rows.values())
    assert all(c[3] == "agrees" for c in rows.values())  # the verdict column
    # a broken conversion gives DISAGREES and exit 1: tests/test_crosscheck_floor.py


@both_frameworks
def test_crosscheck_vgg16_seeded(capsys):
    """VGG16's layer pattern, seeded random weights, converted torch -> Keras at 32 px."""
    assert main(["crosscheck", "--methods", "gradcam", "--images", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "vgg16 with seeded random weights" in out and "features.29 / block5_conv3" in out


@both_frameworks
def test_error_is_exactly_one_line_in_a_fresh_process(tmp_path):
    """In a real process, with both frameworks loading: stderr holds our one line and nothing else
    (TensorFlow's C++ start-up lines are kept off it), exit code 2."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "polyviz.cli", "demo", "--methods", "gradcam,scorcam",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polyviz: error: methods: unknown method 'scorcam'. Did you mean 'scorecam'")


@pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason="demo weights not shipped")
def test_explain_shipped_demo_model_names_the_right_class(tmp_path, images, capsys):
    """With the shipped, trained weights, the top-1 line of each held-out image is its true class."""
    folder, data = images
    assert main(["explain", str(folder), "--method", "gradcam", "--out", str(tmp_path), "--no-progress"]) == 0
    firsts = re.findall(r"^  1\.\s+[\d.]+%\s+(\w+) \((\d)\)$", capsys.readouterr().out, re.M)
    assert [int(i) for _, i in firsts] == data.labels.tolist()
    assert [name for name, _ in firsts] == [data.class_names[i] for i in data.labels]
