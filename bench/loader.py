"""Images/s of the shard loader against torchvision ``ImageFolder`` + PIL, same images, same transforms.

    python bench/loader.py                                    # 140k-like 256 px JPEGs, generated here
    python bench/loader.py --images ../shared/samples/realorfake --epochs 2   # a real/ + fake/ folder
    python bench/loader.py --workers 0 2 --markdown           # several worker counts, a table to paste

Both sides read the same files, decode with Pillow, apply the training preset
(``ClassificationPresetTrain``: resize to ``--image-size``, random flip, ImageNet mean/std) and deliver
batches of ``--batch-size`` float tensors through a ``DataLoader`` with the same number of worker
processes, each limited to one torch thread. The baseline reads the image files (``ImageFolder``, the
default PIL loader, ``RandomSampler``, ``default_collate``); ours reads the shards ``detector prepare``
wrote from the same folder (``build_loader(..., train=True)``). One warm-up epoch is not timed; the
images/s figure is over the timed epochs, worker start-up included (what a training epoch pays).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
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
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
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


def time_loader(loader, epochs: int) -> tuple[float, int]:
    """(images/s over ``epochs`` timed epochs, images per epoch), after one untimed warm-up epoch."""
    for _ in loader:
        pass
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch[1])
    return n / (time.perf_counter() - t0), n // epochs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from torchvision.datasets import ImageFolder

    from detector.data.loader import build_loader
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
    sizes = {Image.open(p).size for p in list(folder.rglob("*.*"))[:50]}

    rows = []
    for workers in args.workers:
        baseline_ds = ImageFolder(str(folder), transform=ClassificationPresetTrain(image_size=args.image_size))
        baseline = torch.utils.data.DataLoader(
            baseline_ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
            worker_init_fn=_one_thread if workers else None)
        ours = build_loader(str(data), "train", batch_size=args.batch_size, image_size=args.image_size, train=True,
                            num_workers=workers)
        base_rate, base_n = time_loader(baseline, args.epochs)
        our_rate, our_n = time_loader(ours, args.epochs)
        assert base_n == our_n == n_images, (base_n, our_n, n_images)
        cores = max(1, workers)
        rows.append((workers, base_rate, our_rate, base_rate / cores, our_rate / cores))

    print(f"images: {what}, {n_images} images, sizes e.g. {sorted(sizes)[:3]}; transform: training preset "
          f"{args.image_size} px; batch {args.batch_size}; {args.epochs} timed epochs")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")
    header = "| workers | ImageFolder+PIL img/s | shards img/s | speed-up | ImageFolder img/s/core | shards img/s/core |"
    if args.markdown:
        print(header)
        print("|---:|---:|---:|---:|---:|---:|")
    for workers, base, ours, base_core, our_core in rows:
        if args.markdown:
            print(f"| {workers} | {base:.0f} | {ours:.0f} | {ours / base:.2f}x | {base_core:.0f} | {our_core:.0f} |")
        else:
            print(f"workers={workers}: ImageFolder {base:.0f} img/s, shards {ours:.0f} img/s ({ours / base:.2f}x); "
                  f"per core {base_core:.0f} vs {our_core:.0f}")
    best = max(r[4] for r in rows)
    print(f"feeding 3,500 img/s at {best:.0f} img/s per core takes ~{3500 / best:.1f} decoding cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
