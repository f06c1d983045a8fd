"""The Ray Data engine (``engine="ray"``, ``polyviz run --engine ray``).

* ``ray.init()`` starts a local Ray (``address=None``) or joins a cluster (``address="auto"`` or
  ``"ray://head:10001"``); a Ray already initialised in this process is used as it is.
* Ray Data reads the image files (``read_binary_files``, on the workers); the bytes are decoded by
  polyviz's own :func:`~polyviz.loading.read_image` in the workers, so both engines see the same
  pixels. Rows are grouped by shard (``groupby("shard")``) and each group goes to
  ``map_groups`` with the callable class :class:`_ShardActor`: each actor loads the model once and
  computes whole shards, with the shard's seed, exactly as the in-process engine does.
* ``workers`` actors (the concurrency), each with ``num_gpus`` GPUs (default: 1 when the cluster
  has GPUs, else 0) and ``num_cpus`` logical CPUs (default 1, less when the actors would otherwise
  hold every CPU: Ray Data's read and shuffle tasks need one, or the run stalls). The batch is the
  shard (``shard_size`` images).
* Ray restarts a killed actor and retries its task (Ray Data's defaults: ``max_restarts=-1``,
  ``max_task_retries=-1``); the driver commits each shard's files atomically as it arrives, so a
  retried shard is written once and a killed driver resumes from the committed shards.
* On a cluster, the image paths (and masks) must be readable from every node (shared storage or
  cloud URIs) and the output folder is written by the driver only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.runs.sources import Item
from polyviz.runs.spec import RunConfig
from polyviz.runs.store import write_shard

__all__ = ["run_ray", "ray_init"]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("engine: the Ray engine needs Ray Data: pip install 'polyviz[ray]'") from None
    return ray


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Start (``address=None``: a local Ray) or join (``"auto"``, ``"ray://host:10001"``) Ray, once."""
    ray = _ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    return ray


def _norm(path: str) -> str:
    return os.path.abspath(path)


def _add_shard(batch: dict[str, np.ndarray], shard_of: dict[str, int]) -> dict[str, np.ndarray]:
    batch["shard"] = np.array([shard_of[_norm(str(p))] for p in batch["path"]], np.int64)
    return batch


class _ShardActor:
    """A Ray actor: loads the model once, then computes whole shards (one group each)."""

    def __init__(self, config: RunConfig, shards: dict[int, list[Item]]) -> None:
        from polyviz.runs.pipeline import ShardWorker

        self.worker = ShardWorker(config)
        self.shards = shards

    def __call__(self, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = int(group["shard"][0])
        data = {_norm(str(p)): bytes(b) for p, b in zip(group["path"], group["bytes"], strict=True)}
        items = self.shards[shard]
        by_abs = {it.path: data[_norm(it.path)] for it in items if _norm(it.path) in data}
        rows, arrays = self.worker.run(shard, items, by_abs).encode()
        return {"shard": np.array([shard], np.int64), "rows": np.array([rows], dtype=object),
                "arrays": np.array([arrays], dtype=object)}


def run_ray(config: RunConfig, out: Path, shards: list[list[Item]], todo: list[int], done: Callable[[int, int], None],
            *, address: str | None = None, workers: int = 1, num_cpus: float | None = None, num_gpus: float | None = None,
            progress: bool = True) -> None:
    """Compute the shards in ``todo`` on Ray Data and commit each as it arrives."""
    if not todo:
        return
    ray = ray_init(address)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # polyviz's bar counts images; Ray's would interleave with it
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    if num_gpus is None:
        num_gpus = 1 if resources.get("GPU", 0) > 0 else 0
    if num_cpus is None:  # leave a CPU to Ray Data's read and shuffle tasks, or the actors starve them
        num_cpus = min(1.0, max(0.25, (resources.get("CPU", 1) - 1) / workers))
    from polyviz.runs.pipeline import ShardOutput

    paths, shard_of, empty = [], {}, []
    for k in todo:
        present = [it for it in shards[k] if os.path.isfile(it.path)]
        if not present:
            empty.append(k)
        for it in present:
            shard_of[_norm(it.path)] = k
            paths.append(_norm(it.path))
    for k in empty:  # no file to read: nothing for Ray to do, every image is skipped
        output = ShardOutput(k, [], np.zeros(0, np.int64), {},
                             [(it.index, it.path, f"images: no such file {it.path!r}") for it in shards[k]])
        write_shard(out, k, *output.encode())
        done(k, len(shards[k]))
    if not paths:
        return
    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.map_batches(_add_shard, fn_kwargs={"shard_of": shard_of}, batch_format="numpy")
    n_groups = len(todo) - len(empty)
    partitions = min(n_groups, max(2 * int(workers), n_groups // 16))  # Ray's default, 200, is a lot of tasks
    result = ds.groupby("shard", num_partitions=partitions).map_groups(
        _ShardActor, fn_constructor_args=(config, {k: shards[k] for k in todo}), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=int(workers)), num_cpus=num_cpus, num_gpus=num_gpus)
    seen: set[int] = set()
    for batch in result.iter_batches(batch_size=None, batch_format="numpy"):
        for k, rows, arrays in zip(batch["shard"], batch["rows"], batch["arrays"], strict=True):
            k = int(k)
            write_shard(out, k, bytes(rows), bytes(arrays))
            if k not in seen:
                seen.add(k)
                done(k, len(shards[k]))
