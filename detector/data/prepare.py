"""Import datasets into shards (``prepare``; the command is ``detector prepare``, in detector.commands).

Writes ``DATA/shards/<split>/<split>-NNNNN.parquet`` (or ``.tar`` with ``--format webdataset``) and, last,
``DATA/manifest.json``; a folder without manifest.json is an unfinished import. Labels: Real = 1, Fake = 0.

How it runs: every source is checked (missing folders fail at once), then planned (files listed, splits
assigned, see :mod:`detector.data.sources`). The tasks of each split are shuffled (seeded) and cut into
shards of ``--shard-rows``; a process pool decodes and checks every image and the main process writes
each shard atomically, then a receipt under ``DATA/.import/``. A re-run with the same inputs skips every
shard whose receipt and checksum match and writes the rest: an import killed half-way is finished by
running the same command again.

Every file that cannot be used is listed in the manifest's ``rejected`` with its reason, and counted in
the summary; ``--strict`` turns any rejection into a failure (exit code 1, no manifest written).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

from detector import FAKE, REAL
from detector.config import AtLeastOne, OneOf, Range, check_fields
from detector.data.audit import audit_dataset
from detector.data.images import MAX_PIXELS, ImageDecodeError, open_image
from detector.data.sources import (
    LABEL_NAMES,
    SPLITS,
    CelebDFSource,
    DemoSource,
    Faces140kSource,
    FolderSource,
    Note,
    Rejection,
    Source,
    SourceError,
    SynthBusterSource,
    Task,
    plan_sources,
)
from detector.data.demo import DemoConfig
from detector.data.shards import FORMATS
from detector.system import die_with_parent, usable_cpus

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REJECTED = "rejected.json"
SHARD_DIR = "shards"
RECEIPT_DIR = ".import"
FORMAT_VERSION = 1
_CHUNK = 16  # tasks per pool submission: big enough to amortise IPC, small enough to keep cores busy


class StrictImportError(ValueError):
    """``strict=True`` and some inputs were rejected; ``manifest`` is what would have been written."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        n = len(manifest["rejected"])
        super().__init__(f"--strict: {n} input(s) rejected; no manifest written (the list is in {REJECTED})")
        self.manifest = manifest


@dataclass(frozen=True)
class ImportOptions:
    """What decides the bytes of the shards (so it is part of every shard's identity)."""

    fmt: Annotated[str, OneOf(FORMATS)] = "parquet"
    shard_rows: AtLeastOne = 2048
    row_group_rows: AtLeastOne = 256
    # 0 keeps every image at its size; else larger ones are shrunk to fit, as PNG
    max_size: Annotated[int, Range(0, why="0 keeps every image's size")] = 0
    max_pixels: AtLeastOne = MAX_PIXELS

    def __post_init__(self) -> None:
        check_fields(self)  # its keys are prepare()'s parameters of the same names


# --------------------------------------------------------------------------------------- worker side
def _png(img, level: int = 3) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _row(task: Task, data: bytes, fmt: str, width: int, height: int, *, frame: int = -1,
         generator: str | None = None, resized: bool = False) -> dict[str, Any]:
    return {
        "image": data, "label": task.label, "source": task.source, "split": task.split,
        "generator": task.generator if generator is None else generator, "group": task.group, "frame": frame,
        "original_path": task.original_path, "sha256": hashlib.sha256(data).hexdigest(), "format": fmt,
        "width": width, "height": height, "resized": resized,
    }


def _shrink(img, max_size: int):
    from PIL import Image

    scale = max_size / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BILINEAR)


