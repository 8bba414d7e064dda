"""Images/s of the shard loader against torchvision ``ImageFolder`` + PIL, same images, same transforms.

    python bench/loader.py                                    # 140k-like 256 px JPEGs, generated here
    python bench/loader.py --images ../shared/samples/realorfake --epochs 2   # a real/ + fake/ folder
    python bench/loader.py --workers 0 2 --markdown           # several worker counts, a table to paste

Both sides read the same files, decode with Pillow, apply the training preset
(``ClassificationPresetTrain``: resize to ``--image-size``, random flip, ImageNet mean/std) and deliver
batches of ``--batch-size`` float tensors through a ``DataLoader`` with the same number of worker
processes, each limited to one torch thread. The baseline reads the image files (``ImageFolder``, the
default PIL loader, ``RandomSampler``, ``default_collate``); ours reads the shards ``detector prepare``
wrote from the same folder (``build_loader(..., ReadSpec(train=True))``). Variants of ours: uint8 batches
(``normalize=False``; the trainer normalises them on the device), JPEG draft decoding, and the
decode-once dataset ``detector pixels`` derives from the shards (its one-time cost is printed too).
After one untimed warm-up epoch each, the loaders take turns for ``--epochs`` epochs and the best epoch
of each is reported (worker start-up included, as a training epoch pays it), so load from other jobs
does not favour any of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, help="a folder with real/ and fake/ (default: generate --synthetic images)")
    p.add_argument("--synthetic", type=int, default=2048, help="how many JPEGs to generate (default 2048)")
    p.add_argument("--synthetic-size", type=int, default=256, help="their size (140k's faces are 256 px)")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers (several: one run each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each, alternating, after a warm-up")
    p.add_argument("--work-dir", type=Path, help="where to put generated images and shards (default: a temp dir)")
    p.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    return p.parse_args(argv)


def synthetic_jpegs(root: Path, n: int, size: int) -> Path:
    """``n`` photo-like JPEGs (smooth colour fields plus noise, quality 90) under root/{real,fake}/."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        cls = "real" if i % 2 == 0 else "fake"
        path = root / cls / f"{i:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        c = rng.uniform(0, 255, (3, 3))
        img = (c[:, 0, None, None] * xx + c[:, 1, None, None] * yy + c[:, 2, None, None] * (1 - xx) * yy)
        img = np.clip(img.transpose(1, 2, 0) / 2 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        path.write_bytes(buf.getvalue())
    return root


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers exit every epoch)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def epoch_rate(loader) -> tuple[float, float, int]:
    """(images/s of wall time, images per CPU-second, images) of one pass, worker start-up included."""
    n = 0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for batch in loader:
        n += len(batch[1])
    del batch
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    return n / wall, n / cpu, n


