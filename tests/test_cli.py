"""The `polyviz` command: info, bench smoke run, and errors as one clear line."""

import json
import subprocess
import sys

import pytest

from backends import INSTALLED
from polyviz.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in INSTALLED:
        assert f"backend {name}" in out


@pytest.mark.skipif(not INSTALLED, reason="no framework installed")
def test_bench_quick_smoke(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--no-progress", "--methods", "saliency,gradcam", "--size", "32",
                 "--backend", ",".join(INSTALLED), "--json", str(out_json)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| saliency |" in table and "forward+layer backward" in table
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["method"] for r in rows} == {"saliency", "gradcam"} and all(r["floor_s"] > 0 for r in rows)


@pytest.mark.skipif(not INSTALLED, reason="no framework installed")
def test_bench_demo_model(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = main(["bench", "--model", "demo", "--quick", "--no-progress", "--methods", "saliency,gradcam",
                 "--backend", ",".join(INSTALLED), "--json", str(out_json)])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["meta"]["model"] == "demo" and data["meta"]["size"] == 64
    assert {(r["backend"], r["method"]) for r in data["rows"]} == {(b, m) for b in INSTALLED for m in ("saliency", "gradcam")}


def test_bench_lrp_and_deeplift_floors_and_peers(tmp_path):
    out_json = tmp_path / "bench.json"
    code = main(["bench", "--model", "demo", "--quick", "--no-progress", "--methods", "lrp,deeplift", "--peers",
                 "--backend", ",".join(INSTALLED), "--json", str(out_json)])
    assert code == 0
    rows = {(r["backend"], r["method"]): r for r in json.loads(out_json.read_text())["rows"]}
    for backend in INSTALLED:
        assert rows[(backend, "lrp")]["floor"] == "forward+input backward"
        assert rows[(backend, "deeplift")]["floor"] == "forward+input backward of x and its reference"
    if "torch" in INSTALLED:
        assert set(rows[("torch", "lrp")]["peers"]) == {"zennit"}
        assert set(rows[("torch", "deeplift")]["peers"]) == {"captum"}


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet"], "--model: expected 'vgg16' or 'demo'"),
    (["--model", "demo", "--size", "128"], "--size: the demo model takes 64-pixel images"),
])
def test_bench_bad_model_arguments(argv, message, capsys):
    assert main(["bench", "--quick", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_times_round_robin():
    """A method, its floor and its peers alternate, so that all of them see the same load."""
    from polyviz.bench import _time_together

    calls = []
    result = _time_together({name: (lambda name=name: calls.append(name)) for name in "abc"}, repeat=2)
    assert calls == list("abc") * 3  # one warm-up round, then two timed rounds
    assert set(result) == set("abc") and all(0 <= best <= median for median, best in result.values())


def test_errors_are_one_line_without_traceback():
    out = subprocess.run([sys.executable, "-m", "polyviz.cli", "bench", "--backend", "jax", "--quick"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("polyviz: error: backend: 'jax' is not installed")
    assert "Traceback" not in out.stderr
