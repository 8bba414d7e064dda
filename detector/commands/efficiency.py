"""Model efficiency as in the paper's Table 6: sparsity, non-zero and total parameters, size on disk,
latency (batch 1, median after warm-up) and throughput (batch 64), on a named device.

  detector efficiency --checkpoint CKPT [CKPT ...]
  detector efficiency --arch resnet50 --sparsities 0,0.1,0.2,0.3,0.4 --json
  detector efficiency --arch resnet50 --sparsities 0,0.4 --method structured
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = ["model", "sparsity", "nonzero_params", "total_params", "size_mb", "sparse_size_mb", "macs", "latency_ms",
           "throughput"]


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated fractions, e.g. 0,0.1,0.2") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each sparsity must be in [0, 1)")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", nargs="+", type=Path, help="measure these models")
    src.add_argument("--arch", help="measure fresh models of this architecture (e.g. resnet50)")
    p.add_argument("--sparsities", type=_sparsities, default=[0.0], help="with --arch: e.g. 0,0.1,0.2,0.3,0.4")
    p.add_argument("--method", choices=["unstructured", "structured"], default="unstructured",
                   help="with --arch: zero weights (global L1) or remove channels (L1) to each sparsity")
    p.add_argument("--image-size", type=int, help="input size (default: the checkpoint's, or 224)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 passes (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batch-1 passes first")
    p.add_argument("--throughput-batch", type=int, default=64)
    p.add_argument("--throughput-repeats", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")


def main(args: argparse.Namespace) -> int:
    from detector.report.tables import markdown

    rows = _measure(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown(rows, COLUMNS + ["device"]), end="")
    return 0


def _measure(args: argparse.Namespace) -> list[dict]:
    from detector.checkpoint import load_model
    from detector.device import resolve_device, resolve_precision
    from detector.evaluate.efficiency import efficiency_row
    from detector.model import build_model
    from detector.prune import prune

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    timing = dict(device=device, precision=precision, repeats=args.repeats, warmup=args.warmup,
                  throughput_batch=args.throughput_batch, throughput_repeats=args.throughput_repeats)
    rows = []
    if args.checkpoint:
        for ckpt in args.checkpoint:
            model, meta = load_model(ckpt)
            row = efficiency_row(model, image_size=args.image_size or int(meta["image_size"]), **timing)
            rows.append({"model": str(ckpt), "arch": meta["arch"], **row})
    else:
        for sparsity in args.sparsities:
            model = build_model(args.arch, seed=0)
            prune(model, sparsity, method=args.method, arch=args.arch)
            row = efficiency_row(model, image_size=args.image_size or 224, **timing)
            label = f"{args.arch} @ {sparsity:g}" + (" (channels removed)" if args.method == "structured" else "")
            rows.append({"model": label, "arch": args.arch, **row})
    return rows
