"""Atomic writes: nothing written is ever left half-written.

Each writer writes to a temporary file in the destination folder, flushes it to disk, then renames it
over the destination (``os.replace`` is atomic on POSIX within one file system). A write that fails, a full
disk's included, leaves no temporary file behind, and a full disk is raised as ``NoSpaceError``: the file
being written, and the space left where it was going.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, BinaryIO


class NoSpaceError(OSError):
    """A write failed because its file system is full. ``str()``: one line naming the file being written and
    the space on its file system; with ``then``, what to do once space is freed."""

    def __init__(self, path: str | Path, *, space: str, mount: str, then: str | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.space, self.mount, self.then = space, mount, then

    @classmethod
    def at(cls, path: str | Path, then: str | None = None) -> "NoSpaceError":
        """The error for ``path``, with its file system's space as it is now (read it before freeing any)."""
        mount = mount_point(Path(path))
        return cls(path, space=disk_space(mount), mount=str(mount), then=then)

    @classmethod
    def of(cls, error: OSError, then: str | None = None) -> "NoSpaceError":
        """``error`` (an out-of-space OSError, perhaps from another library) as a ``NoSpaceError``."""
        if isinstance(error, NoSpaceError):
            return cls(error.filename, space=error.space, mount=error.mount, then=then or error.then)
        return cls.at(error.filename or os.getcwd(), then)

    def __str__(self) -> str:
        line = f"no space left on device writing {self.filename} ({self.space})"
        return f"{line}; free space on {self.mount}, then {self.then}" if self.then else line


def no_space(error: BaseException | None) -> OSError | None:
    """The out-of-space ``OSError`` behind ``error``, if any. Libraries wrap it: ``torch.save`` raises a
    RuntimeError ("unexpected pos") while handling the OSError its file's write raised."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would, for a path not created yet)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def disk_space(path: str | Path) -> str:
    """``"1.2 MiB free of 12 MiB on /mnt/x"``: what a user needs to see next to a full-disk error."""
    st = os.statvfs(path)
    return f"{_size(st.f_bavail * st.f_frsize)} free of {_size(st.f_blocks * st.f_frsize)} on {path}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, private: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on error it is removed.

    The file gets the mode ``open()`` would give it (0666 less the umask), or 0600 when ``private``
    (a secret is then never readable by others, not even for an instant). A full file system, in any of the
    writes, the flush, the fsync or the close, raises ``NoSpaceError`` for ``path``.
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
    except BaseException as e:
        full = no_space(e) is not None and not isinstance(e, NoSpaceError)
        space = NoSpaceError.at(path) if full else None  # before the temporary file's blocks are freed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if space is not None:
            raise space from e
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
