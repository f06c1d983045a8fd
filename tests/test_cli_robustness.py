"""Issue 12, items 4-7: images that used to load wrong (16-bit, transparency, decompression bombs),
one-line CLI errors for bad ``--out``/``--json``, batch runs that keep their good items (streaming,
unreadable files, gallery failures) and atomic writes that never follow a planted symlink.

Every test here fails on 447b512 and passes after the fix. The CLI runs use the demo model (64 px)
with numpy-drawn weights, in one framework."""

import os
import stat
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

import polyviz.loading
from backends import INSTALLED
from polyviz.cli import main
from polyviz.datasets import shapes

pytestmark = pytest.mark.skipif(not INSTALLED, reason="no framework installed")
FIRST = INSTALLED[0] if INSTALLED else "torch"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three 64x64 shapes PNGs."""
    out = tmp_path_factory.mktemp("images")
    for i, im in enumerate(shapes(3, seed=11).images):
        Image.fromarray((im * 255).round().astype(np.uint8)).save(out / f"img{i}.png")
    return out


def png_header(width, height):
    """A PNG with only a header (IHDR, RGB 8-bit) and IEND: it declares width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails the test: the error must come before model work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the argument error")

    monkeypatch.setattr(polyviz.loading, "load_model", refuse)


def explain_args(weights, out, *images, extra=()):
    return ["explain", *map(str, images), "--model", "demo", "--backend", FIRST, "--weights", weights,
            "--method", "saliency", "--out", str(out), "--no-progress", *extra]


# ---- item 4: images ---------------------------------------------------------------------------------
def test_16bit_png_scales_like_its_8bit_version(tmp_path):
    """A 16-bit grey PNG (PIL mode I;16) used to load 98% white (convert('RGB') clips at 255)."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "flat.png")
    _, x = polyviz.loading.load_images([tmp_path / "deep.png", tmp_path / "flat.png"], 64)
    assert abs(x[0].mean() - 0.5) < 0.01 and (x[0] >= 0.999).mean() < 0.01
    np.testing.assert_allclose(x[0], x[1], atol=1.5 / 255)  # the 8-bit image is the 16-bit one / 257
    assert np.all(x[0][..., 0] == x[0][..., 2])  # grey on every channel
    assert len(np.unique(x[0])) > 256  # float precision kept, not rounded to 8 bits


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_the_stated_background(mode, tmp_path):
    """Transparent pixels used to show the colour hidden under them; now white (default) or the
    background asked for. Opaque pixels keep their colour."""
    path = tmp_path / f"{mode}.png"
    if mode == "RGBA":
        a = np.zeros((64, 64, 4), np.uint8)
        a[..., 0], a[:32, :, 3] = 200, 255  # top half opaque red-ish, bottom half transparent red
        Image.fromarray(a, "RGBA").save(path)
        opaque = [200 / 255, 0, 0]
    elif mode == "LA":
        a = np.zeros((64, 64, 2), np.uint8)
        a[..., 0], a[:32, :, 1] = 100, 255
        Image.fromarray(a, "LA").save(path)
        opaque = [100 / 255] * 3
    else:
        p = np.zeros((64, 64), np.uint8)
        p[32:] = 1  # index 1 is the transparent colour
        im = Image.fromarray(p, "P")
        im.putpalette([30, 60, 90, 10, 20, 30] + [0] * 762)
        im.save(path, transparency=1)
        opaque = [30 / 255, 60 / 255, 90 / 255]
    white = polyviz.loading.read_image(path, 64)
    np.testing.assert_allclose(white[5, 5], opaque, atol=1e-6)
    np.testing.assert_allclose(white[60, 5], [1, 1, 1])
    _, black = polyviz.loading.load_images([path], 64, background="black")
    np.testing.assert_allclose(black[0, 60, 5], [0, 0, 0])
    with pytest.raises(polyviz.errors.InputError, match="background: expected white, black"):
        polyviz.loading.read_image(path, 64, background="mauve")


def test_float_image_outside_0_1_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 300.0, np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(polyviz.loading.ImageReadError, match=r"float image with values in \[300, 300\]"):
        polyviz.loading.read_image(tmp_path / "f.tif", 8)


# ---- item 5: one-line errors ---------------------------------------------------------------------
def test_decompression_bomb_is_one_line_before_model_work(tmp_path, weights, capsys, no_model):
    """A header declaring 30000x30000 px used to raise PIL's DecompressionBombError as a traceback."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    assert main(explain_args(weights, tmp_path / "o", bomb)) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("polyviz: error: images: ") and "bomb.png" in line and "64 megapixels" in line


