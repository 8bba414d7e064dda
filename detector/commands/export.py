"""Export a model for deployment, and check the export against the model.

  detector export --checkpoint CKPT --format sparse --out model.sparse [--fp16]
  detector export --checkpoint CKPT --format dense --out model.pt
  detector export --checkpoint CKPT --format onnx --out model.onnx

sparse: bit mask of the non-zero weights plus their values, compressed; its size falls with sparsity
(the dense file does not). Every command that takes --checkpoint reads it. dense: a plain checkpoint
with pruning made permanent. onnx: input `images` (N, 3, S, S), output `logits` (N, 1), dynamic batch.

After writing, the export is loaded back and run beside the model on random images: the sparse (float32)
and dense files must give identical outputs, a --fp16 file outputs within float16 rounding, the ONNX
graph (in ONNX Runtime) outputs within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model to export (any checkpoint or export)")
    p.add_argument("--format", required=True, choices=["sparse", "dense", "onnx"], dest="fmt")
    p.add_argument("--out", required=True, type=Path, help="file to write")
    p.add_argument("--fp16", action="store_true", help="sparse only: store weight values as float16 (not exact)")
    p.add_argument("--no-check", action="store_true", help="skip loading the export back and comparing outputs")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    result = _export(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = (f"{result['path']}: {result['format']}, {result['size_mb']:.2f} MiB "
                f"({result['ratio']:.3f}x the dense {result['dense_size_mb']:.2f} MiB file)")
        if "max_abs_diff" in result:
            line += f"; reloaded outputs differ by at most {result['max_abs_diff']:.3g}"
        print(line)
    return 0


def _export(args: argparse.Namespace) -> dict:
    import torch

    from detector.checkpoint import load_model
    from detector.export import export_model, onnx_max_abs_diff

    model, meta = load_model(args.checkpoint)
    metadata = {**meta, "exported_from": str(args.checkpoint)}
    result = export_model(model, args.out, fmt=args.fmt, metadata=metadata, fp16=args.fp16)
    if args.no_check:
        return result
    size = int(meta["image_size"])
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    if args.fmt == "onnx":
        diff, tolerance = onnx_max_abs_diff(args.out, model, images), ONNX_TOLERANCE
    else:
        reloaded, _ = load_model(args.out)
        with torch.inference_mode():
            diff = float((reloaded(images) - model(images)).abs().max())
        tolerance = FP16_TOLERANCE if args.fp16 else 0.0
    if diff > tolerance:
        raise ValueError(f"{args.out}: the export's outputs differ from the model's by {diff:.3g} "
                         f"(allowed {tolerance:g}); the file is kept for inspection")
    return {**result, "max_abs_diff": diff}