def process_task(task: Task, options: ImportOptions) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Read, check and convert one task into shard rows; a bad input becomes a rejection, never an error."""
    try:
        if task.kind == "demo":
            from detector.data.demo import demo_png

            data, _, generator = demo_png(split=task.split, index=task.index, seed=task.seed,
                                          image_size=task.image_size)
            return [_row(task, data, "PNG", task.image_size, task.image_size, generator=generator)], []
        if task.kind == "video":
            from PIL import Image

            from detector.data.video import VideoDecodeError, read_frames

            try:
                frames = read_frames(task.path, task.frames, name=task.original_path)
            except VideoDecodeError as e:
                return [], [Rejection(task.source, task.original_path, e.reason)]
            rows = []
            for index, arr in frames:
                img = Image.fromarray(arr, mode="RGB")
                resized = bool(options.max_size) and max(img.size) > options.max_size
                if resized:
                    img = _shrink(img, options.max_size)
                rows.append(_row(task, _png(img), "PNG", img.width, img.height, frame=index, resized=resized))
            return rows, []
        try:
            with open(task.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return [], [Rejection(task.source, task.original_path, f"cannot read: {e.strerror or e}")]
        try:
            img, info = open_image(data, name=task.original_path, max_pixels=options.max_pixels)
        except ImageDecodeError as e:
            return [], [Rejection(task.source, task.original_path, e.reason)]
        if options.max_size and max(img.size) > options.max_size:
            small = _shrink(img, options.max_size)
            return [_row(task, _png(small), "PNG", small.width, small.height, resized=True)], []
        # the original bytes, untouched: the loader decodes them with the same decode_image
        return [_row(task, data, info.format, info.width, info.height)], []
    except Exception as e:  # a bug or an exotic failure in one file must not stop the import
        log.exception("unexpected error importing %s", task.original_path)
        return [], [Rejection(task.source, task.original_path, f"unexpected error: {type(e).__name__}: {e}")]


def _process_chunk(tasks: Sequence[Task], options: ImportOptions) -> list[tuple[list[dict], list[Rejection]]]:
    return [process_task(t, options) for t in tasks]


# --------------------------------------------------------------------------------------- main side
@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    name: str  # path relative to the dataset root
    tasks: tuple[Task, ...]
    key: str  # hash of the tasks, their files' size and mtime, and the options


def _file_stamp(task: Task) -> list[int]:
    if not task.path:
        return []
    try:
        st = os.stat(task.path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]


def plan_shards(tasks: Sequence[Task], options: ImportOptions, seed: int) -> list[ShardPlan]:
    """Shuffle each split's tasks (seeded, so every shard mixes sources and labels) and cut them into shards."""
    import random

    from detector.data.shards import SUFFIX

    opts = json.dumps(dataclasses.asdict(options), sort_keys=True)
    plans: list[ShardPlan] = []
    for split in SPLITS:
        items = sorted((t for t in tasks if t.split == split), key=lambda t: (t.source, t.original_path))
        random.Random(f"{seed}:shards:{split}").shuffle(items)
        chunk: list[Task] = []
        rows = 0
        for t in items + [None]:
            if t is not None:
                chunk.append(t)
                rows += t.frames if t.kind == "video" else 1
            if chunk and (t is None or rows >= options.shard_rows):
                index = len([p for p in plans if p.split == split])
                h = hashlib.sha256(opts.encode())
                for c in chunk:
                    h.update(json.dumps([dataclasses.astuple(c), _file_stamp(c)]).encode())
                name = f"{SHARD_DIR}/{split}/{split}-{index:05d}{SUFFIX[options.fmt]}"
                plans.append(ShardPlan(split, index, name, tuple(chunk), h.hexdigest()))
                chunk, rows = [], 0
    return plans


def _receipt_path(out: Path, plan: ShardPlan) -> Path:
    return out / RECEIPT_DIR / (Path(plan.name).name + ".json")


def _load_receipt(out: Path, plan: ShardPlan) -> dict[str, Any] | None:
    """The receipt of a finished shard, or None if the shard must be (re)written."""
    from detector.data.shards import sha256_file

    path = _receipt_path(out, plan)
    try:
        receipt = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    shard = out / plan.name  # the plan's own name: no path is taken from the receipt
    if receipt.get("plan") != plan.key or receipt.get("shard") != plan.name or not shard.is_file() or shard.stat().st_size != receipt.get("bytes"):
        return None
    with open(shard, "rb") as f:
        if sha256_file(f) != receipt.get("sha256"):
            log.warning("%s: checksum differs from its receipt; rewriting it", plan.name)
            return None
    return receipt


