"""The HTML gallery: its files and markup, and the page as a browser shows it (headless Chromium:
every <img> decoded, the screenshot not blank and showing the pictures; a page with a broken
image must fail the same check)."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyviz import render as R
from polyviz.errors import InputError

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)"
)

MAGENTA, CYAN, ORANGE = (255, 0, 255), (0, 255, 255), (255, 128, 0)


def solid(h, w, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


class Page(HTMLParser):
    """The <img> elements, table cells and status element of a gallery page."""

    def __init__(self, text):
        super().__init__()
        self.images, self.cells, self.status, self.headers = [], [], None, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "td":
            self.cells.append(a)
        elif tag == "th":
            self.headers.append(a)
        if a.get("id") == "polyviz-status":
            self.status = a


def sample_gallery(out):
    """Two methods x two images, torch and keras side by side, plus an input row spanning both."""
    rng = np.random.default_rng(0)
    maps = {name: rng.normal(size=(16, 16)) for name in ("a", "b")}
    inputs = {"a": solid(16, 16, ORANGE), "b": rng.uniform(size=(16, 16, 3))}
    rows = [
        ("input", [inputs["a"], inputs["b"]]),
        ("Grad-CAM", [{"torch": solid(16, 16, MAGENTA), "keras": solid(16, 16, MAGENTA)}, [R.heatmap(maps["b"]), R.heatmap(maps["b"])]]),
        ("saliency", [[R.overlay(inputs["a"], maps["a"]), solid(16, 16, CYAN)], {"torch": R.grayscale(maps["b"][..., None])}]),
    ]
    return R.write_gallery(
        out,
        title="polyviz <demo> & gallery",
        columns=["disc 1", "star/2"],
        subcolumns=["torch", "keras"],
        rows=rows,
        table_html="<table><tr><th>method</th><th>agreement</th></tr><tr><td>Grad-CAM</td><td>0.99</td></tr></table>",
        notes="First paragraph.\n\nSecond <paragraph>.",
    ), rows


# ---------------------------------------------------------------- files and markup


def test_gallery_files_are_relative_pngs_with_the_exact_pixels(tmp_path):
    index, rows = sample_gallery(tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    page = Page(index.read_text(encoding="utf-8"))
    # 2 spanning inputs + 4 Grad-CAM + 3 saliency (keras missing for the second image) = 9 images
    assert len(page.images) == 9
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert sorted(img["src"] for img in page.images) == pngs
    for img in page.images:
        assert "/" not in img["src"] and not img["src"].startswith(("http", "file:"))
        assert img["alt"] and int(img["width"]) == 128 and int(img["height"]) == 128  # 16 px shown 8x
    first = Image.open(index.parent / page.images[0]["src"])
    np.testing.assert_array_equal(np.asarray(first), rows[0][1][0])
    by_alt = {img["alt"]: img["src"] for img in page.images}
    np.testing.assert_array_equal(np.asarray(Image.open(index.parent / by_alt["saliency, disc 1, torch"])), rows[2][1][0][0])
    np.testing.assert_array_equal(np.asarray(Image.open(index.parent / by_alt["saliency, star/2, torch"])), rows[2][1][1]["torch"])


def test_gallery_markup(tmp_path):
    index, _ = sample_gallery(tmp_path)
    text = index.read_text(encoding="utf-8")
    page = Page(text)
    assert "<title>polyviz &lt;demo&gt; &amp; gallery</title>" in text  # escaped
    assert text.count('colspan="2"') == 2 + 2  # two column headings and the spanning input row
    assert [h.get("class") for h in page.headers].count("sub") == 4  # torch, keras under each column
    assert sum(1 for c in page.cells if c.get("class") == "missing") == 1
    assert "<td>0.99</td>" in text  # the summary table goes in as HTML
    assert "<p>First paragraph.</p><p>Second &lt;paragraph&gt;.</p>" in text  # notes are text
    assert page.status is not None and page.status["data-status"] == "pending"
    assert re.search(r"naturalWidth\s*>\s*0", text)


def test_gallery_without_subcolumns_and_text_cells(tmp_path):
    index = R.write_gallery(
        tmp_path, title="t", columns=["x"], rows=[("m", [solid(200, 300, CYAN)]), ("n/a", ["no spatial layer"])]
    )
    page = Page(index.read_text())
    assert len(page.images) == 1 and page.images[0]["width"] == "300" and "pixelated" not in page.images[0].get("class", "")
    assert "no spatial layer" in index.read_text()
    index = R.write_gallery(tmp_path / "w", title="t", columns=["x"], rows=[("m", [solid(10, 20, CYAN)])], image_width=60)
    assert Page(index.read_text()).images[0]["height"] == "30"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"columns": "abc"}, "columns"),
        ({"columns": []}, "columns"),
        ({"rows": [("m", [solid(2, 2, CYAN)])]}, r"rows\[0\].*2 cells"),
        ({"rows": [("m", [np.full((2, 2), 5.0), None])]}, r"rows\[0\] \('m'\) column 'a'"),
        ({"rows": [("m", [{"jax": solid(2, 2, CYAN)}, None])], "subcolumns": ["torch", "keras"]}, "jax"),
        ({"rows": [("m", [[solid(2, 2, CYAN)], None])], "subcolumns": ["torch", "keras"]}, "sub-column"),
        ({"rows": [(3, [None, None])]}, r"rows\[0\]\[0\]"),
        ({"rows": "m"}, "rows"),
        ({"title": None}, "title"),
        ({"image_width": 0}, "image_width"),
    ],
)
def test_gallery_errors(tmp_path, kwargs, match):
    args = {"title": "t", "columns": ["a", "b"], "rows": [("m", [None, None])], **kwargs}
    with pytest.raises(InputError, match=match):
        R.write_gallery(tmp_path, **args)


def test_html_table():
    got = R.html_table(["method", "agreement", "pointing"], [["Grad-CAM", 0.99871, None], ["<b>", np.float32(0.5), 3]], caption="c")
    assert got == (
        "<table>\n<caption>c</caption>\n<tr><th>method</th><th>agreement</th><th>pointing</th></tr>\n"
        "<tr><td>Grad-CAM</td><td>0.999</td><td>&mdash;</td></tr>\n<tr><td>&lt;b&gt;</td><td>0.5</td><td>3</td></tr>\n</table>"
    )
    with pytest.raises(InputError, match=r"rows\[0\]"):
        R.html_table(["a", "b"], [[1]])


def test_gallery_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="out_dir"):
        R.write_gallery(tmp_path / "f", title="t", columns=["a"], rows=[])


# ---------------------------------------------------------------- in a browser


def chromium(*args, timeout=90):
    """Run headless Chromium with a throw-away profile; return its stdout."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": profile})
    return done.stdout


