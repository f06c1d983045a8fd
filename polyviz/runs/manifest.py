"""The run's ``manifest.json``: what was done (settings, seed, inputs), with which versions, and
when. Its ``fingerprint`` decides whether a folder may be resumed: a rerun with other settings or
other inputs would mix numbers, so it is refused by name."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from polyviz.errors import InputError
from polyviz.runs.store import write_json

__all__ = ["versions", "check_resumable", "write_manifest"]


def versions(backend: str | None) -> dict[str, str | None]:
    import polyviz

    out: dict[str, str | None] = {"polyviz": polyviz.__version__, "numpy": np.__version__,
                                  "python": sys.version.split()[0], "platform": platform.platform()}
    if backend is not None:
        from polyviz.registry import backend_class

        try:
            out[backend] = backend_class(backend).framework_version()
        except Exception:  # noqa: BLE001 - a version is a record, not a requirement
            out[backend] = None
    for name in ("pyarrow", "ray"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", None)
    return out


def check_resumable(out: Path, fingerprint: dict[str, Any]) -> bool:
    """True when ``out`` holds an earlier run with the same fingerprint (resume it); False when
    it holds none; an InputError naming what differs otherwise."""
    path = out / "manifest.json"
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (ValueError, KeyError, OSError):
        raise InputError(f"out: {str(out)!r} holds an unreadable manifest.json; use another folder or overwrite=True") from None
    now = json.loads(json.dumps(fingerprint, default=str))
    if old != now:
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        raise InputError(f"out: {str(out)!r} holds a run with other {', '.join(diff)}; resume it with the same "
                         "settings, or use another folder or overwrite=True (--overwrite)")
    return True


def write_manifest(out: Path, fingerprint: dict[str, Any], engine: dict[str, Any], backend: str | None,
                   extra: dict[str, Any]) -> None:
    write_json(out / "manifest.json", {"fingerprint": fingerprint, "engine": engine, "versions": versions(backend),
                                       "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra})
