"""``polyviz bench --metrics``: the rows time polyviz and Quantus on the same work; where neither
side draws at random, Quantus' values are those of polyviz (to float32 round-off)."""

import numpy as np
import pytest

from backends import have
from polyviz import bench_metrics
from polyviz.models.spec import random_weights
from polyviz.registry import backend_class


def test_metric_rows_with_quantus_columns():
    if not have("torch"):
        pytest.skip("the torch backend is not available")
    pytest.importorskip("quantus")
    spec = bench_metrics.bench_spec(16)
    model, _ = backend_class("torch").build(spec, random_weights(spec, 0))
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype(np.float32)
    names = ("faithfulness_estimate", "region_perturbation", "avg_sensitivity")
    rows = bench_metrics.run_metric_bench(model.eval(), x, names, repeat=1, progress=False)
    assert [r.metric for r in rows] == list(names)
    for r in rows:
        assert r.median_s > 0 and r.quantus_s > 0 and r.speedup == pytest.approx(r.quantus_s / r.median_s)
    assert rows[0].max_diff <= 1e-5 and rows[1].max_diff <= 1e-5  # probabilities, float32 round-off
    assert rows[2].max_diff is None  # different random draws: timed, not compared
    table = bench_metrics.metric_markdown(rows)
    assert "| torch | faithfulness_estimate |" in table and "x |" in table
