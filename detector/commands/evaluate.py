"""Evaluate checkpoints on every test set in the data (paper Tables 3 and 5, Fig. 5).

  detector evaluate --data DATA --checkpoint CKPT [CKPT ...] --out DIR

Writes DIR/metrics.json (accuracy, precision, recall, F1 per class and macro with Real as the positive
class, ROC AUC, labelled confusion matrices; per test set and per generator) and DIR/metrics.md (the
same as readable tables, also printed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ["model", "test set", "generator", "samples", "accuracy", "precision", "recall", "f1", "macro_f1",
           "auc", "fake→real", "real→fake"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared shards (folder with manifest.json)")
    p.add_argument("--checkpoint", required=True, nargs="+", type=Path, help="one or more models")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.json and metrics.md")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threshold", type=float, default=0.5, help="predict Real when P(real) >= this")


def _row(model: str, test_set: str, generator: str, m: dict[str, Any]) -> dict[str, Any]:
    (tn, fp), (fn, tp) = m["confusion_matrix"]["matrix"]
    return {"model": model, "test set": test_set, "generator": generator, "samples": m["samples"],
            "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "macro_f1": m["macro"]["f1"], "auc": m["auc"], "fake→real": fp, "real→fake": fn}


def report_rows(results: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(one row per model and test set, one row per model, test set and generator)."""
    summary, generators = [], []
    for r in results:
        name, metrics = r["name"], r["metrics"]
        for source, per in metrics["sources"].items():
            summary.append(_row(name, source, "all", per["all"]))
            for gen, m in per["generators"].items():
                generators.append(_row(name, source, gen, m))
        summary.append(_row(name, "all", "all", metrics["all"]))
    return summary, generators


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model
    from detector.data.loader import manifest_sha256
    from detector.io import atomic_write_json, atomic_write_text
    from detector.evaluate.metrics import evaluate_split
    from detector.report.tables import markdown
    from detector.device import resolve_device, resolve_precision

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data_sha = manifest_sha256(args.data)
    results = []
    for ckpt in args.checkpoint:
        model, meta = load_model(ckpt, device=device)
        if meta.get("data_manifest_sha256") not in (None, data_sha):
            log.warning("%s was trained on other data (manifest %s, evaluating on %s)",
                        ckpt, str(meta["data_manifest_sha256"])[:12], data_sha[:12])
        scored = evaluate_split(model, args.data, args.split, image_size=int(meta["image_size"]),
                                batch_size=args.batch_size, device=device, num_workers=args.num_workers,
                                precision=precision, threshold=args.threshold)
        results.append({
            "name": ckpt.stem if ckpt.stem not in ("best", "state") else f"{ckpt.parent.parent.name}/{ckpt.stem}",
            "checkpoint": str(ckpt),
            "arch": meta["arch"],
            "sparsity": meta.get("sparsity"),
            "image_size": meta["image_size"],
            "metrics": scored["metrics"],
        })
    out = {"data": str(args.data), "split": args.split, "data_manifest_sha256": data_sha, "positive_class": "real",
           "threshold": args.threshold, "models": results}
    summary, generators = report_rows(results)
    text = (f"# {args.split} metrics ({args.data})\n\nPositive class: real. Threshold {args.threshold}. "
            "fake→real = fakes called real (false positives), real→fake = reals called fake.\n\n"
            + markdown(summary, COLUMNS)
            + "\n## Per generator\n\n" + markdown(generators, COLUMNS))
    atomic_write_json(args.out / "metrics.json", out)
    atomic_write_text(args.out / "metrics.md", text)
    print(text, end="")
    return 0
