"""Atomic writes: nothing written is ever left half-written.

Each writer writes to a temporary file in the destination folder, flushes it to disk, then renames it
over the destination (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, private: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on error it is removed.

    The file gets the mode ``open()`` would give it (0666 less the umask), or 0600 when ``private``
    (a secret is then never readable by others, not even for an instant).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if not private:  # mkstemp creates 0600; results and datasets are shared
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_text(path: str | Path, text: str, *, private: bool = False) -> bool:
    """Write ``text`` to ``path`` only if nothing is there yet: complete or not at all, and never over a
    file another process created meanwhile (two first runs must not end up with two tokens). Returns
    False, writing nothing, when ``path`` exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            if not private:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike a rename, fails if the name exists
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> None:
    with atomic_open(path, "wb", private=private) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _umask() -> int:
    """The process umask, read without changing it (os.umask(0) would open a window for other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # no /proc (macOS): set a strict mask for the instant it takes to read
    os.umask(mask)
    return mask
