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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyviz", description="See what a convolutional network sees.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="installed backends, their versions and capabilities")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
