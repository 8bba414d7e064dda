"""Probability that each image is real, from a trained checkpoint.

  detector predict --checkpoint CKPT PATH [PATH ...]      (files or folders, searched recursively)

Images are preprocessed exactly as in evaluation, at the checkpoint's image size; when images are far
from that size (more than 2x larger or smaller), a warning on stderr says so, once. Unreadable files are
reported (in the table, or with an "error" field in --json lines) and do not stop the run; the exit
status is 1 only when no file could be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from detector.commands._common import fail

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="trained model")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--json", action="store_true", help="print JSON lines {path, prob_real, label, error}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threshold", type=float, default=0.5, help="label real when P(real) >= this")


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model
    from detector.evaluate.predict import predict_images, size_mismatch
    from detector.device import resolve_device

    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device=device)
    image_size = int(meta["image_size"])
    ok = bad = 0
    warned = False
    if not args.json:
        print(f"{'prob_real':>9}  {'label':<5}  path")
    for p in predict_images(model, args.paths, image_size=image_size, batch_size=args.batch_size,
                            device=device, threshold=args.threshold, num_workers=args.num_workers):
        ok, bad = (ok + 1, bad) if p.error is None else (ok, bad + 1)
        if p.size is not None and not warned and size_mismatch(p.size, image_size):
            warned = True
            print(f"detector predict: warning: the model was trained at {image_size}x{image_size} px, but "
                  f"{p.path} is {p.size[0]}x{p.size[1]} px; images are resized to {image_size}x{image_size} "
                  "before scoring, and a detector of generated images may not carry over to sizes so far "
                  "from its training (said once, for the first such image)", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"path": p.path, "prob_real": p.prob_real, "label": p.label, "error": p.error}))
        elif p.error is None:
            print(f"{p.prob_real:9.4f}  {p.label:<5}  {p.path}")
        else:
            print(f"{'-':>9}  {'ERROR':<5}  {p.error}")
    if ok + bad == 0:
        return fail("predict", f"no image files found in {' '.join(args.paths)}")
    print(f"{ok} image(s) scored, {bad} unreadable", file=sys.stderr)
    return 0 if ok else 1
