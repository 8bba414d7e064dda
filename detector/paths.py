"""Paths and storage URIs: one place that knows how to join them."""

from __future__ import annotations


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