def compare(loaders: dict[str, object], epochs: int) -> tuple[dict[str, tuple[float, float]], int]:
    """Best (images/s, images per CPU-second) of each loader over ``epochs`` epochs, after a warm-up each.

    The loaders take turns epoch by epoch and the best epoch of each is kept, so load from other jobs
    on the machine does not favour one of them. Images per CPU-second is the per-core throughput; it
    counts the main process too, and is the steadier figure on a shared machine.
    """
    for loader in loaders.values():
        epoch_rate(loader)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    counts = set()
    for _ in range(epochs):
        for name, loader in loaders.items():
            wall, per_cpu, n = epoch_rate(loader)
            rates[name].append((wall, per_cpu))
            counts.add(n)
    assert len(counts) == 1, f"the loaders saw different numbers of images: {counts}"
    return {name: (max(w for w, _ in r), max(c for _, c in r)) for name, r in rates.items()}, counts.pop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from torchvision.datasets import ImageFolder

    from detector.data.loader import ReadSpec, build_loader
    from detector.data.pixels import derive_pixels
    from detector.data.prepare import prepare
    from detector.data.transforms import ClassificationPresetTrain

    torch.set_num_threads(1)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-loader-"))
    # a train/ folder holding every image, so the shard import puts all of them in the train split
    folder = work / "images" / "train"
    if args.images:
        folder.mkdir(parents=True, exist_ok=True)
        for cls in ("real", "fake"):
            link = folder / cls
            if not link.exists():
                link.symlink_to((args.images / cls).resolve(), target_is_directory=True)
        what = f"{args.images}"
    else:
        synthetic_jpegs(folder, args.synthetic, args.synthetic_size)
        what = f"{args.synthetic} generated {args.synthetic_size} px JPEGs (q90)"
    data = work / "shards"
    manifest = prepare(data, sources={"folder": folder.parent}, workers=max(args.workers), progress=False)
    n_images = manifest["totals"]["train"]["real"] + manifest["totals"]["train"]["fake"]
    sizes = {Image.open(p).size for p in list((args.images or folder).glob("*/*.*"))[:50] if p.suffix != ".txt"}

    # the decode-once dataset (`detector pixels`), and what deriving it costs: paid once, not per epoch
    pixels = work / f"pixels-{args.image_size}"
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    pixel_manifest = derive_pixels(str(data), pixels, size=args.image_size, workers=max(args.workers), progress=False)
    derive_wall, derive_cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    shard_bytes = {name: sum(s["bytes"] for s in m["shards"]) / n_images
                   for name, m in (("shards", manifest), ("pixels", pixel_manifest))}

    train = ReadSpec(image_size=args.image_size, train=True)
    variants = {
        "shards": (data, {}),
        "shards, uint8 out": (data, {"normalize": False}),
        "shards, JPEG draft": (data, {"spec": dataclasses.replace(train, jpeg_draft=True)}),
        "pixels": (pixels, {}),
        "pixels, uint8 out": (pixels, {"normalize": False}),
    }
    results = []
    for workers in args.workers:
        baseline_ds = ImageFolder(str(folder), transform=ClassificationPresetTrain(image_size=args.image_size))
        loaders = {"ImageFolder+PIL": torch.utils.data.DataLoader(
            baseline_ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
            worker_init_fn=_one_thread if workers else None)}
        for name, (path, extra) in variants.items():
            loaders[name] = build_loader(str(path), "train", **{"spec": train, **extra}, batch_size=args.batch_size,
                                         num_workers=workers)
        rates, n = compare(loaders, args.epochs)
        assert n == n_images, (n, n_images)
        results.append((workers, rates))

    print(f"images: {what}, {n_images} images, sizes e.g. {sorted(sizes)[:3]}; transform: training preset "
          f"{args.image_size} px; batch {args.batch_size}; best of {args.epochs} epochs, loaders taking turns")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")
    names = list(results[0][1])
    if args.markdown:
        print("| workers | " + " | ".join(f"{n}: img/s, img per CPU-s" for n in names) + " |")
        print("|---:|" + "---:|" * len(names))
    for workers, rates in results:
        base_wall, base_cpu = rates["ImageFolder+PIL"]
        cells = [f"{w:.0f}, {c:.0f}" + ("" if n == "ImageFolder+PIL" else f" ({w / base_wall:.2f}x, {c / base_cpu:.2f}x)")
                 for n, (w, c) in rates.items()]
        print(("| " + str(workers) + " | " + " | ".join(cells) + " |") if args.markdown
              else f"workers={workers}: " + "; ".join(f"{n}: {c}" for n, c in zip(names, cells)))
    print(f"bytes per image: {shard_bytes['shards'] / 1e3:.1f} KB in the shards, {shard_bytes['pixels'] / 1e3:.1f} KB "
          f"as pixels; deriving the pixels took {derive_wall:.1f} s wall, {n_images / derive_cpu:.0f} images per "
          f"CPU-second (once)")
    for name in ("shards", "shards, uint8 out", "pixels", "pixels, uint8 out"):
        best = max(r[name][1] for _, r in results)
        print(f"feeding 3,500 img/s from {name!r} at {best:.0f} images per CPU-second takes ~{3500 / best:.1f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
