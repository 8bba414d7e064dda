"""Evaluate checkpoints on every test set in the data (paper Tables 3 and 5, Fig. 5).

  detector evaluate --data DATA --checkpoint CKPT [CKPT ...] --out DIR [--robustness]

Writes DIR/metrics.json (accuracy, precision, recall, F1 per class and macro with Real as the positive
class, ROC AUC, AP, EER, confusion cells named by direction, accuracy at a threshold calibrated on the
data's validation split; per test set and per generator) and DIR/metrics.md (the same as readable tables,
also printed). ``--robustness`` also scores every model under the perturbations of
``detector.evaluate.robustness`` and tests each against the first checkpoint on the same perturbed images.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ["model", "test set", "generator", "samples", "accuracy", "precision", "recall", "f1", "macro_f1",
           "auc", "ap_real", "eer", "fake predicted real", "real predicted fake", "accuracy_calibrated"]
ROBUSTNESS_COLUMNS = ["model", "perturbation", "set", "images", "accuracy", "auc", "vs first checkpoint"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from detector.evaluate.metrics import CALIBRATIONS
    from detector.evaluate.sets import PRIMARY_CHOICES

    p.add_argument("--data", required=True, help="prepared shards (folder with manifest.json)")
    p.add_argument("--checkpoint", required=True, nargs="+", type=Path, help="one or more models")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.json and metrics.md")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threshold", type=float, default=0.5, help="predict Real when P(real) >= this")
    p.add_argument("--calibrate", choices=[*CALIBRATIONS, "none"], default="eer",
                   help="also report accuracy at a threshold chosen on the data's val split (default eer)")
    p.add_argument("--robustness", action="store_true",
                   help="also score under JPEG q95/75/50/30, blur sigma 1/2/3, downscale x0.5/x0.25 and format "
                        "equalisation (test split only)")
    p.add_argument("--primary-set", default="faces140k", choices=PRIMARY_CHOICES,
                   help="the source whose test set the perturbations use when the data has others too")


def _row(model: str, test_set: str, generator: str, m: dict[str, Any]) -> dict[str, Any]:
    cells = m["confusion_matrix"]["cells"]
    return {"model": model, "test set": test_set, "generator": generator, "samples": m["samples"],
            "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "macro_f1": m["macro"]["f1"], "auc": m["auc"], "ap_real": m.get("ap_real"), "eer": m.get("eer"),
            "fake predicted real": cells["fake predicted real"], "real predicted fake": cells["real predicted fake"],
            "accuracy_calibrated": (m.get("at_calibrated") or {}).get("accuracy")}


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


def robustness_rows(results: list[dict[str, Any]], predictions: dict[str, dict[str, Any]]) -> list[dict]:
    """One row per model and perturbation; every model after the first is tested against the first."""
    from detector.evaluate.statistics import compare_robustness

    labels = {name: p["label"] for r in results for name, p in r["robustness"]["perturbations"].items()}
    first = results[0]["name"]
    tests = compare_robustness(predictions, labels, reference=first, resamples=1000)
    rows = []
    for r in results:
        for name, p in r["robustness"]["perturbations"].items():
            vs = tests[name][r["name"]].get("vs_reference", {})
            rows.append({"model": r["name"], "perturbation": p["label"], "set": p["set"], "images": p["images"],
                         "accuracy": p["metrics"]["accuracy"], "auc": p["metrics"]["auc"],
                         "vs first checkpoint": vs.get("sentence", vs.get("unpaired", "-"))})
    return rows


def main(args: argparse.Namespace) -> int:
    from detector.checkpoint import load_model
    from detector.data.loader import manifest_sha256, read_manifest
    from detector.device import resolve_device, resolve_precision
    from detector.evaluate.metrics import calibrate_threshold
    from detector.evaluate.robustness import RobustnessSection, evaluate_robustness
    from detector.evaluate.scoring import score_split
    from detector.evaluate.sets import primary_source
    from detector.io import atomic_write_json, atomic_write_text
    from detector.report.tables import markdown

    if args.robustness and args.split != "test":
        raise ValueError(f"--robustness perturbs the test split; got --split {args.split}")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data_sha = manifest_sha256(args.data)
    manifest = read_manifest(args.data)
    calibrate = args.calibrate != "none" and args.split != "val" and "val" in manifest["splits"]
    primary = primary_source([s for s, c in manifest["splits"].get("test", {}).items() if sum(c.values())],
                             args.primary_set)
    results, predictions = [], {}
    for ckpt in args.checkpoint:
        model, meta = load_model(ckpt, device=device)
        if meta.get("data_manifest_sha256") not in (None, data_sha):
            log.warning("%s was trained on other data (manifest %s, evaluating on %s)",
                        ckpt, str(meta["data_manifest_sha256"])[:12], data_sha[:12])
        scoring = {"image_size": int(meta["image_size"]), "batch_size": args.batch_size, "device": device,
                   "num_workers": args.num_workers, "precision": precision}
        threshold = None
        if calibrate:
            val = score_split(model, args.data, "val", **scoring)
            if len(set(val.labels.tolist())) == 2:
                threshold = calibrate_threshold(val.labels, val.probs_real, method=args.calibrate)
        scored = score_split(model, args.data, args.split, **scoring)
        name = ckpt.stem if ckpt.stem not in ("best", "state") else f"{ckpt.parent.parent.name}/{ckpt.stem}"
        result = {"name": name, "checkpoint": str(ckpt), "arch": meta["arch"], "sparsity": meta.get("sparsity"),
                  "image_size": meta["image_size"], "calibrated_threshold": threshold,
                  "metrics": scored.metrics(threshold=args.threshold, calibrated=threshold)}
        if args.robustness:
            result["robustness"], perturbed = evaluate_robustness(
                model, args.data, RobustnessSection(enabled=True), primary_source=primary, calibrated=threshold,
                **scoring)
            predictions[name] = {"robustness": perturbed}
        results.append(result)
    out = {"data": str(args.data), "split": args.split, "data_manifest_sha256": data_sha, "positive_class": "real",
           "threshold": args.threshold, "calibration": args.calibrate if calibrate else None, "models": results}
    summary, generators = report_rows(results)
    text = (f"# {args.split} metrics ({args.data})\n\nPositive class: real. Threshold {args.threshold}; "
            + (f"accuracy_calibrated: at each model's {args.calibrate} threshold chosen on the val split. "
               if calibrate else "") +
            "Errors by direction: a fake predicted real is a false positive with real as the positive class (the "
            "paper, taking fake as positive, calls it a false negative).\n\n"
            + markdown(summary, COLUMNS)
            + "\n## Per generator\n\n" + markdown(generators, COLUMNS))
    if args.robustness:
        out["robustness_vs_first"] = results[0]["name"]
        text += "\n## Robustness\n\n" + markdown(robustness_rows(results, predictions), ROBUSTNESS_COLUMNS)
    atomic_write_json(args.out / "metrics.json", out)
    atomic_write_text(args.out / "metrics.md", text)
    print(text, end="")
    return 0
