"""``polyviz run``: the dataset runner on the command line (:func:`polyviz.runs.run`). Exit codes
as the other commands: 0 done, 1 done with skipped images, 2 error, 130 interrupted (rerun the same
command to resume)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_run_command", "cmd_run"]


def _names(values: list[str] | None, lists: str | None) -> list[str]:
    out = [v for v in (lists or "").split(",") if v.strip()] if lists else []
    return [*[v.strip() for v in out], *(values or [])]


def cmd_run(args: argparse.Namespace) -> int:
    from polyviz.errors import InputError
    from polyviz.runs import run

    methods = _names(args.method, args.methods) or ["gradcam"]
    metrics = _names(args.metric, args.metrics)
    if args.num_gpus is not None and args.num_gpus < 0:
        raise InputError(f"--num-gpus: expected a number >= 0, got {args.num_gpus}")
    result = run(args.inputs, args.out, model=args.model, methods=methods, metrics=metrics, masks=args.masks,
                 target=args.target, seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size,
                 engine=args.engine, address=args.address, workers=args.workers, num_gpus=args.num_gpus,
                 backend=args.backend, size=args.size, preprocess=args.preprocess, weights=args.weights,
                 model_seed=args.model_seed, arch=args.arch, trust_pickle=args.trust_pickle,
                 store_arrays=not args.no_arrays, summary=not args.no_summary, overwrite=args.overwrite,
                 progress=not args.no_progress, command=list(sys.argv))
    for _, _, message in result.skipped:
        print(f"polyviz: skipped: {message}", file=sys.stderr)
    print(result.line(), flush=True)
    return 1 if result.skipped else 0


def add_run_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``polyviz run`` on the ``polyviz`` parser's sub-parsers."""
    from polyviz.cli import _model_options
    from polyviz.preprocess import PRESETS

    p = sub.add_parser("run", parents=[common],
                       help="explain and score a whole data set: Parquet table, sharded arrays, summary page; "
                            "resumable; in-process or on Ray (--engine ray)")
    p.add_argument("inputs", nargs="+", help="image folders, glob patterns ('data/*.jpg') or manifests (.csv, .parquet "
                                             "with a path column, optional label, mask, box columns)")
    p.add_argument("--out", required=True, help="output folder; rerunning the same command resumes it")
    _model_options(p)
    p.add_argument("--model-seed", type=int, default=None, help="vgg16/vgg19 with numpy-drawn weights of this seed")
    p.add_argument("--preprocess", default=None, choices=PRESETS, help="how images in [0, 1] become the model's input")
    p.add_argument("--backend", default=None, help="torch or keras (default: the file's framework, else torch)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default gradcam)")
    p.add_argument("--method", action="append", default=None,
                   help="a method with options, repeatable: integrated_gradients:n_steps=50")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (polyviz.metrics.METRICS)")
    p.add_argument("--metric", action="append", default=None, help="a metric with options, repeatable: deletion_auc:step=64")
    p.add_argument("--masks", default=None, help="folder of object masks named as the images (pointing game)")
    p.add_argument("--target", default="pred", choices=("pred", "label"),
                   help="explain the predicted class (default) or the manifest's label")
    p.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
    p.add_argument("--shard-size", type=int, default=64,
                   help="images per unit of work, written atomically, and per Ray batch (default 64)")
    p.add_argument("--batch-size", type=int, default=None, help="passes per backend call inside a method")
    p.add_argument("--engine", default="inprocess", choices=("inprocess", "ray"), help="default inprocess")
    p.add_argument("--address", default=None, help="Ray: join this cluster (auto, ray://head:10001); default: a local Ray")
    p.add_argument("--workers", type=int, default=1, help="Ray: model-holding actors (concurrency, default 1)")
    p.add_argument("--num-gpus", type=float, default=None, help="Ray: GPUs per actor (default 1 when the cluster has GPUs)")
    p.add_argument("--no-arrays", action="store_true", help="do not store attributions (table and summary only)")
    p.add_argument("--no-summary", action="store_true", help="no summary page")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