def loaded_status(index: Path) -> dict:
    """The page's own count of decoded images, read back from the DOM after the load event."""
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", index.as_uri())
    match = re.search(r'<span[^>]*id="polyviz-status"[^>]*>', dom)
    assert match, f"no status element in the rendered DOM: {dom[:300]!r}"
    return dict(re.findall(r'(data-[a-z]+)="([^"]*)"', match.group(0)))


def screenshot(index: Path, out: Path) -> np.ndarray:
    chromium(f"--screenshot={out}", "--window-size=1000,900", "--virtual-time-budget=10000", index.as_uri())
    assert out.exists(), "Chromium wrote no screenshot"
    return np.asarray(Image.open(out).convert("RGB"))


def looks_blank(shot: np.ndarray) -> bool:
    """True when a screenshot is (nearly) one colour."""
    return shot.std() < 2.0 or len(np.unique(shot.reshape(-1, 3), axis=0)) < 8


def has_colour(shot: np.ndarray, colour, min_pixels=500) -> bool:
    return int(np.all(np.abs(shot.astype(int) - colour) <= 3, axis=-1).sum()) >= min_pixels


def test_blank_check_is_real():
    assert looks_blank(np.full((50, 50, 3), 255, np.uint8))
    shot = np.full((50, 50, 3), 255, np.uint8)
    shot[10:40, 10:40] = MAGENTA
    shot[0, :8] = np.arange(8)[:, None] * 30
    assert not looks_blank(shot) and has_colour(shot, MAGENTA) and not has_colour(shot, CYAN)


@needs_chromium
def test_gallery_in_headless_chromium(tmp_path):
    index, _ = sample_gallery(tmp_path / "good")
    status = loaded_status(index)
    assert status["data-status"] == "ok", status
    assert status["data-images"] == status["data-loaded"] == "9"
    shot = screenshot(index, tmp_path / "good.png")
    assert shot.shape[:2] == (900, 1000) and not looks_blank(shot)
    # the pictures are drawn: each solid 16-pixel tile is shown 128 x 128 on the page
    for colour in (MAGENTA, CYAN, ORANGE):
        assert has_colour(shot, colour, min_pixels=100 * 100), colour


@needs_chromium
def test_broken_gallery_fails_the_browser_check(tmp_path):
    index, _ = sample_gallery(tmp_path / "bad")
    srcs = [img["src"] for img in Page(index.read_text()).images]
    (index.parent / srcs[3]).unlink()  # missing file
    (index.parent / srcs[5]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # undecodable file
    status = loaded_status(index)
    assert status["data-status"] == "broken"
    assert (status["data-images"], status["data-loaded"]) == ("9", "7")
    assert set(status["data-broken"].split()) == {srcs[3], srcs[5]}
    # and a page with nothing on it is caught by the screenshot check
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body></body></html>")
    assert looks_blank(screenshot(empty, tmp_path / "empty.png"))


@needs_chromium
def test_demo_gallery_in_headless_chromium(tmp_path):
    """The page `polyviz demo` writes (two methods, two images, seeded random weights so as not to
    depend on training) loads completely, and no picture on it is blank."""
    from polyviz.cli import main
    from polyviz.models.demo import demo_spec, save_weights
    from polyviz.models.spec import random_weights

    weights = save_weights(random_weights(demo_spec(), 0), tmp_path / "demo.npz")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--methods", "gradcam,saliency", "--images", "2", "--weights", str(weights), "--no-progress"]
    assert main(argv) == 0
    index = out / "index.html"
    srcs = [img["src"] for img in Page(index.read_text(encoding="utf-8")).images]
    assert len(srcs) >= 2 * 2 + 2  # at least the inputs and two methods on two images
    for src in srcs:
        pixels = np.asarray(Image.open(out / src))
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1, f"{src} is one flat colour"
    status = loaded_status(index)
    assert status["data-status"] == "ok" and status["data-loaded"] == status["data-images"] == str(len(srcs)), status
    assert not looks_blank(screenshot(index, tmp_path / "demo.png"))
