"""Shard files: Parquet (default) and WebDataset tar, written atomically and read back by row range.

Every row is one image with its metadata (:data:`COLUMNS`). Image bytes are stored exactly as imported
(the original file, or a lossless PNG for video frames and resized images), never re-encoded lossily.

- **Parquet**: one file per shard; row groups of at most ``row_group_rows`` rows or ``row_group_bytes``
  bytes, so a reader streams a shard one row group (a few MB) at a time. The image column is stored
  uncompressed (the bytes are compressed images already); the metadata columns use zstd.
- **WebDataset**: a plain tar per shard; sample ``<key>`` is ``<key>.json`` (metadata) followed by
  ``<key>.<ext>`` (the image bytes, ``ext`` from the image format). Headers carry no time or owner, so the
  same rows give the same bytes, and so the same sha256.

Writers go through :func:`detector.io.atomic_open`: a shard exists complete under its name, or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from detector.io import atomic_open

FORMATS = ("parquet", "webdataset")
SUFFIX = {"parquet": ".parquet", "webdataset": ".tar"}
# metadata columns, in order; "image" (binary) comes first in Parquet
COLUMNS = ("label", "source", "split", "generator", "group", "frame", "original_path", "sha256",
           "format", "width", "height", "resized")
META_COLUMNS = tuple(c for c in COLUMNS if c != "image")
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif",
        "PPM": "ppm", "JPEG2000": "jp2", "ICO": "ico", "TGA": "tga", "AVIF": "avif", "HEIF": "heif",
        "RAW": "raw"}


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("image", pa.binary()),
        ("label", pa.int8()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("generator", pa.string()),
        ("group", pa.string()),
        ("frame", pa.int32()),
        ("original_path", pa.string()),
        ("sha256", pa.string()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("resized", pa.bool_()),
    ])


def sha256_file(f: BinaryIO, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardLimits:
    row_group_rows: int = 256
    row_group_bytes: int = 32 << 20


class ShardWriter:
    """Write rows (dicts with ``image`` plus :data:`COLUMNS`) to one shard; ``close()`` publishes it.

    >>> with ShardWriter(path, "parquet") as w:  # doctest: +SKIP
    ...     w.write(row)
    """

    def __init__(self, path: Path, fmt: str, limits: ShardLimits = ShardLimits()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}; expected one of {FORMATS}")
        self.path = Path(path)
        self.fmt = fmt
        self.limits = limits
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._ctx = atomic_open(self.path, "wb")
        self._file = self._ctx.__enter__()
        self._pq = None
        self._tar = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            compression = {c: "zstd" for c in COLUMNS}
            compression["image"] = "none"
            self._pq = pq.ParquetWriter(self._file, _arrow_schema(), compression=compression,
                                        use_dictionary=["source", "split", "generator", "format"],
                                        write_statistics=["label", "frame", "width", "height"])
        else:
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def write(self, row: dict[str, Any]) -> None:
        if self._pq is not None:
            self._pending.append(row)
            self._pending_bytes += len(row["image"])
            if len(self._pending) >= self.limits.row_group_rows or self._pending_bytes >= self.limits.row_group_bytes:
                self._flush_group()
        else:
            key = f"{self.path.stem}-{self.rows:06d}"
            meta = {c: row[c] for c in COLUMNS}
            self._add_member(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
            self._add_member(f"{key}.{_EXT.get(row['format'], 'img')}", row["image"])
        self.rows += 1

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        self._tar.addfile(info, io.BytesIO(data))

    def end_group(self) -> None:
        """End the current Parquet row group here (a copy keeps its source's row groups, and so its
        shuffle units); nothing for a tar."""
        if self._pq is not None:
            self._flush_group()

    def _flush_group(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        schema = _arrow_schema()
        table = pa.Table.from_pydict({name: [r[name] for r in self._pending] for name in schema.names}, schema=schema)
        self._pq.write_table(table, row_group_size=len(self._pending))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        if self._pq is not None:
            self._flush_group()
            self._pq.close()
        else:
            self._tar.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        try:
            if self._pq is not None:
                self._pq.close()
            elif self._tar is not None:
                self._tar.close()
        except Exception:  # the temporary file is removed below whatever state the writer is in
            pass
        try:
            self._ctx.__exit__(exc_type or RuntimeError, exc or RuntimeError("aborted"), tb)
        except BaseException:  # atomic_open re-raises the exception it was given; we are cleaning up
            pass


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Unit:
    """A readable piece of a shard: a Parquet row group, or a whole tar."""

    shard: str  # path relative to the dataset root
    index: int  # row group index (0 for tar)
    rows: int  # rows in the unit


def shard_units(fs, path: str, shard: str, fmt: str, rows: int) -> list[Unit]:
    """The units of one shard. ``rows`` (from the manifest) is checked against the file."""
    if fmt == "webdataset":
        return [Unit(shard, 0, rows)]
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        md = pq.ParquetFile(f).metadata
        units = [Unit(shard, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    if sum(u.rows for u in units) != rows:
        raise ValueError(f"{shard}: {sum(u.rows for u in units)} rows in the file, {rows} in the manifest")
    return units


def read_meta(fs, path: str, fmt: str, columns: Sequence[str]) -> dict[str, list]:
    """Metadata columns of a whole shard (no image bytes read for Parquet; tar images are skipped)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read(columns=list(columns)).to_pydict()
    out: dict[str, list] = {c: [] for c in columns}
    for meta, _ in _iter_tar(fs, path, want_image=lambda i: False):
        for c in columns:
            out[c].append(meta[c])
    return out


def _iter_tar(fs, path: str, want_image) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    with fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        meta: dict[str, Any] | None = None
        index = 0
        for member in tar:
            if member.name.endswith(".json"):
                meta = json.loads(tar.extractfile(member).read())
                continue
            if meta is None:
                raise ValueError(f"{path}: tar member {member.name} has no metadata before it")
            data = tar.extractfile(member).read() if want_image(index) else None
            yield meta, data
            meta = None
            index += 1


def read_rows(fs, path: str, fmt: str, unit: Unit, rows: Sequence[int], columns: Sequence[str],
              cache: dict | None = None) -> list[dict[str, Any]]:
    """Rows ``rows`` (indices within ``unit``) as dicts with ``image`` bytes and ``columns``, in that order."""
    if not rows:
        return []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = None if cache is None else cache.get(path)
        if pf is None:
            pf = pq.ParquetFile(fs.open_input_file(path))
            if cache is not None:
                if len(cache) >= 4:  # a worker moves through shards; keep the few it is in open
                    cache.pop(next(iter(cache))).close()
                cache[path] = pf
        table = pf.read_row_group(unit.index, columns=["image", *columns])
        picked = table.take(list(rows)) if list(rows) != list(range(unit.rows)) else table
        data = picked.to_pydict()
        return [{k: data[k][i] for k in data} for i in range(picked.num_rows)]
    want = set(rows)
    got: dict[int, dict[str, Any]] = {}
    for i, (meta, data) in enumerate(_iter_tar(fs, path, want_image=want.__contains__)):
        if i in want:
            got[i] = {"image": data, **{c: meta[c] for c in columns}}
            if len(got) == len(want):
                break
    return [got[i] for i in rows]
