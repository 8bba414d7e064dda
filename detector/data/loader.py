"""Read shards back for training and evaluation: a torch ``IterableDataset`` and a ``DataLoader`` factory.

``data`` is a dataset folder written by ``detector prepare``: a local path or any URI pyarrow's file
systems understand (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///...``).

How an epoch is cut (the same on every rank, so no two ranks read the same row):

1. The split's units (Parquet row groups; whole tar files) are listed from the manifest and the files'
   footers; ``sources`` / ``generators`` filters keep the matching rows of each unit.
2. With ``shuffle`` (default: on for ``train=True``), the unit order is permuted by ``(seed, epoch)``.
3. The resulting row sequence is cut into ``world_size`` contiguous ranges, one per rank. With ``pad``
   (default) the ranges are equal: when the rows do not divide evenly the sequence wraps around, so every
   rank yields ``ceil(N / world_size)`` rows and a distributed step never waits on a rank that ran out
   (like ``DistributedSampler``; training). Without, each row is in exactly one range, whose sizes differ
   by at most one (evaluation, whose sums are added up over the ranks).
4. A rank's range is cut again into one contiguous range per DataLoader worker (sizes differ by at most 1).
5. Each worker reads its rows unit by unit and, when shuffling, mixes them in a shuffle buffer (up to
   ``shuffle_buffer`` rows and 256 MB of encoded images) seeded by ``(seed, epoch, rank, worker)``.

So with one rank every row is seen exactly once per epoch whatever the number of workers, and the order
changes every epoch. Call ``set_epoch(epoch)`` before each epoch (or let :class:`ShardLoader` count). The
options named here are a :class:`ReadSpec`'s.

Shard checksums (sha256 from the manifest) are verified when the dataset is built, once per process per
file version; ``ReadSpec(verify=False)`` skips that (e.g. remote data already verified elsewhere).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detector.data.images import decode_image
from detector.data.shards import Unit, read_meta, read_rows, sha256_file, shard_units
from detector.data.transforms import ClassificationPresetEval, ClassificationPresetTrain
from detector.distributed import rank_and_world
from detector.paths import safe_join, uri_join

MANIFEST = "manifest.json"
META_KEYS = ("source", "generator", "sha256", "original_path", "split", "group", "frame")
_SHUFFLE_BYTES = 256 << 20


class ShardChecksumError(ValueError):
    """A shard's bytes do not match the sha256 the manifest recorded."""


# ------------------------------------------------------------------------------------- file systems
def _resolve(data: str):
    """(pyarrow FileSystem, root path inside it) for a local path or a URI."""
    from pyarrow import fs as pafs

    data = str(data)
    if "://" in data:
        filesystem, root = pafs.FileSystem.from_uri(data)
        return filesystem, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(data)


def manifest_name(data: str) -> str:
    """The manifest's location as errors show it (a URI's query stays at the end)."""
    return uri_join(data, MANIFEST)


def shard_file(data: str, root: str, shard: dict[str, Any], index: int | None = None) -> str:
    """Where a manifest's shard lives under ``root`` (the dataset's root inside its file system); refuses
    a shard path that is absolute or leads outside the dataset (a manifest is data someone else may
    have written)."""
    field = f"shards[{index}].path" if index is not None else "shard path"
    return safe_join(root, shard.get("path") if isinstance(shard, dict) else None,
                     where=f"{manifest_name(data)}: {field}")


def _read_bytes(data: str, relative: str) -> bytes:
    filesystem, root = _resolve(data)
    path = safe_join(root, relative, where=f"{data}: file")
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{data}: no {relative}; run `detector prepare --out {data} ...` first "
                                "(an import that did not finish has no manifest)") from None


def read_manifest(data: str) -> dict[str, Any]:
    """The dataset's manifest.json as a dict (counts, shards, rejected, duplicates, options)."""
    try:
        manifest = json.loads(_read_bytes(data, MANIFEST))
    except json.JSONDecodeError as e:
        raise ValueError(f"{manifest_name(data)}: not valid JSON ({e})") from None
    for key in ("splits", "shards", "format"):
        if key not in manifest:
            raise ValueError(f"{manifest_name(data)}: missing key {key!r}; not written by `detector prepare`?")
    if not isinstance(manifest["shards"], list):
        raise ValueError(f"{manifest_name(data)}: shards is not a list")
    for i, shard in enumerate(manifest["shards"]):
        shard_file(data, data, shard, i)  # every path checked before any is used
    return manifest


