"""One cell of the coverage matrix: run one method on one model and classify what happened.

* ``ok``: finite values of the right shape, and the model's state (weights, hooks, flags) exactly
  as before;
* ``refused``: a one-line :class:`~polyviz.errors.PolyvizError` saying why;
* anything else (another exception, NaN, a wrong shape, a changed model) is a failure, raised.

The recorded outcomes live in ``tests/data/coverage_matrix.json``; ``python tests/matrix_cells.py
--readme`` writes the README's supported-models table from them, and the matrix test checks that
every cell still behaves as recorded, so the table cannot drift from the code.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

RECORD = Path(__file__).parent / "data" / "coverage_matrix.json"
README = Path(__file__).parent.parent / "README.md"
BEGIN, END = "<!-- coverage-matrix:begin -->", "<!-- coverage-matrix:end -->"

def cheap_options(method: str, size: int) -> dict[str, Any]:
    """Options that keep a cell cheap at small inputs: the fewest steps, samples and masks that
    still exercise the method's code path, and windows of half the image (the matrix checks that a
    method runs correctly on an architecture; the reference tests check its values)."""
    half = max(size // 2, 1)
    patches = {"features": "patches", "patch_size": half}
    return {
        "integrated_gradients": {"n_steps": 3},
        "internal_influence": {"n_steps": 3},
        "layer_conductance": {"n_steps": 3},
        "layer_integrated_gradients": {"n_steps": 3},
        "neuron_conductance": {"n_steps": 3, "neuron": (0, 0, 0)},
        "neuron_integrated_gradients": {"n_steps": 3, "neuron": (0, 0, 0)},
        "neuron_gradient": {"neuron": (0, 0, 0)},
        "neuron_deeplift_shap": {"neuron": (0, 0, 0)},
        "neuron_gradient_shap": {"n_samples": 3, "neuron": (0, 0, 0)},
        "gradient_shap": {"n_samples": 3},
        "smoothgrad": {"n_samples": 3},
        "shapley_sampling": {"n_samples": 2, **patches},
        "kernel_shap": {"n_samples": 8, **patches},
        "lime": {"n_samples": 8, **patches},
        "feature_ablation": patches,
        "feature_permutation": patches,
        "occlusion": {"window": (half, half), "stride": (half, half)},
        "rise": {"n_masks": 8, "grid": 4},
        "scorecam": {"max_channels": 8},
    }.get(method, {})


def expected_shape(kind: str, x_shape: tuple[int, ...], explanation: Any) -> tuple[int, ...] | None:
    """The shape a method of ``kind`` must return for a batch of ``x_shape`` in native layout
    (None: a layer-sized result, checked against the layer's own shape)."""
    if kind == "input":
        return tuple(x_shape)
    if kind == "map":
        hw = x_shape[2:] if explanation.layout == "NCHW" else x_shape[1:3]
        return (x_shape[0], *hw)
    return None


def run_cell(model: Any, framework: str, method: str, x: np.ndarray) -> tuple[str, str, np.ndarray | None]:
    """(outcome, detail, values) of ``method`` on ``model``: ("ok", "", values) or ("refused",
    message, None). Raises AssertionError for a failure: a non-polyviz exception, NaN, a wrong
    shape or a changed model."""
    import polyviz
    from polyviz.errors import CapabilityError, LayerError, ModelError
    from polyviz.registry import backend_class

    info = polyviz.methods()[method]
    fingerprint = backend_class(framework).state_fingerprint(model)
    size = min(x.shape[2:]) if framework == "torch" else min(x.shape[1:3])
    try:
        explanation = polyviz.explain(model, x, method, target=1, progress=False, batch_size=8,
                                      **cheap_options(method, size))
    except (CapabilityError, LayerError, ModelError) as exc:  # a refusal about the model, not the call
        _assert_unchanged(framework, model, fingerprint)
        message = str(exc)
        assert "\n" not in message.strip(), f"{method}: refusal is not one line: {message!r}"
        return "refused", f"{type(exc).__name__}: {message}", None
    _assert_unchanged(framework, model, fingerprint)
    values = np.asarray(explanation.attribution)
    assert values.dtype == np.float32, (method, values.dtype)
    assert np.isfinite(values).all(), f"{method}: non-finite values"
    shape = expected_shape(info["kind"], x.shape, explanation)
    if shape is not None:
        assert values.shape == shape, (method, values.shape, shape)
    else:
        assert values.shape[0] == x.shape[0] and values.ndim >= 2, (method, values.shape)
    return "ok", "", values


def _assert_unchanged(framework: str, model: Any, before: dict[str, Any]) -> None:
    from polyviz.registry import backend_class

    after = backend_class(framework).state_fingerprint(model)
    assert after.keys() == before.keys(), "the model's state keys changed"
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key], err_msg=f"model state {key} changed")
        else:
            assert value == after[key], f"model state {key} changed"


def load() -> dict[str, dict[str, str]]:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def short_reason(detail: str) -> str:
    """The refusal's error class and first clause, for the README table."""
    kind, _, message = detail.partition(": ")
    message = re.split(r"(?<=[.;])\s", message, maxsplit=1)[0]
    return message[:140]


def table(record: dict[str, dict[str, str]]) -> str:
    """The README's supported-models table: one row per model, one column per method family,
    "all" or the methods refused (with their reason as a footnote)."""
    import polyviz

    methods = polyviz.methods()
    families = sorted({info["family"] for info in methods.values()})
    reasons: dict[str, int] = {}
    lines = ["| model | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for model_id in sorted(record, key=lambda k: (k.split(":")[0] != "torch", k)):
        cells = []
        for family in families:
            names = [m for m, info in methods.items() if info["family"] == family]
            refused = [m for m in names if record[model_id].get(m, "missing").startswith("refused")]
            missing = [m for m in names if m not in record[model_id]]
            if missing:
                cells.append("not run")
            elif not refused:
                cells.append(f"all {len(names)}")
            else:
                marks = []
                for m in refused:
                    reason = short_reason(record[model_id][m].partition("refused: ")[2])
                    reasons.setdefault(reason, len(reasons) + 1)
                    marks.append(f"{m}[^{reasons[reason]}]")
                cells.append(f"{len(names) - len(refused)}/{len(names)}; refused: " + ", ".join(marks))
        lines.append(f"| {model_id} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"[^{n}]: {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)


def readme_section(record: dict[str, dict[str, str]]) -> str:
    return f"{BEGIN}\n{table(record)}\n{END}"


def write_readme(record: dict[str, dict[str, str]]) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + readme_section(record) + text[end:])


def merge_records(paths: list[Path]) -> dict[str, dict[str, str]]:
    """Cells recorded by matrix runs (``POLYVIZ_MATRIX_RECORD=file``, one JSON object per line)."""
    record = load()
    for path in paths:
        for line in path.read_text().splitlines():
            cell = json.loads(line)
            record.setdefault(cell["model"], {})[cell["method"]] = cell["outcome"]
    return {k: dict(sorted(v.items())) for k, v in sorted(record.items())}


if __name__ == "__main__":
    # python tests/matrix_cells.py [RECORDED.jsonl ...] : merge new cells, then rewrite the README table
    merged = merge_records([Path(p) for p in sys.argv[1:]])
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(merged, indent=1) + "\n")
    write_readme(merged)
    print(f"{sum(len(v) for v in merged.values())} cells, {len(merged)} models")
