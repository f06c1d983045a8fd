"""The coverage matrix (issues 13 and 14): every method of ``polyviz.methods()`` on every model of
:mod:`tests.zoo`, random weights, small inputs. Each cell runs and returns finite float32 values
of the right shape with the model untouched, or refuses with a one-line polyviz error; and it
behaves as recorded in ``tests/data/coverage_matrix.json``, from which the README's
supported-models table is generated (``python tests/matrix_cells.py``).

To re-record after a change: ``POLYVIZ_MATRIX_RECORD=/tmp/cells.jsonl python -m pytest -m ""
tests/test_coverage_matrix.py`` then ``python tests/matrix_cells.py /tmp/cells.jsonl``.

The default set runs the hand-written structures and one small network per framework; the other
architectures run in the slow set (each takes 20 s to minutes on 2 cores).
"""

from __future__ import annotations

import json
import os

import matrix_cells as coverage
import numpy as np
import pytest
import zoo_models as zoo

import polyviz

#: Fast enough for the default set on 2 cores.
DEFAULT_SET = {"torch:functional_activations", "torch:inplace_ops", "torch:reused_module", "torch:resnet18",
               "torch:mobilenet_v3_small", "keras:nested_backbone", "keras:subclassed", "keras:MobileNetV3Small"}


def _params():
    for m in zoo.ZOO:
        marks = [] if m.id in DEFAULT_SET else [pytest.mark.slow]
        yield pytest.param(m, id=m.id, marks=marks)


@pytest.mark.parametrize("model", list(_params()))
def test_every_method_runs_or_refuses_as_recorded(model):
    record = coverage.load().get(model.id, {})
    recording = os.environ.get("POLYVIZ_MATRIX_RECORD")
    if not record and not recording:
        pytest.skip(f"{model.id} has no recorded cells yet (record it, see the module doc)")
    native = zoo.build(model)
    x = model.input()
    failures, drift, values = [], [], {}
    try:
        for method in polyviz.methods():
            try:
                outcome, detail, values[method] = coverage.run_cell(native, model.framework, method, x)
            except Exception as exc:  # a failure: collected so that one run shows every broken cell
                failures.append(f"{method}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            text = outcome if outcome == "ok" else f"refused: {detail}"
            if recording:
                with open(recording, "a") as f:
                    f.write(json.dumps({"model": model.id, "method": method, "outcome": text}) + "\n")
            elif record.get(method, "missing").split(":")[0] != outcome:
                drift.append(f"{method}: recorded {record.get(method, 'missing')!r}, now {text!r}")
        for method in ("guided_backprop", "deconvnet"):  # never saliency under another name
            if values.get(method) is not None and values.get("saliency") is not None:
                if np.array_equal(values[method], values["saliency"]):
                    failures.append(f"{method}: equals saliency exactly (no rule applied)")
    finally:
        del native
        zoo.release(model)
    assert not failures, "broken cells:\n" + "\n".join(failures)
    assert not drift, "cells differ from tests/data/coverage_matrix.json (re-record, see the module doc):\n" + "\n".join(drift)


def test_readme_table_is_generated_from_the_recorded_matrix():
    record = coverage.load()
    readme = coverage.README.read_text()
    assert coverage.readme_section(record) in readme, "README table is stale: run python tests/matrix_cells.py"
