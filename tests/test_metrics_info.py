"""The metrics table: every registered metric states its category, direction, paper and check;
the README's table is the one generated from METRICS (``python -m polyviz.metrics --readme``)."""

from pathlib import Path

import polyviz.metrics  # noqa: F401  (registers every metric)
from polyviz.metrics.info import CATEGORIES, METRICS, markdown_table, readme_block

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_metric_states_what_it_is():
    for name, info in METRICS.items():
        assert info.category in CATEGORIES and info.reference and info.checked, name
        doc = info.fn.__doc__ or ""
        assert len(doc) > 100, f"{name}: the docstring should give the definition"
    covered = {info.category for info in METRICS.values()}
    assert {"localisation", "complexity", "randomisation", "axiomatic"} <= covered


def test_readme_table_is_generated_from_metrics():
    table = markdown_table()
    assert table.count("\n") == len(METRICS) + 1
    assert readme_block(README.read_text(encoding="utf-8")) == table, (
        "README's metrics table is stale: run `python -m polyviz.metrics --readme README.md`")


def test_readme_rewrite(tmp_path):
    from polyviz.metrics.info import README_END, README_START, _main

    page = tmp_path / "R.md"
    page.write_text(f"# x\n\n{README_START}{README_END}\nafter\n", encoding="utf-8")
    assert _main(["--readme", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert readme_block(text) == markdown_table() and text.endswith(f"{README_END}\nafter\n")
