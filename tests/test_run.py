"""polyviz.run / `polyviz run`, in-process engine: inputs, the table against polyviz's own
explain and metric functions called directly, shards and seeds, bad images, resume after an
interrupt, the other framework, and bounded memory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import polyviz
from backends import INSTALLED
from polyviz.errors import InputError
from polyviz.runs import list_inputs, load_attribution, read_results, write_shapes_folder
from polyviz.runs.spec import shard_seed

pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
FAST = {"methods": ["gradcam", "saliency"], "metrics": ["pointing_game", "deletion_auc:step=512"],
        "shard_size": 8, "progress": False}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes_folder(folder, 20, seed=7)
    return folder


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory, weights):
    """One uninterrupted run: the table the other tests compare to."""
    out = tmp_path_factory.mktemp("ref")
    result = polyviz.run(shapes_dir / "manifest.csv", out, model="demo", weights=weights, **FAST)
    return out, result


def test_inputs_folder_glob_manifest(shapes_dir, tmp_path):
    folder = list_inputs(shapes_dir)
    assert [Path(i.path).name for i in folder] == [f"shape-{k:05d}.png" for k in range(20)]
    assert [i.index for i in folder] == list(range(20))
    assert len(list_inputs(str(shapes_dir / "shape-0001*.png"))) == 10
    man = list_inputs(shapes_dir / "manifest.csv")
    assert [i.path for i in man] == [i.path for i in folder]
    assert all(i.label is not None and i.mask.endswith(Path(i.path).name) for i in man)
    with_masks = list_inputs(shapes_dir, masks=shapes_dir / "masks")
    assert [i.mask for i in with_masks] == [i.mask for i in man]
    pa = pytest.importorskip("pyarrow")
    pq.write_table(pa.table({"path": [str(shapes_dir / "shape-00000.png")], "label": [3], "box": ["4 8 20 30"]}),
                   tmp_path / "m.parquet")
    (item,) = list_inputs(tmp_path / "m.parquet")
    assert item.label == 3 and item.box == (4.0, 8.0, 20.0, 30.0)
    from polyviz.runs.sources import read_mask

    m = read_mask(item, (32, 32))  # pixel centres (k + 0.5) * 2 in the 64 px image: rows 4..14, columns 2..9
    assert m.sum() == 11 * 8 and m[4:15, 2:10].all()


@pytest.mark.parametrize("bad", [
    ({"inputs": "/no/such/folder"}, "inputs"),
    ({"methods": ["gradcm"]}, "methods"),
    ({"metrics": ["no_metric"]}, "metrics"),
    ({"metrics": ["pointing_game:tolerence=3"]}, "tolerence"),
    ({"shard_size": 0}, "shard_size"),
    ({"engine": "spark"}, "engine"),
    ({"target": "top5"}, "target"),
])
def test_bad_arguments_name_themselves(bad, shapes_dir, tmp_path):
    kwargs, word = bad
    args = {"inputs": shapes_dir, **kwargs}
    with pytest.raises(InputError, match=word):
        polyviz.run(args.pop("inputs"), tmp_path / "o", progress=False, **args)


def test_table_rows_arrays_and_numbers_match_direct_calls(reference, shapes_dir, weights):
    out, result = reference
    table = read_results(out).to_pylist()
    assert result.rows == len(table) == 40 and not result.skipped
    assert sorted((r["index"], r["method"]) for r in table) == sorted(
        (i, m) for i in range(20) for m in ("gradcam", "saliency"))  # nothing lost, nothing twice
    # reference: the library's own functions called directly on shard 1 (images 8..15), shard seed
    from polyviz.loading import load_model, read_image
    from polyviz.metrics import deletion_auc, pointing_game

    lm = load_model("demo", weights=weights)
    items = list_inputs(shapes_dir / "manifest.csv")[8:16]
    x = np.stack([read_image(i.path, (64, 64)) for i in items])
    masks = np.stack([np.asarray(__import__("PIL.Image").Image.open(i.mask)) > 0 for i in items])
    rows = {(r["index"], r["method"]): r for r in table}
    for method in ("gradcam", "saliency"):
        e = polyviz.explain(lm.model, x, method, layout="NHWC", seed=shard_seed(0, 1), progress=False)
        for j, it in enumerate(items):
            r = rows[(it.index, method)]
            assert r["shard"] == 1 and r["target"] == int(e.target[j])
            stored = load_attribution(out, r).astype(np.float64)
            direct = np.asarray(e.attribution[j], np.float64)
            assert np.abs(stored - direct).max() <= 1e-6 * max(1e-12, np.abs(direct).max())
        hits = pointing_game(lm.model, x, masks, attribution=e, layout="NHWC", progress=False)
        assert [rows[(i.index, method)]["pointing_game"] for i in items] == hits.astype(float).tolist()
        auc = deletion_auc(lm.model, x, attribution=e, step=512, layout="NHWC", progress=False)
        np.testing.assert_allclose([rows[(i.index, method)]["deletion_auc"] for i in items], auc, rtol=1e-9)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["fingerprint"]["seed"] == 0
    assert manifest["versions"]["polyviz"] == polyviz.__version__
    page = (out / "summary" / "index.html").read_text()
    assert "mean and standard deviation" in page and "disagree most" in page and page.count("<img") == 8 * 3


def test_shard_seed_drives_random_methods(shapes_dir, tmp_path, weights):
    """SmoothGrad in the run equals SmoothGrad called with the shard's seed, and a second shard differs."""
    out = tmp_path / "o"
    polyviz.run(shapes_dir, out, model="demo", weights=weights, methods=["smoothgrad:n_samples=4"], shard_size=10,
                progress=False, summary=False)
    from polyviz.loading import load_model, read_image

    lm = load_model("demo", weights=weights)
    items = list_inputs(shapes_dir)[10:20]
    x = np.stack([read_image(i.path, (64, 64)) for i in items])
    e = polyviz.explain(lm.model, x, "smoothgrad", n_samples=4, layout="NHWC", seed=shard_seed(0, 1), progress=False)
    with np.load(out / "shards" / "arrays-000001.npz") as z:
        np.testing.assert_allclose(z["smoothgrad"], e.attribution, rtol=1e-5, atol=1e-7 * np.abs(e.attribution).max())
        assert z["index"].tolist() == list(range(10, 20))


