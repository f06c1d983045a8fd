"""``polyviz metrics``: every registered metric (polyviz.metrics.METRICS, so also those added later)
judged per method and framework, the table with the spread over images by category (direction
and category from METRICS), the JSON, the picture by category and the HTML page."""

import json

import numpy as np
import pytest

from backends import ALL, INSTALLED, build
from polyviz.metrics.info import CATEGORIES, METRICS
from polyviz.metrics.report import MetricRun, Settings, category_pictures, figure, markdown, spread, to_json
from polyviz.models.spec import vgg_spec
from polyviz.registry import backend_for


def test_spread_is_mean_and_sd_over_images_with_a_value():
    mean, sd, count = spread([1.0, 3.0, float("nan")])
    assert (mean, sd, count) == (2.0, 1.0, 2)
    assert spread([float("nan")])[2] == 0


def fake_runs():
    full = {"pointing_game": [0.0, 1.0], "sparseness": [0.2, 0.4], "complexity": [5.0, 7.0],
            "sanity_check": [0.5, 1.0]}
    return {("a", "torch"): MetricRun("a", "torch", full, seconds=1.0),
            ("a", "keras"): MetricRun("a", "keras", {k: v for k, v in full.items() if k != "sanity_check"},
                                      errors={"sanity_check": "no copy"}, seconds=2.0),
            ("b", "torch"): MetricRun("b", "torch", skipped="no layer"),
            ("b", "keras"): MetricRun("b", "keras", {**full, "sparseness": [0.9, float("nan")]})}


def test_table_by_category_with_spread_and_reasons():
    text = markdown(fake_runs(), ["a", "b"], ["torch", "keras"])
    lines = text.splitlines()
    # one table per category, in CATEGORIES order, headers with the direction from METRICS
    heads = [line.rstrip(":") for line in lines if line.rstrip(":") in CATEGORIES]
    assert heads == ["localisation", "complexity", "randomisation"]
    assert "sparseness ↑" in text and "complexity ↓" in text and "pointing_game ↑" in text
    row_a = [line for line in lines if line.startswith("| a ")]
    assert "0.5 ± 0.5 / 0.5 ± 0.5" in row_a[0]  # pointing: mean ± sd over images, per framework
    assert "0.75 ± 0.25 / n/a" in row_a[2]
    assert "skipped / 0.9 ± 0 (1 img)" in text
    assert "n/a: a (keras), sanity_check: no copy" in text and "skipped: b (torch): no layer" in text
    assert "| a      | 1.0 / 2.0 |" in text


def test_picture_by_category_one_panel_each(tmp_path):
    runs = fake_runs()
    fig = figure(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["localisation", "complexity", "randomisation"]
    fig.savefig(tmp_path / "m.png")
    pictures = category_pictures(runs)
    assert list(pictures) == titles
    for p in pictures.values():
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and p.shape[0] > 100
        assert p.std() > 10  # drawn, not blank


def test_settings_lines_state_the_pointing_tolerance():
    lines = Settings(metrics=("pointing_game", "top_k_intersection")).lines(6, 64)
    assert any("within 0 px" in line and "15 px at 224 px, 4.3 px at 64 px" in line for line in lines)
    assert any("top_k_intersection: k=1000" in line for line in lines)


@pytest.mark.parametrize("backend", ALL)
def test_every_registered_metric_runs_in_the_report(backend):
    """Every registered metric (whatever METRICS holds when this runs) through the report's
    call_metric on a tiny network: one value per image, no error."""
    from polyviz.api import explain
    from polyviz.metrics.report import call_metric

    model, _ = build(backend, vgg_spec([[4]], input_shape=(8, 8, 3), dense=(8,), classes=3), seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:6, 1:5] = True
    labels = np.array([0, 2])
    settings = Settings(step=16, infidelity_samples=2, sensitivity_samples=1, smooth_samples=2, patch_size=4)
    be = backend_for(model)
    e = explain(be, x, "saliency", target=labels, layout="NHWC", progress=False)
    for name in METRICS:
        values = call_metric(name, be, x, labels, masks, "saliency", e, {}, settings)
        assert values.shape == (2,), name


@pytest.mark.slow
@pytest.mark.skipif(not INSTALLED, reason="needs a framework")
def test_cli_metrics_every_registered_metric(tmp_path, capsys):
    """One method, two images, every registered metric (whatever METRICS holds when this runs) in
    every framework on the demo model: each gives a value per image; JSON, picture and page written
    (about 30 s on 2 cores)."""
    from polyviz.cli import main

    out, png, page = tmp_path / "m.json", tmp_path / "m.png", tmp_path / "page"
    code = main(["metrics", "--methods", "saliency", "--images", "2", "--step", "1024", "--infidelity-samples", "2",
                 "--sensitivity-samples", "1", "--no-progress", "--json", str(out), "--figure", str(png),
                 "--out", str(page)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "within 0 px" in text and "mean ± standard deviation" in text
    data = json.loads(out.read_text())
    assert len(data["runs"]) == len(INSTALLED)
    for run in data["runs"]:
        assert not run["skipped"], run["skipped"]
        assert set(run["values"]) | set(run["errors"]) == set(METRICS)
        assert not run["errors"], run["errors"]
        for name, values in run["values"].items():
            assert len(values) == 2, name
        assert run["values"]["pointing_game"][0] in (0.0, 1.0)
        assert 0 <= run["values"]["deletion_auc"][0] <= 1
        assert -1 <= run["values"]["sanity_check"][0] <= 1
    assert data["metrics"]["auc"] == {"category": "localisation", "higher_is_better": True,
                                      "reference": METRICS["auc"].reference}
    assert png.stat().st_size > 1000
    html = (page / "index.html").read_text()
    assert all(c in html for c in {METRICS[n].category for n in METRICS})
    assert len(list(page.glob("*.png"))) == len({METRICS[n].category for n in METRICS})


@pytest.mark.skipif(not INSTALLED, reason="needs a framework")
def test_cli_metrics_smoke(tmp_path, capsys):
    """The default set's smoke run: one method, one image, three metrics, every output."""
    from polyviz.cli import main

    out, png, page = tmp_path / "m.json", tmp_path / "m.png", tmp_path / "page"
    code = main(["metrics", "--methods", "gradcam", "--images", "1", "--metrics", "pointing_game,sparseness,auc",
                 "--no-progress", "--json", str(out), "--figure", str(png), "--out", str(page)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "localisation:" in text and "complexity:" in text and "auc ↑" in text
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == len(INSTALLED) and all(set(r["values"]) == {"pointing_game", "sparseness", "auc"} for r in runs)
    assert png.stat().st_size > 1000 and len(list(page.glob("*.png"))) == 2


def test_cli_metrics_unknown_metric(capsys):
    from polyviz.cli import main

    assert main(["metrics", "--metrics", "pointing,auc", "--no-progress"]) == 2
    assert "metrics: expected names from" in capsys.readouterr().err


def test_to_json_has_summaries():
    data = json.loads(to_json(fake_runs(), Settings(), {}))
    run = data["runs"][0]
    assert run["summary"]["complexity"] == {"mean": 6.0, "std": 1.0, "count": 2}
