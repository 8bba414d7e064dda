"""Paths and storage URIs: one place that knows how to join them.

A path read from a file (a manifest's shard, a receipt) is data someone else may have written: it is
joined to its root only by :func:`safe_join`, which refuses anything but a plain relative path inside that
root, so that a teammate's manifest cannot make a command read or overwrite files elsewhere.
"""

from __future__ import annotations

import re

# "C:" or "C:\" at the start of a path: absolute on Windows, and never written by `detector prepare`
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """A path read from a file is absolute, not normalised or leads outside its root; the message names
    the file, the field and the path."""


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...``: anything pyarrow opens through a file system."""
    return "://" in str(path)


def uri_join(base: str, *parts: str) -> str:
    """``base/part/...``, keeping a URI's query (``s3://b/p?endpoint_override=...``) at the end.

    >>> uri_join("s3://bucket/runs?scheme=http", "demo", "search")
    's3://bucket/runs/demo/search?scheme=http'
    """
    path, sep, query = str(base).partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def _unsafe_reason(relative: object) -> str | None:
    if not isinstance(relative, str) or not relative:
        return "is not a non-empty string"
    if relative.startswith(("/", "\\")) or _DRIVE.match(relative):
        return "is absolute"
    if is_uri(relative):
        return "is a URI"
    if "\\" in relative or "\x00" in relative or "?" in relative or "#" in relative:
        return "holds a backslash, NUL, '?' or '#'"
    parts = relative.split("/")
    if ".." in parts:
        return "leads outside its root ('..')"
    if "" in parts or "." in parts:
        return "is not normalised (empty or '.' parts)"
    return None


def safe_join(root: str, relative: object, *, where: str) -> str:
    """``root/relative`` for a ``relative`` path read from a file; :class:`UnsafePathError` unless it is a
    plain relative POSIX path (no leading ``/``, no ``..``, ``.`` or empty parts, no URI) inside ``root``.

    ``root`` is a local folder, a path inside a pyarrow file system, or a URI (the query stays at the end);
    ``where`` names the file and field the path came from, for the error.

    >>> safe_join("s3://bucket/data?scheme=http", "shards/val/val-00000.parquet", where="manifest.json: shards[0].path")
    's3://bucket/data/shards/val/val-00000.parquet?scheme=http'
    >>> safe_join("/data", "../outside/val.parquet", where="manifest.json: shards[0].path")
    Traceback (most recent call last):
    ...
    detector.paths.UnsafePathError: manifest.json: shards[0].path '../outside/val.parquet' leads outside its root ('..'); expected a relative path inside /data
    """
    reason = _unsafe_reason(relative)
    if reason is not None:
        raise UnsafePathError(f"{where} {relative!r} {reason}; expected a relative path inside {root}")
    assert isinstance(relative, str)
    root = str(root)
    if is_uri(root):
        return uri_join(root, relative)
    return f"{root.rstrip('/')}/{relative}" if root else relative
