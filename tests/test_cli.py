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


def test_errors_are_one_line_without_traceback():
    out = subprocess.run([sys.executable, "-m", "polyviz.cli", "bench", "--backend", "jax", "--quick"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("polyviz: error: backend: 'jax' is not installed")
    assert "Traceback" not in out.stderr