def test_pixel_limit_is_checked_from_the_header_and_configurable(tmp_path, monkeypatch):
    """9000 x 9000 (81 Mpx): under PIL's own limit, over ours; the environment variable and the API
    argument move it."""
    big = tmp_path / "big.png"
    big.write_bytes(png_header(9000, 9000))  # no pixel data: it must be refused from its header
    with pytest.raises(polyviz.loading.ImageReadError, match=r"9000x9000 = 81000000 pixels, over the limit of 64 megapixels"):
        polyviz.loading.read_image(big, 64)
    monkeypatch.setenv("POLYVIZ_MAX_IMAGE_PIXELS", "100000000")  # allowed now, so it gets decoded: and fails
    with pytest.raises(polyviz.loading.ImageReadError, match="cannot read"):
        polyviz.loading.read_image(big, 64)
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    with pytest.raises(polyviz.loading.ImageReadError, match="10x10 = 100 pixels, over the limit"):
        polyviz.loading.load_images([small], 8, max_pixels=99)
    monkeypatch.setenv("POLYVIZ_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(polyviz.errors.InputError, match="POLYVIZ_MAX_IMAGE_PIXELS: expected a number"):
        polyviz.loading.read_image(small, 8)


def _out_cases(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [(afile, "exists and is not a folder"), (afile / "sub", "cannot create the folder")]


@pytest.mark.parametrize("command", ["explain", "gallery", "demo"])
def test_bad_out_is_one_line_before_model_work(command, tmp_path, weights, folder, capsys, no_model):
    """--out an existing file (FileExistsError/InputError after the work, before) or under a file
    (NotADirectoryError): one line, exit code 2, no model loaded."""
    for out, message in _out_cases(tmp_path):
        if command == "explain":
            argv = explain_args(weights, out, folder / "img0.png")
        elif command == "gallery":
            argv = ["gallery", str(folder / "img0.png"), "--model", "demo", "--weights", weights, "--backend", FIRST,
                    "--methods", "saliency", "--out", str(out), "--no-progress"]
        else:
            argv = ["demo", "--backend", FIRST, "--methods", "saliency", "--images", "1", "--weights", weights,
                    "--out", str(out), "--no-progress"]
        assert main(argv) == 2
        (line,) = error_lines(capsys)
        assert line.startswith("polyviz: error: --out: ") and message in line and str(out) in line


def test_out_not_writable_is_one_line(tmp_path, weights, folder, capsys, no_model, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the write probe fail as a read-only folder would
        import tempfile

        def read_only(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    else:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(explain_args(weights, locked, folder / "img0.png")) == 2
    finally:
        locked.chmod(0o755)
    (line,) = error_lines(capsys)
    assert line.startswith("polyviz: error: --out: cannot write in the folder") and "Permission denied" in line


@pytest.mark.parametrize("command", ["metrics", "bench"])
def test_bad_json_is_one_line_before_any_work(command, tmp_path, capsys, no_model, monkeypatch):
    import polyviz.models

    monkeypatch.setattr(polyviz.models, "demo", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
    extra = ["--quick", "--model", "demo"] if command == "bench" else []
    for target, message in [(tmp_path, "is a folder"), (tmp_path / "afile" / "x.json", "afile' is not a folder"),
                            (tmp_path / "afile" / "sub" / "x.json", "cannot create the folder")]:
        (tmp_path / "afile").write_text("x")
        assert main([command, "--backend", FIRST, "--methods", "saliency", "--no-progress", *extra,
                     "--json", str(target)]) == 2
        (line,) = error_lines(capsys)
        assert line.startswith("polyviz: error: --json: ") and message in line


# ---- item 6: batch runs that lose work -------------------------------------------------------------
def test_truncated_jpeg_is_skipped_and_the_others_are_written(tmp_path, weights, folder, capsys):
    """One truncated JPEG used to stop the run before anything was written."""
    images = tmp_path / "images"
    images.mkdir()
    for f in folder.iterdir():
        (images / f.name).write_bytes(f.read_bytes())
    truncated_jpeg(images / "img1_broken.jpg")  # sorted between img0 and img1: mid-batch
    (images / "notes.png").write_text("not an image")  # caught from its header, before the model loads
    out = tmp_path / "out"
    assert main(explain_args(weights, out, images, extra=["--batch", "2"])) == 1
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}_saliency.png" for i in range(3)]
    lines = error_lines(capsys)
    skipped = [line for line in lines if line.startswith("polyviz: skipped: ")]
    assert len(skipped) == 2 and any("img1_broken.jpg" in s and "truncated" in s for s in skipped)
    assert any("notes.png" in s for s in skipped)
    assert lines[-1].startswith("polyviz: 2 of 5 images skipped")


def test_strict_stops_at_the_first_unreadable_image(tmp_path, weights, folder, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "b.png").write_bytes((folder / "img0.png").read_bytes())
    truncated_jpeg(images / "a.jpg")
    out = tmp_path / "out"
    assert main(explain_args(weights, out, images, extra=["--strict"])) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("polyviz: error: images: cannot read") and "a.jpg" in line
    assert not list(out.glob("*.png"))


def test_explain_streams_so_memory_does_not_grow_with_the_folder(tmp_path, weights, capsys, monkeypatch):
    """The whole folder used to be decoded into one float32 array before any work. Peak traced
    memory (numpy's allocations included) of `polyviz explain` on 200 and on 2000 images is the
    same within 4 MB; the folder as one array would be 88 MB more at 64 px. The methods themselves
    are stubbed (their memory is per batch and measured elsewhere), so the test takes seconds."""
    import polyviz.api

    saved = []

    class Stub:
        def save(self, path, index=0, **style):
            saved.append(path)

    monkeypatch.setattr(polyviz.api, "explain", lambda *a, **k: Stub())

    def make(n):
        d = tmp_path / f"n{n}"
        d.mkdir()
        base = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
        for i in range(n):
            Image.fromarray(np.roll(base, i, 0)).save(d / f"{i:04d}.png", compress_level=0)
        return d

    folders = {n: make(n) for n in (200, 2000)}
    main(explain_args(weights, tmp_path / "o", folders[200], extra=["--batch", "16"]))  # warm-up: imports, caches
    peaks = {}
    for n, d in folders.items():
        saved.clear()
        capsys.readouterr()
        tracemalloc.start()
        try:
            assert main(explain_args(weights, tmp_path / "o", d, extra=["--batch", "16"])) == 0
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        capsys.readouterr()
        assert len(saved) == n
    growth = peaks[2000] - peaks[200]
    print(f"peak traced memory: 200 images {peaks[200] / 2**20:.1f} MiB, 2000 images {peaks[2000] / 2**20:.1f} MiB")
    assert growth < 4 * 2**20, f"peak grew by {growth / 2**20:.1f} MiB from 200 to 2000 images"


def test_iter_image_batches_holds_one_batch(tmp_path):
    """The reader alone, at 128 px: 2000 images as one array would be 375 MiB."""
    base = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    files = []
    for i in range(2000):
        files.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(np.roll(base, i, 1)).save(files[-1], compress_level=0)
    tracemalloc.start()
    try:
        n = sum(len(b.files) for b in polyviz.loading.iter_image_batches(files, 128, 8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 2000 and peak < 8 * 128 * 128 * 3 * 4 * 4  # a few batches' worth, not 2000 images


def test_gallery_validates_target_and_layer_before_any_method(tmp_path, weights, folder, capsys, monkeypatch):
    """--target 9 on the 6-class demo model used to run every method and write no page."""
    import polyviz.compare

    monkeypatch.setattr(polyviz.compare, "run_methods", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    base = ["gallery", str(folder), "--model", "demo", "--weights", weights, "--backend", FIRST, "--out",
            str(tmp_path / "g"), "--no-progress", "--methods", "saliency,gradcam"]
    assert main([*base, "--target", "9"]) == 2
    (line,) = error_lines(capsys)
    assert line == "polyviz: error: --target: the model has 6 classes (0..5), got 9"
    assert main([*base, "--layer", "block9_conv9"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("polyviz: error: --layer: no layer 'block9_conv9'")


def test_gallery_page_is_written_when_a_method_fails(tmp_path, weights, folder, capsys, monkeypatch):
    """A method raising a non-polyviz exception used to crash the command with no page."""
    import polyviz.compare

    real = polyviz.compare.explain

    def flaky(model, x, method, **kwargs):
        if method == "saliency":
            raise RuntimeError("boom\nsecond line")
        return real(model, x, method, **kwargs)

    monkeypatch.setattr(polyviz.compare, "explain", flaky)
    out = tmp_path / "g"
    assert main(["gallery", str(folder), "--model", "demo", "--weights", weights, "--backend", FIRST,
                 "--methods", "saliency,gradcam", "--out", str(out), "--no-progress"]) == 1
    page = (out / "index.html").read_text()
    assert "failed: RuntimeError: boom" in page and "second line" not in page
    assert page.count("<img") == 3 + 3  # the inputs and gradcam
    captured = capsys.readouterr()
    assert "failed: saliency" in captured.out and "method runs failed" in captured.err


# ---- item 7: writes -----------------------------------------------------------------------------
def test_writes_replace_planted_symlinks_and_never_follow_them(tmp_path, weights, folder):
    """A planted `index.html -> victim` used to be overwritten through the link."""
    out = tmp_path / "g"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "index.html").symlink_to(victim)
    (out / "00_input__00_img0-png.png").symlink_to(victim)
    assert main(["gallery", str(folder), "--model", "demo", "--weights", weights, "--backend", FIRST,
                 "--methods", "gradcam", "--out", str(out), "--no-progress"]) == 0
    ex = tmp_path / "e"
    ex.mkdir()
    (ex / "img0_saliency.png").symlink_to(victim)
    assert main(explain_args(weights, ex, folder / "img0.png")) == 0
    assert victim.read_text() == "precious"
    for made in (out / "index.html", out / "00_input__00_img0-png.png", ex / "img0_saliency.png"):
        assert not made.is_symlink() and made.is_file()
    assert "<html" in (out / "index.html").read_text()
    assert not [p for p in [*out.iterdir(), *ex.iterdir()] if p.name.startswith(".")]  # no temporary files left


def test_out_folder_that_is_a_symlink_is_followed(tmp_path, weights, folder):
    """Documented choice: --out naming a link to a folder writes into that folder."""
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "results").symlink_to(real, target_is_directory=True)
    assert main(explain_args(weights, tmp_path / "results", folder / "img0.png")) == 0
    assert (real / "img0_saliency.png").is_file()


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    from polyviz.render import save_png
    from polyviz.render._atomic import atomic_write, write_text

    path = tmp_path / "a.json"
    write_text(path, "old")

    def half(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    png = save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
