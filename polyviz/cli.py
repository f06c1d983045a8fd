"""The ``polyviz`` command. ``polyviz info``: installed backends, their framework versions and
capabilities."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

import polyviz
from polyviz.errors import PolyvizError
from polyviz.registry import EXTRAS, available_backends

__all__ = ["main"]


def info_rows() -> list[tuple[str, str, str, str]]:
    """(backend, module, framework version or 'not installed (pip install ...)', capabilities)."""
    rows = []
    for name, cls in available_backends().items():
        try:
            version = cls.framework_version()
        except Exception as exc:  # a broken framework install must not break `polyviz info`
            version = None
            cls_error = f"error: {exc}"
        else:
            cls_error = ""
        if version is None:
            version = cls_error or f"not installed (pip install '{EXTRAS.get(name, 'polyviz[' + name + ']')}')"
        rows.append((name, cls.__module__, version, ", ".join(sorted(cls.capabilities))))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    print(f"polyviz {polyviz.__version__} (numpy {np.__version__}, python {sys.version.split()[0]})")
    rows = info_rows()
    if not rows:
        print("no backends installed: pip install 'polyviz[torch]' or 'polyviz[keras]'")
        return 1
    for name, module, version, caps in rows:
        print(f"\nbackend {name}  ({module})")
        print(f"  framework:    {version}")
        print(f"  capabilities: {caps}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from polyviz import bench, models

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    # torch before keras: torchvision's triton must load before TensorFlow in one process
    backends.sort(key=lambda b: {"torch": 0, "keras": 1}.get(b, 2))
    methods = bench.QUICK_METHODS if args.quick else bench.DEFAULT_METHODS
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    size = 64 if args.quick and args.size is None else (args.size or 224)
    repeat = 1 if args.quick else args.repeat
    x = np.random.default_rng(0).random((args.batch, size, size, 3)).astype(np.float32)
    rows = []
    for name in backends:
        if args.model != "vgg16":
            raise PolyvizError(f"--model: expected 'vgg16', got {args.model!r}")
        spec_input = (size, size, 3)
        model = models.vgg16(name, seed=0) if size == 224 else _small_vgg(name, spec_input)
        rows += bench.run_bench(model, x, methods, repeat=repeat, batch_size=args.batch_size, peers=args.peers,
                                progress=not args.no_progress)
    print(bench.markdown(rows))
    if args.json:
        import platform

        meta = {"machine": platform.machine(), "processor": platform.processor(), "size": size, "batch": args.batch,
                "repeat": repeat, "polyviz": polyviz.__version__}
        with open(args.json, "w") as fh:
            fh.write(bench.to_json(rows, meta))
    return 0


def _small_vgg(backend: str, input_shape: tuple[int, int, int]) -> object:
    """VGG16's layer pattern at another input size (a 512-unit head), seeded: for quick runs."""
    from polyviz.models.spec import VGG_CONFIGS, random_weights, vgg_spec
    from polyviz.registry import backend_class

    spec = vgg_spec(VGG_CONFIGS["vgg16"], input_shape=input_shape, dense=(512, 512), classes=1000)
    model, _ = backend_class(backend).build(spec, random_weights(spec, 0))
    return model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyviz", description="See what a convolutional network sees.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="installed backends, their versions and capabilities")
    info.set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="time every method against its floor (and the peers with --peers)")
    bench.add_argument("--backend", default="torch,keras", help="comma-separated backends (default torch,keras)")
    bench.add_argument("--methods", default="", help="comma-separated methods (default: the main ones)")
    bench.add_argument("--model", default="vgg16", help="vgg16 (seeded random weights)")
    bench.add_argument("--size", type=int, default=None, help="input size in pixels (default 224; 64 with --quick)")
    bench.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    bench.add_argument("--batch-size", type=int, default=32, help="passes per backend call inside a method")
    bench.add_argument("--repeat", type=int, default=5, help="timed runs per method after a warm-up")
    bench.add_argument("--peers", action="store_true", help="also time Captum, pytorch-grad-cam, tf-keras-vis")
    bench.add_argument("--json", default="", help="write the rows as JSON to this file")
    bench.add_argument("--quick", action="store_true", help="smoke run: small input, few methods, one repeat")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our output
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PolyvizError as exc:
        if args.debug:
            raise
        print(f"polyviz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