def _clean_stale(out: Path, plans: Sequence[ShardPlan]) -> None:
    """Remove shards and receipts no plan produces (an earlier run with other inputs) and temp files."""
    keep = {out / p.name for p in plans} | {_receipt_path(out, p) for p in plans}
    for folder in (out / SHARD_DIR, out / RECEIPT_DIR):
        if not folder.is_dir():
            continue
        for p in folder.rglob("*"):
            temp = p.name.startswith(".") and p.name.endswith(".tmp")
            ours = p.suffix in (".parquet", ".tar", ".json")
            if p.is_file() and (temp or (ours and p not in keep)):
                p.unlink()


class _Inline:
    """Stands in for a process pool when workers <= 1 (debugging, tests, tiny imports)."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _write_shards(out: Path, pending: Sequence[ShardPlan], options: ImportOptions, workers: int,
                  bar) -> None:
    from detector.data.shards import ShardLimits, ShardWriter, sha256_file
    from detector.io import atomic_write_json

    chunks = [(p, p.tasks[i:i + _CHUNK]) for p in pending for i in range(0, len(p.tasks), _CHUNK)]
    if workers > 1:
        import multiprocessing

        # spawn, not fork: the main process holds Arrow thread pools that a fork would copy mid-flight;
        # workers end with this process, even when it is killed (they would hold memory and a core)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent)
    else:
        pool = _Inline()
    limits = ShardLimits(row_group_rows=options.row_group_rows)
    window: collections.deque[tuple[ShardPlan, Future]] = collections.deque()
    todo = iter(chunks)
    writer: ShardWriter | None = None
    current: ShardPlan | None = None
    state: dict[str, Any] = {}
    try:
        while True:
            while len(window) < max(2, workers * 4):  # bounded: results never pile up in memory
                nxt = next(todo, None)
                if nxt is None:
                    break
                window.append((nxt[0], pool.submit(_process_chunk, nxt[1], options)))
            if not window:
                break
            plan, fut = window.popleft()
            if plan is not current:
                current = plan
                writer = ShardWriter(out / plan.name, options.fmt, limits)
                state = {"left": len(plan.tasks), "rejected": [], "index": collections.defaultdict(list),
                         "sources": collections.Counter()}
            results = fut.result()
            for rows, rejected in results:
                for row in rows:
                    writer.write(row)
                    for k in ("label", "source", "generator", "sha256", "original_path", "frame"):
                        state["index"][k].append(row[k])
                    state["sources"][row["source"]] += 1
                state["rejected"] += [dataclasses.asdict(r) for r in rejected]
            state["left"] -= len(results)
            bar.update(len(results))
            if state["left"] == 0:
                writer.close()
                writer = None
                shard = out / plan.name
                with open(shard, "rb") as f:
                    digest = sha256_file(f)
                atomic_write_json(_receipt_path(out, plan), {
                    "plan": plan.key, "shard": plan.name, "split": plan.split, "rows": sum(state["sources"].values()),
                    "bytes": shard.stat().st_size, "sha256": digest, "sources": dict(sorted(state["sources"].items())),
                    "rejected": state["rejected"], "index": dict(state["index"]),
                })
    except BaseException:
        if writer is not None:
            writer.abort()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _source_options(source: Source) -> dict[str, Any]:
    d = dataclasses.asdict(source)
    d.pop("name", None)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def build_manifest(out: Path, plans: Sequence[ShardPlan], receipts: dict[str, dict], *,
                   rejected: Sequence[Rejection], notes: Sequence[Note], sources: Sequence[Source],
                   options: ImportOptions, seed: int) -> dict[str, Any]:
    """The manifest: counts, shards with checksums, rejections, duplicates, options. Deterministic:
    the same inputs give the same bytes (no timestamps), so its hash identifies the data."""
    names = [s.name for s in sources]
    splits = {split: {name: {"real": 0, "fake": 0} for name in names} for split in SPLITS}
    generators: dict[str, dict[str, dict[str, int]]] = {split: {} for split in SPLITS}
    by_hash: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    all_rejected = [dataclasses.asdict(r) for r in rejected]
    shards = []
    for plan in plans:
        receipt = receipts[plan.name]
        index = receipt["index"]
        for label, source, generator, sha, path in zip(index.get("label", []), index.get("source", []),
                                                        index.get("generator", []), index.get("sha256", []),
                                                        index.get("original_path", [])):
            splits[plan.split][source][LABEL_NAMES[label]] += 1
            if generator:
                g = generators[plan.split].setdefault(source, {}).setdefault(generator, {"real": 0, "fake": 0})
                g[LABEL_NAMES[label]] += 1
            by_hash[sha].append((plan.split, source, path))
        all_rejected += receipt["rejected"]
        shards.append({"path": plan.name, "split": plan.split, "rows": receipt["rows"], "bytes": receipt["bytes"],
                       "sha256": receipt["sha256"], "sources": receipt["sources"]})
    across = []
    within = 0
    for sha, rows in sorted(by_hash.items()):
        if len(rows) < 2:
            continue
        if len({r[0] for r in rows}) > 1:
            across.append({"sha256": sha, "rows": [{"split": s, "source": src, "original_path": p}
                                                   for s, src, p in sorted(rows)]})
        else:
            within += 1
    totals = {split: {"real": sum(c["real"] for c in splits[split].values()),
                      "fake": sum(c["fake"] for c in splits[split].values())} for split in SPLITS}
    all_rejected.sort(key=lambda r: (r["source"], r["path"], r["reason"]))
    return {
        "format_version": FORMAT_VERSION,
        "format": options.fmt,
        "labels": {"real": REAL, "fake": FAKE},
        "splits": splits,
        "totals": totals,
        "generators": {k: v for k, v in generators.items()},
        "shards": shards,
        "rejected": all_rejected,
        "rejected_counts": dict(sorted(collections.Counter(r["source"] for r in all_rejected).items())),
        "notes": sorted((dataclasses.asdict(n) for n in notes), key=lambda n: (n["source"], n["path"])),
        "duplicates": {
            "policy": "reported, not removed: the official splits are kept as published; an image whose bytes "
                      "occur in two splits is listed here so results can be checked for leakage",
            "across_splits": across,
            "across_splits_count": len(across),
            "within_split_count": within,
        },
        "options": {"seed": seed, **dataclasses.asdict(options),
                    "sources": {s.name: _source_options(s) for s in sources}},
    }


def as_sources(sources: Sequence[Source] | Mapping[str, str | Path] = (), *,
               demo: bool | DemoConfig = False) -> list[Source]:
    """Source objects from ``{"faces140k": DIR, ...}`` (default options) and/or ``demo``; objects pass through."""
    if isinstance(sources, Mapping):
        makers = {"faces140k": Faces140kSource, "celebdf": CelebDFSource, "synthbuster": SynthBusterSource,
                  "folder": FolderSource}
        unknown = sorted(set(sources) - set(makers) - {"demo"})
        if unknown:
            raise SourceError(f"unknown source(s) {', '.join(unknown)}; expected {', '.join(makers)} or demo")
        result: list[Source] = [makers[k](Path(v)) for k, v in sources.items() if k in makers and v]
        if sources.get("demo"):
            demo = demo or True
    else:
        result = list(sources)
    if demo:
        result.append(DemoSource(demo if isinstance(demo, DemoConfig) else DemoConfig()))
    return result


def prepare(out: Path, *, sources: Sequence[Source] | Mapping[str, str | Path] = (), demo: bool | DemoConfig = False,
            options: ImportOptions = ImportOptions(), workers: int | None = None, seed: int = 0,
            strict: bool = False, resume: bool = True, progress: bool | None = None) -> dict[str, Any]:
    """Import ``sources`` into shards under ``out`` and return the manifest (also written to out/manifest.json).

    ``sources`` is a list of source objects (:class:`Faces140kSource`, ...), or a mapping from source name
    to folder with default options; ``demo`` adds the demo dataset. ``options``: the shards' format and
    sizes (:class:`ImportOptions`). ``workers`` defaults to all cores.

    >>> prepare(Path("data/demo"), demo=True)["totals"]["train"]  # doctest: +SKIP
    {'real': 300, 'fake': 300}
    >>> prepare(Path("data/wds"), demo=True, options=ImportOptions(fmt="webdataset"))  # doctest: +SKIP

    Raises :class:`~detector.data.sources.SourceError` for a missing or malformed source folder (before any
    work) and :class:`StrictImportError` when ``strict`` and something was rejected.
    """
    from tqdm import tqdm

    from detector.io import atomic_write_json

    sources = as_sources(sources, demo=demo)
    workers = workers if workers is not None else usable_cpus()
    out = Path(out)
    t0 = time.perf_counter()
    planned = plan_sources(sources, seed)
    plans = plan_shards(planned.tasks, options, seed)
    out.mkdir(parents=True, exist_ok=True)
    # from here on the folder is an unfinished import until the new manifest lands
    for stale in (out / MANIFEST, out / REJECTED):
        stale.unlink(missing_ok=True)
    _clean_stale(out, plans)
    receipts = {p.name: r for p in plans if resume and (r := _load_receipt(out, p)) is not None}
    pending = [p for p in plans if p.name not in receipts]
    n_tasks = sum(len(p.tasks) for p in plans)
    log.info("planned %d items in %d shards (%d already done) in %.1fs; %d rejected while listing",
             n_tasks, len(plans), len(receipts), time.perf_counter() - t0, len(planned.rejected))
    done_tasks = n_tasks - sum(len(p.tasks) for p in pending)
    show = None if progress is None else not progress  # tqdm: None = only on a terminal
    with tqdm(total=n_tasks, initial=done_tasks, unit="item", desc="import", disable=show,
              file=sys.stderr, dynamic_ncols=True) as bar:
        _write_shards(out, pending, options, max(1, workers), bar)
    for p in pending:
        receipt = _load_receipt(out, p)
        if receipt is None:
            raise RuntimeError(f"{p.name}: written but its receipt does not verify; re-run the import")
        receipts[p.name] = receipt
    manifest = build_manifest(out, plans, receipts, rejected=planned.rejected, notes=planned.notes,
                              sources=sources, options=options, seed=seed)
    manifest["audit"] = audit_dataset(str(out), manifest=manifest)  # can metadata alone tell the classes?
    if strict and manifest["rejected"]:
        atomic_write_json(out / REJECTED, manifest["rejected"])
        raise StrictImportError(manifest)
    atomic_write_json(out / MANIFEST, manifest)
    log.info("import finished in %.1fs: %s", time.perf_counter() - t0, out / MANIFEST)
    return manifest


def format_summary(manifest: dict[str, Any], *, max_rejected: int = 20) -> str:
    """A plain-text table of counts per split and source, then rejections, duplicates and notes."""
    lines = [f"{'split':<6} {'source':<12} {'real':>8} {'fake':>8} {'total':>8}"]
    for split in SPLITS:
        for source, c in manifest["splits"][split].items():
            lines.append(f"{split:<6} {source:<12} {c['real']:>8} {c['fake']:>8} {c['real'] + c['fake']:>8}")
        t = manifest["totals"][split]
        lines.append(f"{split:<6} {'(all)':<12} {t['real']:>8} {t['fake']:>8} {t['real'] + t['fake']:>8}")
    rejected = manifest["rejected"]
    counts = ", ".join(f"{k}: {v}" for k, v in manifest["rejected_counts"].items())
    lines.append(f"rejected: {len(rejected)}" + (f" ({counts})" if counts else ""))
    for r in rejected[:max_rejected]:
        lines.append(f"  {r['source']}: {r['path']}: {r['reason']}")
    if len(rejected) > max_rejected:
        lines.append(f"  ... {len(rejected) - max_rejected} more in the manifest's \"rejected\"")
    dup = manifest["duplicates"]
    lines.append(f"duplicates: {dup['across_splits_count']} image(s) in more than one split, "
                 f"{dup['within_split_count']} repeated within a split (reported, not removed)")
    if manifest["notes"]:
        lines.append(f"notes: {len(manifest['notes'])} (see the manifest's \"notes\"), e.g. "
                     f"{manifest['notes'][0]['path']}: {manifest['notes'][0]['message']}")
    size = sum(s["bytes"] for s in manifest["shards"])
    lines.append(f"shards: {len(manifest['shards'])} {manifest['format']} file(s), {size / 1e6:.1f} MB")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI
