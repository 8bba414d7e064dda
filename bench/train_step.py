"""Images/s of training steps: the library's own ``train_step``, on synthetic tensors and on the real loader.

    python bench/train_step.py                                # synthetic, ResNet-50, 224 px, batch 64
    python bench/train_step.py --data DATA --num-workers 8    # also the real loader, and its ratio
    python bench/train_step.py --device cpu --batch-size 8 --steps 3 --warmup 1 --data DATA

Synthetic = one batch already on the device, reused: the ceiling of model + optimizer. Loader = batches
from ``build_loader(DATA, "train", ReadSpec(train=True), normalize=False)`` (decode, resize, flip, uint8 batch,
pinned copy; normalised on the device by ``to_device``, as in training): the difference is the input
pipeline's cost. No Ray. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from typing import Any, Iterator

import torch

from detector.model import build_model
from detector.device import device_name, resolve_device, resolve_precision
from detector.passes import to_device, train_step
from detector.train import TrainConfig, build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotune, compile, workers)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--data", help="prepared shards: also time the real loader")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    return p.parse_args(argv)


def _loop(batches: Iterator, model, optimizer, *, device, precision, scaler, channels_last, steps, warmup):
    """(images/s over the timed steps, share of their time spent waiting for data)."""
    wait = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, wait = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        images, labels = next(batches)[:2]
        wait += time.perf_counter() - t0
        images, labels = to_device(images, labels, device, channels_last=channels_last)
        loss, _ = train_step(model, images, labels, optimizer, precision=precision, scaler=scaler)
    loss.item()  # wait for the queued GPU work before stopping the clock
    elapsed = time.perf_counter() - start
    return images.shape[0] * steps / elapsed, wait / elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cfg = TrainConfig(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size, device=str(device),
                      precision=precision, channels_last=args.channels_last, compile=args.compile)
    model = build_model(cfg.arch, seed=0).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    net = torch.compile(model) if cfg.compile else model
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    common: dict[str, Any] = {
        "device": device_name(device), "arch": cfg.arch, "batch_size": cfg.batch_size,
        "image_size": cfg.image_size, "precision": precision, "channels_last": cfg.channels_last,
        "compile": cfg.compile, "steps": args.steps, "torch": str(torch.__version__), "python": platform.python_version(),
    }
    run = dict(device=device, precision=precision, scaler=scaler, channels_last=cfg.channels_last,
               steps=args.steps, warmup=args.warmup)

    g = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g)
    labels = torch.randint(0, 2, (cfg.batch_size,), generator=g)
    images, labels = to_device(images, labels, device, channels_last=cfg.channels_last)
    synthetic, _ = _loop(itertools.repeat((images, labels)), net, optimizer, **run)
    rows = [{"input": "synthetic", **common, "images_per_s": synthetic, "data_wait_share": 0.0}]

    if args.data:
        from detector.data.loader import ReadSpec, build_loader

        loader = build_loader(args.data, "train", ReadSpec(image_size=cfg.image_size, train=True, seed=0),
                              batch_size=cfg.batch_size, num_workers=args.num_workers, pin_memory=device.type == "cuda",
                              drop_last=True, normalize=False)
        if len(loader) == 0:
            print(f"{args.data}: fewer train images than one batch of {cfg.batch_size}", file=sys.stderr)
            return 2
        # Cycling re-creates the iterator each epoch; a short data set thus also times worker start-up.
        batches = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
        real, wait_share = _loop(batches, net, optimizer, **run)
        rows.append({"input": f"loader ({args.num_workers} workers)", **common, "images_per_s": real,
                     "data_wait_share": wait_share, "vs_synthetic": real / synthetic})

    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            extra = f", {r['vs_synthetic']:.1%} of synthetic, waiting {r['data_wait_share']:.0%}" if "vs_synthetic" in r else ""
            print(f"{r['input']:<22} {r['images_per_s']:9.1f} images/s  ({r['device']}, {r['arch']}, "
                  f"batch {r['batch_size']}, {r['image_size']} px, {r['precision']}, "
                  f"channels_last={r['channels_last']}, compile={r['compile']}{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
