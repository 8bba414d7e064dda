"""Prune a checkpoint with global L1 unstructured pruning (paper §2.3).

  detector prune --checkpoint CKPT --sparsity 0.3 --out CKPT2 [--permanent]

The output keeps the pruning masks, so a fine-tune from it keeps pruned weights at zero; --permanent
bakes the zeros into plain weights instead (export: no masks, same size on disk).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detector.commands._common import fail, user_errors

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model to prune")
    p.add_argument("--sparsity", required=True, type=float, help="fraction of Conv2d/Linear weights to zero, e.g. 0.3")
    p.add_argument("--out", required=True, type=Path, help="pruned checkpoint to write")
    p.add_argument("--permanent", action="store_true", help="remove the masks (export) instead of keeping them")


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model, save_checkpoint
    from detector.pruning import make_pruning_permanent, prune_global_l1, sparsity_report

    try:
        model, meta = load_model(args.checkpoint)
        prune_global_l1(model, args.sparsity)
        if args.permanent:
            make_pruning_permanent(model)
        # Metrics measured before pruning no longer describe these weights.
        save_checkpoint(args.out, model, metadata={
            **meta, "metrics": {}, "target_sparsity": args.sparsity, "pruned_from": str(args.checkpoint),
            "masks": not args.permanent,
        })
    except user_errors() as e:
        return fail("prune", str(e))
    r = sparsity_report(model)
    print(f"{args.out}: sparsity {r['sparsity']:.4f}, non-zero {r['nonzero_params']:,} of "
          f"{r['prunable_params']:,} prunable weights ({r['total_params']:,} parameters in all)")
    return 0
