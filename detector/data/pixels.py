"""Decode once: derive a dataset of decoded, resized pixels from a prepared one (``detector pixels``).

    detector pixels DATA --out DATA-224 [--size 224] [--workers N]

Every epoch of every trial decodes and resizes every image again; with twenty trials of ten epochs that is
two hundred decodes of each image, and JPEG decoding is most of a loader's CPU time. The preprocessing
before the random flip is deterministic (resize to ``size`` x ``size``, bilinear, antialiased), so its
output can be computed once and stored: the derived dataset holds, per row, the uint8 RGB pixels
(3 x size x size, planar, ``format`` = ``RAW``) that :class:`~detector.data.transforms.ClassificationPresetEval`
produces from the source row, and the loader then only copies, flips and batches them.

It is exact, not an approximation: a batch read from the derived dataset equals the batch read from the
source (same rows in the same order, same flips; asserted in the tests). What it costs is space: 147 KB
per image at 224 px (general-purpose codecs gain 5-18 % on pixels, measured, so the column is stored
uncompressed), against ~16 KB for a 256 px JPEG but ~3-6 MB for a 1024 px PNG. The manifest is the
source's, with the new shards' checksums and a ``pixels`` entry (size, layout, the source's path and
manifest hash); the loader refuses it at any other image size. The source dataset stays the reference:
original bytes, for other sizes and for ``predict`` on files.

Like ``prepare``, it is atomic and resumable: each shard is written under a temporary name and renamed,
then a receipt; a re-run skips the shards whose receipt matches, and the manifest is written last.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.data.images import decode_image
from detector.data.shards import COLUMNS, ShardLimits, ShardWriter, read_rows, sha256_file, shard_units
from detector.paths import safe_join
from detector.system import die_with_parent, usable_cpus

if TYPE_CHECKING:  # torch is imported in the worker, not for `detector --help`
    from detector.data.transforms import ClassificationPresetEval

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECEIPT_DIR = ".pixels"
RAW = "RAW"
LAYOUT = "CHW uint8 RGB"
# A worker process takes seconds to start (it imports torch and torchvision); an image takes milliseconds to
# convert. Unless asked for more, a pool gets one worker per this many images: 128 demo images at 32 px took
# 4.6 s in this process and 18.5 s with 2 workers (2026-12-07, the shared 2-core VM).
ROWS_PER_WORKER = 1000


def pixel_bytes(data: bytes, preset: ClassificationPresetEval, *, name: str = "") -> bytes:
    """The stored form of one encoded image: decoded, resized by ``preset``, planar uint8 bytes."""
    return preset.to_uint8(decode_image(data, name=name)).contiguous().numpy().tobytes()


def _receipt_path(out: Path, shard: str) -> Path:
    return out / RECEIPT_DIR / (shard.replace("/", "__") + ".json")


def _target(out: Path, shard: dict[str, Any]) -> Path:
    """Where the pixel version of a source shard goes: the same relative path under ``out``, never
    outside it (the path comes from the source's manifest)."""
    return Path(safe_join(str(out), shard["path"], where=f"the source's {MANIFEST}: shard path"))


def _load_receipt(out: Path, shard: dict[str, Any], size: int) -> dict[str, Any] | None:
    path = _target(out, shard)
    try:
        receipt = json.loads(_receipt_path(out, shard["path"]).read_text())
        if (receipt["source_sha256"] != shard["sha256"] or receipt["size"] != size
                or receipt["bytes"] != path.stat().st_size):
            return None
        with open(path, "rb") as f:
            return receipt if sha256_file(f) == receipt["sha256"] else None
    except (OSError, ValueError, KeyError):
        return None


def convert_shard(data: str, shard: dict[str, Any], fmt: str, out: str, size: int) -> dict[str, Any]:
    """Write the pixel version of one source shard under ``out`` (same relative path); its receipt."""
    import torch

    from detector.data.loader import _resolve, shard_file, verify_shard
    from detector.data.transforms import ClassificationPresetEval
    from detector.io import atomic_write_json

    torch.set_num_threads(1)  # one shard per process; the pool supplies the parallelism
    filesystem, root = _resolve(data)
    path = shard_file(data, root, shard)
    target = _target(Path(out), shard)
    verify_shard(filesystem, path, shard["sha256"], name=f"{data}/{shard['path']}")
    rows = 0
    preset = ClassificationPresetEval(image_size=size)
    # one row group per source row group: the same shuffle units, so the same epochs as the source
    with ShardWriter(target, fmt, ShardLimits(row_group_rows=1 << 30, row_group_bytes=1 << 62)) as writer:
        for unit in shard_units(filesystem, path, shard["path"], fmt, shard["rows"]):
            for row in read_rows(filesystem, path, fmt, unit, range(unit.rows), COLUMNS):
                name = f"{data}/{shard['path']} ({row['original_path']})"
                row.update(image=pixel_bytes(row["image"], preset, name=name), format=RAW, width=size, height=size,
                           resized=True)
                writer.write(row)
                rows += 1
            writer.end_group()
    if rows != shard["rows"]:
        raise ValueError(f"{data}/{shard['path']}: read {rows} rows, the manifest lists {shard['rows']}")
    with open(target, "rb") as f:
        digest = sha256_file(f)
    receipt = {"shard": shard["path"], "source_sha256": shard["sha256"], "size": size, "rows": rows,
               "bytes": target.stat().st_size, "sha256": digest}
    atomic_write_json(_receipt_path(Path(out), shard["path"]), receipt)
    return receipt


def derive_pixels(data: str, out: Path, *, size: int = 224, workers: int | None = None,
                  progress: bool | None = None) -> dict[str, Any]:
    """Write the pixel dataset of ``data`` (a dataset folder or URI) at ``size`` under ``out``; its manifest.
    ``workers``: processes, one shard each (default: the usable CPUs, one per ``ROWS_PER_WORKER`` images).

    >>> derive_pixels("data/paper", Path("data/paper-224"), size=224)["pixels"]["size"]  # doctest: +SKIP
    224
    """
    from tqdm import tqdm

    from detector.data.loader import manifest_sha256, read_manifest
    from detector.io import atomic_write_json

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    data = str(data)
    manifest = read_manifest(data)
    if "pixels" in manifest:
        raise ValueError(f"{data}/{MANIFEST}: already a pixel dataset ({manifest['pixels']['size']} px); "
                         f"derive from the dataset `detector prepare` wrote ({manifest['pixels']['from']['data']})")
    out = Path(out)
    if "://" not in data and out.resolve() == Path(data).resolve():
        raise ValueError(f"--out {out}: must differ from the source dataset")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # unfinished until the new manifest lands
    shards = manifest["shards"]
    done = {s["path"]: r for s in shards if (r := _load_receipt(out, s, size)) is not None}
    pending = [s for s in shards if s["path"] not in done]
    log.info("%d shards, %d already converted", len(shards), len(done))
    if workers is None:
        workers = min(usable_cpus(), sum(s["rows"] for s in pending) // ROWS_PER_WORKER)
    workers = max(1, workers)
    show = None if progress is None else not progress
    with tqdm(total=sum(s["rows"] for s in shards), initial=sum(s["rows"] for s in shards if s["path"] in done),
              unit="img", desc="pixels", disable=show, file=sys.stderr, dynamic_ncols=True) as bar:
        if workers == 1 or len(pending) <= 1:
            for s in pending:
                done[s["path"]] = convert_shard(data, s, manifest["format"], str(out), size)
                bar.update(s["rows"])
        else:
            # spawn, not fork: this process holds Arrow thread pools that a fork would copy mid-flight
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(pending)), mp_context=spawn, initializer=die_with_parent) as pool:
                futures = {pool.submit(convert_shard, data, s, manifest["format"], str(out), size): s for s in pending}
                for future in futures:
                    receipt = future.result()
                    done[receipt["shard"]] = receipt
                    bar.update(receipt["rows"])
    derived = dict(manifest)
    derived["shards"] = [{**s, "bytes": done[s["path"]]["bytes"], "sha256": done[s["path"]]["sha256"]}
                         for s in shards]
    derived["pixels"] = {
        "size": size,
        "layout": LAYOUT,
        "resize": "bilinear, antialiased (torchvision resize of the decoded uint8 image)",
        "from": {"data": data, "manifest_sha256": manifest_sha256(data)},
    }
    atomic_write_json(out / MANIFEST, derived)
    log.info("pixel dataset written in %.1fs: %s", time.perf_counter() - t0, out / MANIFEST)
    return derived