def test_bad_images_are_skipped_and_listed(shapes_dir, tmp_path, weights):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(5):
        (folder / f"a{k}.png").write_bytes((shapes_dir / f"shape-{k:05d}.png").read_bytes())
    (folder / "a2.png").write_bytes(b"not an image")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "polyviz.cli", "run", str(folder), "--out", str(out), "--weights", weights,
           "--methods", "gradcam", "--shard-size", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "polyviz: skipped: images: cannot read" in proc.stderr and "a2.png" in proc.stderr
    assert "4 images computed" not in proc.stdout and "5 images, 4 rows, 1 skipped" in proc.stdout
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith("2,") and "a2.png" in skipped[1]
    assert sorted(r["index"] for r in read_results(out).to_pylist()) == [0, 1, 3, 4]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    return env


def test_interrupted_run_resumes_and_equals_uninterrupted(reference, shapes_dir, tmp_path, weights):
    """Ctrl-C (SIGINT) after the first shards, then the same command: only the missing shards are
    computed, and the table equals the uninterrupted run's."""
    ref_out, _ = reference
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "polyviz.cli", "run", str(shapes_dir / "manifest.csv"), "--out", str(out),
           "--weights", weights, "--methods", "gradcam,saliency", "--metrics", "pointing_game",
           "--metric", "deletion_auc:step=512", "--shard-size", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "shards").glob("arrays-*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = len(list((out / "shards").glob("arrays-*.npz")))
    assert 2 <= done < 5 and not (out / "results.parquet").exists()
    assert not list((out / "shards").glob(".*.tmp"))  # no half-written file left
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert f"{done} shards already done" in again.stdout
    _same_tables(read_results(out), read_results(ref_out))


def _same_tables(a, b, tol=0.0, rank_tol=0.0):
    """Same rows; values within ``tol`` (relative, floor 1); the disagreement, a rank statistic over
    256 cells whose near-tied background cells swap under float32 round-off, within ``rank_tol``."""
    a, b = a.to_pylist(), b.to_pylist()
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert (ra["index"], ra["method"], ra["target"]) == (rb["index"], rb["method"], rb["target"])
        for key in ("score", "probability", "pointing_game", "deletion_auc", "disagreement"):
            t = rank_tol if key == "disagreement" else tol
            assert abs(ra[key] - rb[key]) <= t * max(1.0, abs(rb[key])), (key, ra[key], rb[key])


def test_deleted_shard_is_recomputed_only(reference, shapes_dir, tmp_path, weights):
    import shutil

    ref_out, _ = reference
    out = tmp_path / "o"
    shutil.copytree(ref_out, out)
    (out / "shards" / "arrays-000001.npz").unlink()
    (out / "results.parquet").unlink()
    result = polyviz.run(shapes_dir / "manifest.csv", out, model="demo", weights=weights, **FAST)
    assert (result.computed_shards, result.resumed_shards, result.computed_images) == (1, 2, 8)
    _same_tables(read_results(out), read_results(ref_out))
    with pytest.raises(InputError, match="other seed"):
        polyviz.run(shapes_dir / "manifest.csv", out, model="demo", weights=weights, **{**FAST, "seed": 1})


@pytest.mark.skipif(not {"torch", "keras"} <= set(INSTALLED), reason="needs both frameworks")
def test_keras_run_agrees_with_torch_run(reference, shapes_dir, tmp_path, weights):
    """The same run on the Keras build of the demo network: same targets and pointing hits; logits,
    probabilities and deletion AUCs agree to float32 round-off (1e-4), the methods' disagreement
    (Spearman ranks of 16 x 16 maps) to 2e-3."""
    ref_out, _ = reference
    out = tmp_path / "k"
    polyviz.run(shapes_dir / "manifest.csv", out, model="demo", weights=weights, backend="keras", **FAST)
    _same_tables(read_results(out), read_results(ref_out), tol=1e-4, rank_tol=2e-3)


MEMORY_SCRIPT = r"""
import resource, sys, time
import torch
import polyviz
from polyviz.runs import write_shapes_folder
n, folder, out, weights = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
write_shapes_folder(folder, n, seed=7, size=32)
before = int(open("/proc/self/statm").read().split()[1]) * 4 if sys.platform == "linux" else 0
t = time.perf_counter()
r = polyviz.run(folder, out, model="demo", weights=weights, methods=["gradcam"], shard_size=50, progress=False)
print(before, n, r.rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path, weights):
    """Peak RSS for 200 and 2000 images (32 px, read at the demo's 64 px): 1800 more images held at
    once would be 1800 x 64 x 64 x 3 x 4 B = 88 MB of pixels and as much of attributions; the run
    holds one shard, so the peaks differ by less than 40 MB."""
    peaks = {}
    for n in (200, 2000):
        proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(tmp_path / f"in{n}"),
                               str(tmp_path / f"out{n}"), weights], capture_output=True, text=True, env=_env(),
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        before, got, rows, kb, seconds = proc.stdout.split()[-5:]
        assert int(got) == n and int(rows) == n
        peaks[n] = int(kb) / 1024
        print(f"{n} images: peak RSS {peaks[n]:.0f} MB (RSS before the run {int(before) / 1024:.0f} MB), "
              f"{float(seconds):.1f} s")
    assert peaks[2000] - peaks[200] < 40, peaks


def test_model_object_and_label_targets(shapes_dir, tmp_path, weights):
    """A model object (here from a factory, as a Ray worker would rebuild it) and target='label':
    every row explains the manifest's label, and its score is the model's logit for it."""
    from polyviz.loading import load_model, read_image

    lm = load_model("demo", weights=weights)
    out = tmp_path / "o"
    polyviz.run(shapes_dir / "manifest.csv", out, model=lambda: lm, methods=["gradcam"], target="label",
                shard_size=7, progress=False, summary=False)
    items = list_inputs(shapes_dir / "manifest.csv")
    rows = read_results(out).to_pylist()
    assert [r["target"] for r in rows] == [i.label for i in items]
    x = np.stack([read_image(i.path, (64, 64)) for i in items])
    logits = polyviz.backend_for(lm.model).forward(x).astype(np.float64)
    np.testing.assert_allclose([r["score"] for r in rows], logits[np.arange(len(items)), [i.label for i in items]],
                               rtol=1e-5, atol=1e-5 * np.abs(logits).max())
