"""Evaluation images/s with and without each robustness perturbation: is perturbing hidden behind the model?

    python bench/robustness.py                                  # ResNet-50 at 224 px, 140k-like 256 px JPEGs
    python bench/robustness.py --workers 2 --images 512 --markdown
    python bench/robustness.py --arch resnet18 --image-size 64  # the demo's model: little model work to hide behind
    python bench/robustness.py --smoke-test                     # seconds

For each variant (clean, and the strongest setting of each perturbation family) one full evaluation pass over
the same test images: the loader the evaluate stage uses (``build_loader`` for clean,
``detector.evaluate.robustness.perturbed_loader`` otherwise: decode, perturb, resize in ``--workers``
DataLoader workers, uint8 batches) feeding ``collect_predictions`` (the model's forward pass on ``--device``).
The variants take turns for ``--rounds`` rounds and each keeps its best pass, so load from other jobs does not
favour one. Two more rows bound the two halves: **loader only** (the same loaders, no model: the CPU cost of
decoding and perturbing) and **model only** (the forward pass on batches already in memory); and **one core**
gives the CPU time per image of decoding, perturbing and resizing in one process (``time.process_time``),
which load from other jobs inflates far less than wall time: workers x 1000 / that is what a node's loader
can feed.

The goal (issue 13): a perturbed pass costs at most 1.2x the clean pass, i.e. the perturbation's CPU work is
hidden behind the forward pass. That holds when the loader alone delivers more images/s than the model
consumes: the "loader only" rows say how many images/s the workers give, against the "model only" rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FAMILIES = ("clean", "jpeg-q30", "blur-s3", "downscale-x0.25", "format-jpeg-q95")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="test images to generate (half real, half fake)")
    p.add_argument("--source-size", type=int, default=256, help="their size (140k's faces are 256 px)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (evaluate.num_workers)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work-dir", type=Path, help="where to put the images and shards (default: a temp dir)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--smoke-test", action="store_true", help="resnet18, 32 px, 32 images, one round")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.arch, args.image_size, args.images, args.rounds, args.batch_size = "resnet18", 32, 32, 1, 16
    return args


def make_data(root: Path, n: int, size: int) -> Path:
    """``n`` photo-like q90 JPEGs in root/raw/test/{real,fake}/ (a few in train and val), imported as shards."""
    from detector.data.prepare import prepare
    from detector.data.sources import FolderSource

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", 4), ("val", 4), ("test", n)):
        for i in range(count):
            cls = "real" if i % 2 == 0 else "fake"
            path = root / "raw" / split / cls / f"{i:06d}.jpg"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            a, b, c = rng.uniform(0, 255, 3)
            img = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(path, quality=90)
    data = root / "shards"
    if not (data / "manifest.json").exists():
        prepare(data, sources=[FolderSource(root / "raw")], workers=max(1, os.cpu_count() or 1), progress=False)
    return data


def loader(data: str, variant: str, args: argparse.Namespace, device: torch.device):
    from detector.data.loader import ReadSpec, build_loader
    from detector.evaluate.robustness import Perturbation, perturbed_loader

    pin = device.type == "cuda"
    if variant == "clean":
        return build_loader(data, "test", ReadSpec(image_size=args.image_size, with_meta=True),
                            batch_size=args.batch_size, normalize=False, num_workers=args.workers, pin_memory=pin)
    family, severity = variant.split("-")[0], float(variant.rsplit("-", 1)[1].lstrip("qsx"))
    return perturbed_loader(data, Perturbation(family, severity), image_size=args.image_size,
                            batch_size=args.batch_size, num_workers=args.workers, pin_memory=pin)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from detector.device import resolve_device
    from detector.model import build_model
    from detector.passes import collect_predictions

    device = resolve_device(args.device)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    data = str(make_data(work, args.images, args.source_size))
    model = build_model(args.arch, seed=0).to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def full_pass(variant: str) -> None:
        collect_predictions(model, loader(data, variant, args, device), device=device, precision=args.precision)

    def loader_pass(variant: str) -> None:
        for _ in loader(data, variant, args, device):
            pass

    batches = [b[0] for b in loader(data, "clean", args, device)]

    def model_pass() -> None:
        from detector.device import autocast
        from detector.passes import to_device

        with torch.inference_mode():
            for x in batches:
                images, _ = to_device(x, torch.zeros(len(x)), device, channels_last=False)
                with autocast(device, args.precision):
                    out = model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            out.float().cpu()

    def cpu_ms_per_image(variant: str) -> float:
        """CPU time of decode, perturb and resize per image in this process (one thread): steadier than wall
        time on a shared machine, and what each DataLoader worker spends."""
        from detector.data.images import decode_image
        from detector.data.loader import ReadSpec, ShardDataset
        from detector.evaluate.robustness import Perturbation

        torch.set_num_threads(1)
        ds = ShardDataset(data, "test", ReadSpec(image_size=args.image_size))
        rows = list(ds.iter_rows())
        perturb = (lambda im: im) if variant == "clean" else Perturbation(
            variant.split("-")[0], float(variant.rsplit("-", 1)[1].lstrip("qsx")))
        t0 = time.process_time()
        for row in rows:
            ds.transform.to_uint8(perturb(decode_image(row["image"])))
        ms = 1000 * (time.process_time() - t0) / len(rows)
        torch.set_num_threads(threads)
        return ms

    threads = torch.get_num_threads()
    full_pass("clean")  # warm-up: caches, cuDNN autotuning
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for v in FAMILIES:
            best[f"full:{v}"] = min(best.get(f"full:{v}", float("inf")), timed(lambda: full_pass(v)))
        for v in FAMILIES:
            best[f"loader:{v}"] = min(best.get(f"loader:{v}", float("inf")), timed(lambda: loader_pass(v)))
        best["model"] = min(best.get("model", float("inf")), timed(model_pass))
        for v in FAMILIES:
            best[f"cpu:{v}"] = min(best.get(f"cpu:{v}", float("inf")), cpu_ms_per_image(v))
    n = args.images
    clean = best["full:clean"]
    rows = [("model only (batches in memory)", n / best["model"], None)]
    rows += [(f"full pass, {v}", n / best[f"full:{v}"], best[f"full:{v}"] / clean) for v in FAMILIES]
    rows += [(f"loader only, {v}", n / best[f"loader:{v}"], None) for v in FAMILIES]
    rows += [(f"one core, {v} (decode + perturb + resize): {best[f'cpu:{v}']:.2f} ms CPU per image",
              1000 / best[f"cpu:{v}"], best[f"cpu:{v}"] / best["cpu:clean"]) for v in FAMILIES]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}; "
               f"torch {torch.__version__}, Python {platform.python_version()}; load average "
               f"{os.getloadavg()[0]:.1f}")
    print(f"# {args.arch} at {args.image_size} px on {device} ({args.precision}), {n} test images of "
          f"{args.source_size} px, batch {args.batch_size}, {args.workers} workers, best of {args.rounds} rounds")
    print(f"# {machine}; command: python bench/robustness.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    if args.markdown:
        print("| pass | images/s | time vs clean |\n|---|---:|---:|")
        for name, rate, ratio in rows:
            print(f"| {name} | {rate:.1f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    else:
        for name, rate, ratio in rows:
            print(f"{name:<40} {rate:9.1f} img/s" + ("" if ratio is None else f"   {ratio:.2f}x clean"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
