"""``polyviz.run(...)``: explain and score a whole data set, streaming, resumable, on one machine
or a Ray cluster (see :mod:`polyviz.runs`)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyviz.errors import InputError
from polyviz.runs.engines import ENGINES
from polyviz.runs.manifest import check_resumable, write_manifest
from polyviz.runs.sources import Item, inputs_digest, list_inputs, shards_of
from polyviz.runs.spec import ModelSpec, RunConfig, parse_named
from polyviz.runs.store import done_shards, finalize

__all__ = ["run", "RunResult"]


@dataclass
class RunResult:
    """What a run did: the output folder, images, rows written, the skipped images (index, path,
    message), the shards computed now and found done, the time and the throughput of this call."""

    out: Path
    images: int
    rows: int
    skipped: list[tuple[int, str, str]]
    computed_shards: int
    resumed_shards: int
    seconds: float
    summary: Path | None

    computed_images: int = 0

    @property
    def images_per_second(self) -> float:
        """Images computed by this call per second of its wall time (reading, model loading, writing)."""
        return self.computed_images / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        return (f"polyviz run: {self.images} images, {self.rows} rows, {len(self.skipped)} skipped; "
                f"{self.computed_images} images computed in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s), {self.resumed_shards} shards already done; "
                f"results in {self.out / 'results.parquet'}")


def _model_spec(model: Any, backend: str | None, size: int | None, preprocess: str | None,
                weights: str | None, model_seed: int | None, arch: str | None, trust_pickle: bool) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, (str, Path)):
        return ModelSpec(str(model), backend, weights, size, model_seed, arch, trust_pickle, preprocess)
    if model is None:
        raise InputError("model: give a model name or file (demo, vgg16, model.keras), a model or a factory")
    return ModelSpec(backend=backend, size=size, preprocess=preprocess, obj=model)


def run(
    inputs: str | Path | list[str | Path],
    out: str | Path,
    *,
    model: Any = "demo",
    methods: list[Any] | tuple[Any, ...] = ("gradcam",),
    metrics: list[Any] | tuple[Any, ...] = (),
    masks: str | Path | None = None,
    target: str = "pred",
    seed: int = 0,
    shard_size: int = 64,
    batch_size: int | None = None,
    engine: str = "inprocess",
    address: str | None = None,
    workers: int = 1,
    num_gpus: float | None = None,
    backend: str | None = None,
    size: int | None = None,
    preprocess: str | None = None,
    weights: str | None = None,
    model_seed: int | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    store_arrays: bool = True,
    summary: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> RunResult:
    """Explain every image of ``inputs`` with every method, score each explanation with every
    metric, and write the results table, the sharded attributions, the manifest and a summary page
    to ``out`` (layout: :mod:`polyviz.runs.store`).

    ``inputs``: a folder, a glob pattern, a ``.csv``/``.parquet`` manifest (``path`` column, optional
    ``label``, ``mask``, ``box``) or a list of those; ``masks``: a folder of same-named mask images.
    ``model``: a name or file for :func:`polyviz.loading.load_model` (with ``backend``, ``size``,
    ``weights``, ``model_seed``, ``arch``, ``trust_pickle``), a model object or a zero-argument
    factory (``size`` then required; a factory or name is what a Ray worker can rebuild cheaply).
    ``methods`` / ``metrics``: names, ``'name:option=value,...'`` or ``(name, {options})``; metrics
    are looked up in :data:`polyviz.metrics.METRICS` and given what their signature asks for (a
    metric that needs masks is left empty (NaN) without them). ``target``: ``'pred'`` (the predicted
    class) or ``'label'``. ``seed``: shard k's noise comes from ``SeedSequence([seed, k])``, so any
    engine, worker count or resumption gives the same numbers. ``shard_size``: images per unit of
    work (and per Ray batch): memory holds one shard. ``batch_size``: passes per backend call.
    ``engine``: ``'inprocess'`` or ``'ray'`` (``address``: join a cluster; ``workers``: actors;
    ``num_gpus`` per actor, default 1 when the cluster has GPUs). A folder holding a run with the
    same settings is resumed: only missing shards are computed. Bad images are skipped and listed
    (``RunResult.skipped``, ``OUT/skipped.csv``).
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        raise InputError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers: expected a positive int, got {workers!r}")
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(metrics, str):
        metrics = [metrics]
    config = RunConfig(_model_spec(model, backend, size, preprocess, weights, model_seed, arch, trust_pickle),
                       [parse_named(m, "methods") for m in methods], [parse_named(m, "metrics") for m in metrics],
                       target, seed, shard_size, batch_size, bool(store_arrays)).check()
    items = list_inputs(inputs, masks)
    try:
        folder = Path(out)
    except TypeError:
        raise InputError(f"out: expected a folder path, got {type(out).__name__}") from None
    if folder.exists() and not folder.is_dir():
        raise InputError(f"out: {str(folder)!r} exists and is not a folder")
    if overwrite and folder.exists():
        for name in ("shards", "summary"):
            shutil.rmtree(folder / name, ignore_errors=True)
        for name in ("manifest.json", "results.parquet", "skipped.csv"):
            (folder / name).unlink(missing_ok=True)
    fingerprint = config.fingerprint(inputs_digest(items))
    resumed = check_resumable(folder, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    shards = shards_of(items, config.shard_size)
    done = done_shards(folder) if resumed else set()
    todo = [k for k in range(len(shards)) if k not in done]
    engine_info = {"engine": engine, "address": address, "workers": workers, "num_gpus": num_gpus}
    write_manifest(folder, fingerprint, engine_info, config.model.backend, {"images": len(items),
                   "shards": len(shards), "status": "running", "command": command})
    computed = _execute(config, folder, shards, todo, engine, address, workers, num_gpus, progress, len(items),
                        len(items) - sum(len(shards[k]) for k in todo))
    n_rows, skipped = finalize(folder, len(shards), [m for m, _ in config.methods])
    page = None
    if summary:
        from polyviz.runs.summary import write_summary

        page = write_summary(folder, config, items)
    seconds = time.perf_counter() - started
    result = RunResult(folder, len(items), n_rows, skipped, len(todo), len(done), seconds, page, computed)
    write_manifest(folder, fingerprint, engine_info, config.model.backend, {
        "images": len(items), "shards": len(shards), "status": "complete", "command": command, "rows": n_rows,
        "skipped": len(skipped), "seconds": round(seconds, 3), "images_per_second": round(result.images_per_second, 3),
        "computed_shards": len(todo), "resumed_shards": len(done)})
    return result


def _execute(config: RunConfig, folder: Path, shards: list[list[Item]], todo: list[int], engine: str,
             address: str | None, workers: int, num_gpus: float | None, progress: bool, total: int,
             initial: int) -> int:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=initial, unit="img", desc=f"polyviz run ({engine})", file=sys.stderr,
                   smoothing=0.1, dynamic_ncols=True)
    count = [0]

    def done(shard: int, n: int) -> None:
        count[0] += n
        if bar is not None:
            bar.update(n)

    try:
        if engine == "ray":
            from polyviz.runs.engines.ray_data import run_ray

            run_ray(config, folder, shards, todo, done, address=address, workers=workers, num_gpus=num_gpus,
                    progress=progress)
        else:
            from polyviz.runs.engines.inprocess import run_inprocess

            run_inprocess(config, folder, shards, todo, done)
    finally:
        if bar is not None:
            bar.close()
    return count[0]