def manifest_sha256(data: str) -> str:
    """sha256 of manifest.json's bytes: identifies the exact data a model was trained on."""
    return hashlib.sha256(_read_bytes(data, MANIFEST)).hexdigest()


_VERIFIED: dict[tuple[str, str, int, int], str] = {}


def verify_shard(filesystem, path: str, expected: str, *, name: str = "") -> None:
    """Raise :class:`ShardChecksumError` unless the file's sha256 is ``expected`` (cached per file version)."""
    info = filesystem.get_file_info(path)
    mtime = info.mtime_ns or 0
    key = (filesystem.type_name, path, info.size or 0, mtime)
    if _VERIFIED.get(key) == expected:
        return
    with filesystem.open_input_stream(path) as f:
        actual = sha256_file(f)
    if actual != expected:
        raise ShardChecksumError(f"{name or path}: sha256 {actual} does not match the manifest ({expected}); "
                                 "the shard changed or is damaged; re-run `detector prepare`")
    _VERIFIED[key] = actual


def _planar(data: bytes, size: int, *, name: str) -> torch.Tensor:
    """The uint8 (3, size, size) tensor of a pixel row's bytes (a writable copy)."""
    if len(data) != 3 * size * size:
        raise ValueError(f"{name}: {len(data)} bytes of pixels, expected 3x{size}x{size} = {3 * size * size}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).view(3, size, size)


@dataclass(frozen=True)
class _Piece:
    unit: Unit
    rows: tuple[int, ...] | None  # row indices within the unit that pass the filters; None = all

    @property
    def n(self) -> int:
        return self.unit.rows if self.rows is None else len(self.rows)


def split_range(n: int, parts: int, part: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` contiguous ranges of ``range(n)``; sizes differ by at most one."""
    return part * n // parts, (part + 1) * n // parts


@dataclass(frozen=True)
class ReadSpec:
    """How a split is read: which rows, in which order, decoded how. :class:`ShardDataset` and
    :func:`build_loader` take one beside the dataset and the split.

    ``train``: random horizontal flips (``hflip_prob``) and a new shuffle every epoch (``shuffle``: None
    follows ``train``; rows mixed in a buffer of up to ``shuffle_buffer`` rows); ``seed`` picks the shuffles
    and the flips. ``sources`` / ``generators``: only rows of these. ``with_meta``: each row's
    :data:`META_KEYS` too. ``verify``: check the shards' sha256 first. ``jpeg_draft``: decode large JPEGs
    at a reduced scale (:func:`~detector.data.images.decode_image`; predict must then do the same).
    ``pad``: every rank yields as many rows (training), or each row once over all ranks (False: evaluation).
    """

    image_size: int = 224
    train: bool = False
    seed: int = 0
    sources: tuple[str, ...] | None = None
    generators: tuple[str, ...] | None = None
    with_meta: bool = False
    verify: bool = True
    shuffle: bool | None = None
    hflip_prob: float = 0.5
    shuffle_buffer: int = 1024
    jpeg_draft: bool = False
    pad: bool = True

    def __post_init__(self) -> None:
        for name in ("sources", "generators"):  # a list is welcome; held as a tuple, so specs compare and hash
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


# ------------------------------------------------------------------------------------------ dataset
class ShardDataset(IterableDataset):
    """Rows of one split as ``(image FloatTensor[3, S, S], label int)``, or with ``with_meta=True``
    ``(image, label, meta)`` where ``meta`` maps :data:`META_KEYS` to strings.

    ``len(ds)`` is the number of rows this rank yields per epoch, over all its DataLoader workers:
    ``ceil(N / world_size)`` with ``pad`` (``N`` with one rank), its own share of the ``N`` without.
    ``rank`` / ``world_size`` default to the process group's (``detector.distributed``).

    >>> ds = ShardDataset("data/demo", "train", ReadSpec(image_size=64, train=True))  # doctest: +SKIP
    >>> ds.set_epoch(1); image, label = next(iter(ds))  # doctest: +SKIP
    """

    def __init__(self, data: str, split: str, spec: ReadSpec = ReadSpec(), *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.pad = spec.pad
        self.data = str(data)
        self.jpeg_draft = spec.jpeg_draft
        self.split = split
        self.image_size = image_size = spec.image_size
        self.train = spec.train
        self.seed = spec.seed
        self.with_meta = spec.with_meta
        self.shuffle = spec.train if spec.shuffle is None else spec.shuffle
        self.shuffle_buffer = max(1, spec.shuffle_buffer)
        self.epoch = 0
        env_rank, env_world = rank_and_world()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.transform = (ClassificationPresetTrain(image_size=image_size, hflip_prob=spec.hflip_prob) if spec.train
                          else ClassificationPresetEval(image_size=image_size))
        manifest = read_manifest(self.data)
        self.format = manifest["format"]
        # a dataset from `detector pixels`: rows are already decoded and resized
        self.pixels: int | None = manifest["pixels"]["size"] if "pixels" in manifest else None
        if self.pixels is not None and self.pixels != image_size:
            raise ValueError(f"{manifest_name(self.data)}: holds images decoded at {self.pixels}x{self.pixels} "
                             f"(pixels.size), not the {image_size}x{image_size} asked for; derive one at that size "
                             f"with `detector pixels {manifest['pixels']['from']['data']} --size {image_size}`")
        if self.pixels is not None and spec.jpeg_draft:
            raise ValueError(f"{self.data}: jpeg_draft has no effect on a pixel dataset (nothing is decoded)")
        if split not in manifest["splits"]:
            raise ValueError(f"{self.data}: no split {split!r}; the manifest has {', '.join(manifest['splits'])}")
        known = set(manifest["splits"][split])
        if spec.sources is not None:
            unknown = sorted(set(spec.sources) - known)
            if unknown:
                raise ValueError(f"{self.data}: no source(s) {', '.join(unknown)} in this dataset; it has "
                                 f"{', '.join(sorted(known))}")
        self.sources, self.generators = spec.sources, spec.generators
        filesystem, root = _resolve(self.data)
        shards = [(i, s) for i, s in enumerate(manifest["shards"]) if s["split"] == split
                  and (self.sources is None or any(s["sources"].get(src) for src in self.sources))]
        # relative shard path -> its file, checked once: workers read only these
        self._files = {s["path"]: shard_file(self.data, root, s, i) for i, s in shards}
        if spec.verify:
            for _, s in shards:
                verify_shard(filesystem, self._files[s["path"]], s["sha256"], name=f"{self.data}/{s['path']}")
        self._pieces: list[_Piece] = []
        for _, s in shards:
            path = self._files[s["path"]]
            units = shard_units(filesystem, path, s["path"], self.format, s["rows"])
            keep = self._filter(filesystem, path) if (self.sources or self.generators) else None
            start = 0
            for u in units:
                rows = None if keep is None else tuple(i - start for i in keep[bisect.bisect_left(keep, start):
                                                                                 bisect.bisect_left(keep, start + u.rows)])
                start += u.rows
                if rows or (rows is None and u.rows):  # a shard whose inputs were all rejected has no rows
                    self._pieces.append(_Piece(u, rows))
        self.total = sum(p.n for p in self._pieces)
        if self.total == 0:
            raise ValueError(f"{self.data}: split {split!r} has no rows" +
                             (f" for sources={list(self.sources or [])} generators={list(self.generators or [])}"
                              if self.sources or self.generators else ""))

    def _filter(self, filesystem, path: str) -> list[int]:
        meta = read_meta(filesystem, path, self.format, ["source", "generator"])
        return [i for i, (src, gen) in enumerate(zip(meta["source"], meta["generator"]))
                if (self.sources is None or src in self.sources)
                and (self.generators is None or (gen or "") in self.generators)]

    # -- epoch bookkeeping ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch's shuffle; call before iterating (DataLoader workers copy it at start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.rows_per_rank

    @property
    def rows_per_rank(self) -> int:
        return self._rank_range()[1]

    def _rank_range(self) -> tuple[int, int]:
        """(first position, rows) of this rank's range in the epoch's row sequence (positions past the end
        wrap around to the start: only with ``pad``)."""
        if self.pad:
            per_rank = math.ceil(self.total / self.world_size)
            return self.rank * per_rank, per_rank
        lo, hi = split_range(self.total, self.world_size, self.rank)
        return lo, hi - lo

    def worker_rows(self, worker: int, num_workers: int) -> int:
        """How many rows DataLoader worker ``worker`` of ``num_workers`` yields per epoch on this rank."""
        lo, hi = split_range(self.rows_per_rank, num_workers, worker)
        return hi - lo

    def _piece_order(self) -> list[_Piece]:
        order = list(self._pieces)
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}:units").shuffle(order)
        return order

    def _spans(self, worker: int, num_workers: int) -> Iterator[tuple[_Piece, int, int]]:
        """(piece, lo, hi) row spans of this rank's and worker's range, in the epoch's order."""
        order = self._piece_order()
        starts = [0]
        for p in order:
            starts.append(starts[-1] + p.n)
        first, rows = self._rank_range()
        w_lo, w_hi = split_range(rows, num_workers, worker)
        lo, hi = first + w_lo, first + w_hi
        # positions past the end wrap to the start (only when ranks do not divide the rows evenly)
        ranges = [(lo, min(hi, self.total))] if lo < self.total else []
        if hi > self.total:
            ranges.append((max(lo, self.total) - self.total, hi - self.total))
        for a, b in ranges:
            i = bisect.bisect_right(starts, a) - 1
            while a < b:
                piece_lo = a - starts[i]
                piece_hi = min(b, starts[i + 1]) - starts[i]
                yield order[i], piece_lo, piece_hi
                a = starts[i] + piece_hi
                i += 1

    def iter_rows(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """Encoded rows (``image`` bytes plus metadata) of one worker's share of the epoch, in order."""
        filesystem, _ = _resolve(self.data)
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}:rows")
        columns = ["label", *META_KEYS] if self.with_meta else ["label"]
        cache: dict = {}
        buffer: list[dict[str, Any]] = []
        buffered = 0
        try:
            for piece, lo, hi in self._spans(worker, num_workers):
                idx = list(range(lo, hi)) if piece.rows is None else list(piece.rows[lo:hi])
                rows = read_rows(filesystem, self._files[piece.unit.shard], self.format, piece.unit, idx, columns,
                                 cache)
                if not self.shuffle:
                    yield from rows
                    continue
                for row in rows:
                    # reservoir-style buffer: emit a random earlier row whenever a new one arrives
                    buffer.append(row)
                    buffered += len(row["image"])
                    while len(buffer) > self.shuffle_buffer or buffered > _SHUFFLE_BYTES:
                        j = rng.randrange(len(buffer))
                        buffer[j], buffer[-1] = buffer[-1], buffer[j]
                        out = buffer.pop()
                        buffered -= len(out["image"])
                        yield out
            rng.shuffle(buffer)
            yield from buffer
        finally:
            for pf in cache.values():
                pf.close()

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def decode(self, row: dict[str, Any], flip: bool = False) -> torch.Tensor:
        """uint8 (3, S, S) image of an encoded row, resized and (when ``flip``) flipped."""
        if self.pixels is not None:
            x = _planar(row["image"], self.pixels, name=row.get("original_path") or "shard row")
            return x.flip(-1) if flip else x
        img = decode_image(row["image"], name=row.get("original_path") or "shard row",
                           draft_size=self.image_size if self.jpeg_draft else None)
        return self.transform.to_uint8(img, flip=flip)

    def meta(self, row: dict[str, Any]) -> dict[str, str]:
        return {k: "" if row.get(k) is None else str(row[k]) for k in META_KEYS}

    def _flip_rng(self, worker: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}:flip")

    def _flip(self, rng: random.Random) -> bool:
        return self.train and self.transform.hflip_prob > 0 and rng.random() < self.transform.hflip_prob

    def __iter__(self) -> Iterator[tuple]:
        worker, num_workers = self._worker()
        flips = self._flip_rng(worker)
        for row in self.iter_rows(worker, num_workers):
            image = self.transform.normalize(self.decode(row, self._flip(flips)))
            if self.with_meta:
                yield image, int(row["label"]), self.meta(row)
            else:
                yield image, int(row["label"])


class _Batches(IterableDataset):
    """Whole batches from a :class:`ShardDataset`, normalised straight into one buffer per batch.

    Equal to collating the dataset's samples (same rows, order and flips), without a float tensor and a
    copy per image: the uint8 resize runs per image, the float conversion once per batch, into shared
    memory when in a worker so the DataLoader ships it without another copy.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, drop_last: bool, num_workers: int,
                 normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = max(1, num_workers)
        self._epoch_set = False
        self._started = False

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self._epoch_set = True

    def next_epoch(self) -> None:
        """Called once per ``iter(loader)``: keep an epoch set since the last pass, else count up."""
        if self._started and not self._epoch_set:
            self.dataset.set_epoch(self.dataset.epoch + 1)
        self._started, self._epoch_set = True, False

    def __len__(self) -> int:
        """Rows per epoch on this rank (what a trainer compares with the samples it saw)."""
        rows = sum(self.dataset.worker_rows(w, self.num_workers) for w in range(self.num_workers))
        return rows - (self.dropped() if self.drop_last else 0)

    def dropped(self) -> int:
        return sum(self.dataset.worker_rows(w, self.num_workers) % self.batch_size for w in range(self.num_workers))

    def batches(self) -> int:
        n = 0
        for w in range(self.num_workers):
            rows = self.dataset.worker_rows(w, self.num_workers)
            n += rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)
        return n

    def _emit(self, images: list[torch.Tensor], labels: list[int], metas: list[dict[str, str]], shared: bool):
        size = self.dataset.image_size
        dtype = torch.float32 if self.normalize else torch.uint8
        shape = (len(images), 3, size, size)
        if shared:
            storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
            out = torch.empty(0, dtype=dtype).set_(storage).view(shape)
        else:
            out = torch.empty(shape, dtype=dtype)
        for i, x in enumerate(images):
            if self.normalize:
                # per image, so the float write stays in cache between the multiply and the subtract
                self.dataset.transform.normalize(x, out=out[i])
            else:
                out[i].copy_(x)
        batch: tuple = (out, torch.tensor(labels, dtype=torch.int64))
        if self.dataset.with_meta:
            batch += ({k: [m[k] for m in metas] for k in META_KEYS},)
        return batch

    def __iter__(self) -> Iterator[tuple]:
        ds = self.dataset
        worker, num_workers = ds._worker()
        shared = get_worker_info() is not None
        flips = ds._flip_rng(worker)
        images: list[torch.Tensor] = []
        labels: list[int] = []
        metas: list[dict[str, str]] = []
        for row in ds.iter_rows(worker, num_workers):
            images.append(ds.decode(row, ds._flip(flips)))
            labels.append(int(row["label"]))
            if ds.with_meta:
                metas.append(ds.meta(row))
            if len(images) == self.batch_size:
                yield self._emit(images, labels, metas, shared)
                images, labels, metas = [], [], []
        if images and not self.drop_last:
            yield self._emit(images, labels, metas, shared)


class ShardLoader(DataLoader):
    """A DataLoader over :class:`_Batches`. ``len(loader)`` is the number of batches and
    ``len(loader.dataset)`` the number of rows per epoch. Each ``iter(loader)`` is a new epoch: the one
    given to ``loader.set_epoch(e)`` (or ``loader.dataset.set_epoch(e)``) since the last pass, else the
    previous one plus one (0, 1, 2, ... when nobody sets it)."""

    def __init__(self, batches: _Batches, **kwargs: Any) -> None:
        super().__init__(batches, batch_size=None, **kwargs)

    @property
    def shard_dataset(self) -> ShardDataset:
        return self.dataset.dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.dataset.batches()

    def __iter__(self):
        self.dataset.next_epoch()
        return super().__iter__()


def build_loader(data: str, split: str, spec: ReadSpec = ReadSpec(), *, batch_size: int, num_workers: int = 2,
                 pin_memory: bool = False, drop_last: bool = False, prefetch_factor: int | None = None,
                 normalize: bool = True) -> ShardLoader:
    """A DataLoader of ``(images [B, 3, S, S] float32, labels [B] int64)`` batches (plus a ``meta`` dict of
    lists with ``spec.with_meta``) over one split, read as ``spec`` says. ``spec.train`` flips at random and
    reshuffles every epoch.

    ``len(loader)`` (batches) is exact: each worker forms its own batches, so with ``drop_last=False`` up to
    one partial batch per worker. Epochs advance on every ``iter(loader)``; ``loader.set_epoch(e)`` sets it.

    ``normalize=False`` yields uint8 images (4x fewer bytes to move); normalise them on the device with
    ``loader.shard_dataset.transform.normalize(images.to(device))``. Under a process group each rank reads
    its share (module docstring); ``ReadSpec(pad=False)`` for evaluation.

    >>> spec = ReadSpec(image_size=64, train=True)
    >>> loader = build_loader("data/demo", "train", spec, batch_size=32)  # doctest: +SKIP
    >>> for images, labels in loader: ...  # doctest: +SKIP
    """
    dataset = ShardDataset(data, split, spec)
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        # workers run decoding only; one torch thread each avoids oversubscribing the cores
        kwargs["worker_init_fn"] = _worker_init
        kwargs["persistent_workers"] = False  # a fresh copy per epoch carries the epoch number
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return ShardLoader(_Batches(dataset, batch_size, drop_last, num_workers, normalize), **kwargs)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
