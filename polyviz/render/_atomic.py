"""Atomic output files: every file polyviz writes (PNGs, ``index.html``, ``.npz`` weights, JSON)
goes through :func:`atomic_write`.

The bytes go to a temporary file in the destination's own folder (``.NAME.XXXXXX.tmp``), which
then replaces the destination with :func:`os.replace`, one rename on the same file system. So:

- a reader (a browser refreshing ``index.html``, a script polling for a PNG) sees either the old
  file or the complete new one, never half a file; an interrupted or failed write leaves the old
  file as it was and removes its temporary file;
- a symbolic link planted at the destination (``index.html -> ~/.bashrc``) is replaced by a
  regular file: the rename acts on the link itself, never on what it points to;
- the new file gets the usual permissions (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.

The destination *folder* may itself be a symbolic link (``--out results`` where ``results`` links
to a data disk): it is the folder the user named, and the files are written inside its target.
No ``fsync``: the rename makes the write atomic for readers, not durable across a power cut.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from polyviz.errors import InputError

__all__ = ["atomic_write", "write_bytes", "write_text"]


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a binary file handle of a temporary file beside ``path``, then rename
    it onto ``path`` (see the module docstring). Missing parent folders are created. Returns the
    path. An ``InputError`` names the path when it is a folder or its folder cannot be written."""
    try:
        path = Path(path)
    except TypeError:
        raise InputError(f"path: expected a file path, got {type(path).__name__}") from None
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"path: {str(path)!r} is a directory; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"path: cannot write in folder {str(folder)!r} ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`), encoded as ``encoding``."""
    return write_bytes(path, text.encode(encoding))
