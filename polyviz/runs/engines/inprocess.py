"""The in-process engine: one shard at a time in this process. Memory holds one shard's images,
attributions and rows (``shard_size`` bounds it), whatever the number of images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from polyviz.runs.pipeline import ShardWorker
from polyviz.runs.sources import Item
from polyviz.runs.spec import RunConfig
from polyviz.runs.store import write_shard

__all__ = ["run_inprocess"]


def run_inprocess(config: RunConfig, out: Path, shards: list[list[Item]], todo: list[int],
                  done: Callable[[int, int], None]) -> None:
    """Compute and commit every shard in ``todo``; ``done(shard, n_images)`` after each."""
    if not todo:
        return
    worker = ShardWorker(config)
    for k in todo:
        output = worker.run(k, shards[k])
        rows, arrays = output.encode()
        write_shard(out, k, rows, arrays)
        done(k, len(shards[k]))
