"""Decode once: derive a dataset of decoded, resized pixels from a prepared one.

  detector pixels DATA --out DATA-224 [--size 224] [--workers N]

Every later epoch then only copies and flips the stored pixels: the same batches as from DATA, a fraction
of the CPU, about 6x the bytes of 256 px JPEGs (docs/data.md). Atomic and resumable, like prepare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detector.data.pixels import MANIFEST, derive_pixels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="a dataset written by `detector prepare` (folder or URI)")
    parser.add_argument("--out", required=True, type=Path, help="the pixel dataset's folder")
    parser.add_argument("--size", type=int, default=224, help="image size the loader will ask for (default 224)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes, one shard each (default: the CPUs this process may use, fewer for a "
                             "small dataset)")


def main(args: argparse.Namespace) -> int:
    manifest = derive_pixels(args.data, args.out, size=args.size, workers=args.workers)
    total = sum(s["rows"] for s in manifest["shards"])
    size = sum(s["bytes"] for s in manifest["shards"])
    print(f"{total} images as {args.size}x{args.size} pixels in {len(manifest['shards'])} shards, "
          f"{size / 1e6:.1f} MB: {args.out / MANIFEST}")
    return 0
