"""Prune a checkpoint to a sparsity: global L1 unstructured (paper §2.3), or L1 channel pruning.

  detector prune --checkpoint CKPT --sparsity 0.3 --out CKPT2 [--method structured] [--permanent]

Unstructured: the output keeps the pruning masks, so a fine-tune from it keeps pruned weights at zero;
--permanent bakes the zeros into plain weights instead (export: no masks, same size on disk). Structured:
whole channels are removed, so the network itself is smaller (no masks).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model to prune")
    p.add_argument("--sparsity", required=True, type=float,
                   help="fraction of the architecture's Conv2d/Linear weights to prune, e.g. 0.3")
    p.add_argument("--method", choices=["unstructured", "structured"], default="unstructured",
                   help="zero single weights (global L1, the paper's) or remove whole channels (L1)")
    p.add_argument("--out", required=True, type=Path, help="pruned checkpoint to write")
    p.add_argument("--permanent", action="store_true", help="unstructured: remove the masks (export) instead of keeping them")


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model, save_checkpoint
    from detector.prune import PruningInfo, prune
    from detector.prune.unstructured import make_pruning_permanent, sparsity_report

    model, meta = load_model(args.checkpoint)
    before = PruningInfo.from_metadata(meta, where=str(args.checkpoint))
    if before.method not in ("none", args.method):
        raise ValueError(f"{args.checkpoint}: already pruned with method {before.method}; prune the unpruned model")
    info = prune(model, args.sparsity, method=args.method, arch=meta["arch"])
    if args.permanent:
        make_pruning_permanent(model)
    # Metrics measured before pruning no longer describe these weights.
    legacy = ("target_sparsity", "pruning_method", "params_removed", "channel_ratio", "channel_multiple",
              "dense_prunable_params")
    save_checkpoint(args.out, model, metadata={
        **{k: v for k, v in meta.items() if k not in legacy}, "metrics": {}, "pruning": info.to_dict(),
        "pruned_from": str(args.checkpoint), "masks": args.method == "unstructured" and not args.permanent,
    })
    r = sparsity_report(model)
    print(f"{args.out}: sparsity {info.achieved:.4f} ({info.method}), non-zero {r['nonzero_params']:,} of "
          f"{info.dense_prunable_params:,} prunable weights ({r['total_params']:,} parameters in all)")
    return 0
