"""polyviz.run on Ray Data: the same table as the in-process engine, and complete and equal after
a Ray worker is killed mid-run. One local Ray session (2 CPUs) for the module: Ray starts slowly."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import polyviz
from polyviz.runs import read_results, write_shapes_folder

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

CONFIG = {"methods": ["gradcam", "saliency"], "metrics": ["pointing_game", "deletion_auc:step=1024"],
          "shard_size": 2, "progress": False, "summary": False}
N = 12


@pytest.fixture(scope="module")
def ray_session():
    from polyviz.runs.engines.ray_data import ray_init

    ray = ray_init(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, weights):
    folder = tmp_path_factory.mktemp("shapes")
    manifest = write_shapes_folder(folder, N, seed=11)
    ref = tmp_path_factory.mktemp("ref")
    polyviz.run(manifest, ref, model="demo", weights=weights, **CONFIG)
    return manifest, ref


def _same(a, b):
    """Targets and pointing hits exactly; scores, probabilities, AUCs and disagreement to float32
    round-off (a Ray worker runs torch on 1 thread, this process on several: reductions differ in
    the last bits), judged against each value's size."""
    a, b = a.to_pylist(), b.to_pylist()
    assert [(r["index"], r["method"]) for r in a] == [(r["index"], r["method"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert (ra["target"], ra["pointing_game"], ra["array_key"], ra["array_row"]) == (
            rb["target"], rb["pointing_game"], rb["array_key"], rb["array_row"])
        for key in ("score", "probability", "deletion_auc", "disagreement"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(rb[key])), (key, ra[key], rb[key])


def _arrays_equal(out_a, out_b, shards):
    for k in range(shards):
        with np.load(out_a / "shards" / f"arrays-{k:06d}.npz") as za, np.load(out_b / "shards" / f"arrays-{k:06d}.npz") as zb:
            for key in ("gradcam", "saliency"):
                scale = np.abs(zb[key]).max()
                assert np.abs(za[key].astype(np.float64) - zb[key]).max() <= 1e-5 * scale


def test_ray_engine_equals_inprocess(ray_session, data, tmp_path, weights):
    manifest, ref = data
    out = tmp_path / "ray"
    result = polyviz.run(manifest, out, model="demo", weights=weights, engine="ray", workers=2, **CONFIG)
    assert result.rows == 2 * N and not result.skipped
    _same(read_results(out), read_results(ref))
    _arrays_equal(out, ref, N // 2)


def _parent(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _descends_from_us(pid):
    """The local Ray that this process started spawned it (raylet -> worker): never another
    session's actor (a parallel test run, a user's Ray)."""
    for _ in range(4):
        pid = _parent(pid)
        if pid == os.getpid():
            return True
        if pid <= 1:
            return False
    return False


def _actor_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"MapBatches(_ShardActor)" in fh.read() and _descends_from_us(int(pid)):
                        pids.append(int(pid))
            except OSError:
                continue
    return pids


def test_killed_worker_output_complete_and_equal(ray_session, data, tmp_path, weights):
    """SIGKILL the model-holding actor once a shard is committed: Ray restarts it and retries its
    shard; the table has every row once and equals the uninterrupted in-process run."""
    manifest, ref = data
    out = tmp_path / "ray"
    killed = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "shards").glob("arrays-*.npz")):
            time.sleep(0.02)
        for pid in _actor_pids():  # processes of this test's own Ray session only
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    result = polyviz.run(manifest, out, model="demo", weights=weights, engine="ray", workers=1, **CONFIG)
    thread.join()
    assert killed, "no worker was killed: the run ended first"
    done = len(list((out / "shards").glob("arrays-*.npz")))
    assert done == N // 2 and result.rows == 2 * N
    _same(read_results(out), read_results(ref))
    _arrays_equal(out, ref, N // 2)
