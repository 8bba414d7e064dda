"""The report's statistics: intervals for every model and data set, tests of each pruned model against the
baseline, and wording that says only what those numbers support.

``detector.report.collect`` calls ``add_statistics`` on the models it collected (it reads the predictions
that the evaluate stage wrote beside each evaluation); ``detector.report.write`` renders the sections below.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from detector.evaluate.statistics import EXACT_BELOW, compare_models
from detector.job.runfolder import RunFolder
from detector.report.tables import Column, markdown

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
ALPHA = 0.05
SEED = 0
DEFAULT_RESAMPLES = 1000


def bootstrap_resamples(run: RunFolder) -> int:
    """``evaluate.bootstrap`` of the run's saved config (``RUN/experiment.yaml``), else the default 1000."""
    from detector.config import load_yaml

    path = run.config
    if not path.is_file():
        return DEFAULT_RESAMPLES
    value = (load_yaml(path).get("evaluate") or {}).get("bootstrap", DEFAULT_RESAMPLES)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: evaluate.bootstrap must be a positive integer, got {value!r}")
    return value


def add_statistics(run: RunFolder, models: list[dict[str, Any]]) -> dict[str, Any]:
    """Add ``intervals`` (every model) and ``vs_baseline`` (pruned models) to each of ``models``; return the
    run's ``statistics`` block (method, resamples, and why anything was left out)."""
    resamples = bootstrap_resamples(run)
    predictions, missing = {}, []
    for m in models:
        path = Path(m["predictions"])
        if path.is_file():
            predictions[m["name"]] = json.loads(path.read_text())
        else:
            missing.append(m["name"])
    baseline = next((m["name"] for m in models if m["sparsity"] == 0), None)
    reference = baseline if baseline in predictions else None
    log.info("statistics: %d models, %d bootstrap resamples, reference %s", len(predictions), resamples, reference)
    results = compare_models(predictions, reference=reference, resamples=resamples, confidence=CONFIDENCE,
                             seed=SEED, alpha=ALPHA) if predictions else {}
    for m in models:
        r = results.get(m["name"], {})
        m["intervals"] = r.get("intervals")
        m["vs_baseline"] = r.get("vs_reference")
    notes = [f"{name}: no predictions file, so no intervals or tests" for name in missing]
    notes += [f"{m['name']}: not compared with the baseline: {m['vs_baseline']['unpaired']}"
              for m in models if isinstance(m.get("vs_baseline"), dict) and "unpaired" in m["vs_baseline"]]
    return {
        "confidence": CONFIDENCE,
        "interval_method": "percentile bootstrap over the images of each data set",
        "bootstrap_resamples": resamples,
        "seed": SEED,
        "paired_test": (f"McNemar: exact binomial when fewer than {EXACT_BELOW} images are discordant, "
                        "otherwise chi-square with continuity correction (1 df)"),
        "alpha": ALPHA,
        "pairing": "images matched by sha256",
        "reference": reference,
        "notes": notes,
    }


def _ci(x: dict[str, Any] | None, *, scale: float = 100.0, unit: str = "%", signed: bool = False) -> str:
    if not x or x.get("estimate") is None:
        return "n/a"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    if scale == 1.0:
        fmt = "{:+.4f}" if signed else "{:.4f}"
    e, lo, hi = (fmt.format(scale * x[k]) for k in ("estimate", "low", "high"))
    return f"{e}{unit} [{lo}, {hi}]"


# The CSV of every interval and test: one row per model, data set and metric.
STATISTICS_COLUMNS = [Column(k) for k in (
    "model", "data_set", "metric", "estimate", "low", "high", "diff_estimate", "diff_low", "diff_high",
    "mcnemar_b", "mcnemar_c", "mcnemar_p", "mcnemar_method")]


def statistics_rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        for name, iv in (m.get("intervals") or {}).items():
            vs = (m.get("vs_baseline") or {}).get(name)
            for k in ("accuracy", "f1", "auc"):
                d = vs[f"{k}_difference"] if vs else {}
                t = vs["mcnemar"] if vs and k == "accuracy" else {}
                rows.append({"model": m["name"], "data_set": name, "metric": k, **{x: iv[k][x] for x in
                             ("estimate", "low", "high")}, "diff_estimate": d.get("estimate"),
                             "diff_low": d.get("low"), "diff_high": d.get("high"), "mcnemar_b": t.get("b"),
                             "mcnemar_c": t.get("c"), "mcnemar_p": t.get("p_value"), "mcnemar_method": t.get("method")})
    return rows


def statistics_section(data: dict[str, Any]) -> list[str]:
    """report.md lines for the statistics (the CSV is ``statistics_rows``)."""
    stats, models = data.get("statistics") or {}, data["models"]
    if not any(m.get("intervals") for m in models):
        return []
    pct = f"{round(100 * stats['confidence'])} %"
    md = [f"## Uncertainty: {pct} confidence intervals and paired tests against the baseline", "",
          f"Intervals: {stats['interval_method']}, {stats['bootstrap_resamples']} resamples (`evaluate.bootstrap`), "
          f"seed {stats['seed']}. Paired tests: {stats['paired_test']}, on the same test images "
          f"({stats['pairing']}); significant means p < {stats['alpha']}.", ""]
    md += _conclusions(models, stats)
    intervals = [{"model": m["name"], "data_set": name, "accuracy": iv["accuracy"], "f1": iv["f1"], "auc": iv["auc"]}
                 for m in models for name, iv in (m.get("intervals") or {}).items()]
    md += [f"### Accuracy, F1 and AUC with {pct} intervals", "", markdown(intervals, [
        Column("model", "Model"), Column("data_set", "Data set"), Column("accuracy", "Accuracy", _ci),
        Column("f1", "F1 (real)", _ci), Column("auc", "AUC", lambda x: _ci(x, scale=1.0, unit=""))])]
    comparisons = []
    for m in models:
        for name, vs in (m.get("vs_baseline") or {}).items():
            if name == "unpaired":
                continue
            t = vs["mcnemar"]
            comparisons.append({"model": m["name"], "data_set": name, "difference": vs["accuracy_difference"],
                                "b": t["b"], "c": t["c"], "p": t["p_value"], "test": t["method"],
                                "conclusion": vs["sentence"].rsplit(": ", 1)[-1]})
    if comparisons:
        md += ["### Each pruned model against the baseline, on the same images", "", markdown(comparisons, [
            Column("model", "Model"), Column("data_set", "Data set"),
            Column("difference", "Accuracy difference (pp)", lambda x: _ci(x, unit="", signed=True)),
            Column("b", "Baseline right, model wrong"), Column("c", "Baseline wrong, model right"),
            Column("p", "McNemar p", lambda p: f"{p:.3g}"), Column("test", "Test"),
            Column("conclusion", "Conclusion")])]
    return md


def _conclusions(models: list[dict[str, Any]], stats: dict[str, Any]) -> list[str]:
    """The claims the numbers support on the combined test set, one sentence per pruned model, then a summary."""
    lines = [f"- {note}" for note in stats.get("notes", [])]
    compared = [(m["name"], m["vs_baseline"]["combined_test"]) for m in models
                if isinstance(m.get("vs_baseline"), dict) and "combined_test" in m["vs_baseline"]]
    if not compared:
        return lines + ([""] if lines else [])
    lines += [f"- {vs['sentence']}." for _, vs in compared]
    lower = [n for n, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] < 0]
    higher = [n for n, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] > 0]
    worst = min(vs["accuracy_difference"]["low"] for _, vs in compared)
    lines.append("")
    if lower:
        lines.append(f"On the combined test set pruning lowered accuracy significantly for {', '.join(lower)}: "
                     "a claim of no loss in accuracy does not hold for these models.")
    if not lower and not higher:
        lines.append("No pruned model's accuracy on the combined test set differs significantly from the "
                     f"baseline's. That is not proof of equal accuracy: the intervals still allow a loss of up to "
                     f"{-100 * min(worst, 0.0):.2f} pp.")
    elif higher:
        lines.append(f"Significantly higher accuracy than the baseline: {', '.join(higher)}.")
    lines.append("")
    return lines


def efficiency_note(models: list[dict[str, Any]]) -> str:
    """What Table 6 shows about size and speed, in words that follow its numbers."""
    base = next((m for m in models if m["sparsity"] == 0), None)
    pruned = [m for m in models if m["sparsity"] > 0]
    if base is None or not pruned:
        return "Size (MB) is the dense saved state dict; Sparse file (MB) the compact export (`detector export`)."
    top = max(pruned, key=lambda m: m["sparsity"])
    b, e = base["efficiency"], top["efficiency"]
    text = (f"At {100 * top['sparsity']:.0f} % ({top.get('pruning_method', 'unstructured')} pruning) the dense file "
            f"is {e['size_mb'] / b['size_mb']:.2f}x and the batch-1 latency {e['latency_ms'] / b['latency_ms']:.2f}x "
            f"the baseline's ({e.get('device', '')}).")
    if top.get("pruning_method", "unstructured") == "unstructured":
        text += (" Unstructured pruning keeps every tensor's shape, so the dense file and the arithmetic stay; "
                 "only the sparse export shrinks")
        if e.get("sparse_size_mb") is not None:
            text += f" (to {e['sparse_size_mb'] / b['size_mb']:.2f}x the baseline's dense file)"
        text += "."
    return text


def semistructured_section(models: list[dict[str, Any]]) -> list[str]:
    """The 2:4 sparsity measurement of the baseline, or the reason it was skipped."""
    base = next((m for m in models if m["sparsity"] == 0 and m.get("semistructured")), None)
    if base is None:
        return []
    s = base["semistructured"]
    md = ["## 2:4 semi-structured sparsity (GPU)", ""]
    if s["status"] != "measured":
        return md + [f"2:4 variant of the baseline: {s['status']}.", ""]
    rows = [{"batch": batch, "dense": t["dense"], "sparse": t["2:4"], "speedup": s["speedup"][batch]}
            for batch, t in s["latency_ms"].items()]
    md += [f"The baseline with 2 of every 4 weights zeroed in {s['layers_2_4']} layers "
           f"({100 * s['weights_covered']:.1f} % of the prunable weights; {s['unsupported_layers']} layers stay "
           f"dense), {s['dtype']} on {s['device']}, image size {s['image_size']}. Latency only: this variant is "
           "not fine-tuned, so no accuracy is claimed for it.", "",
           markdown(rows, [Column("batch", "Batch"), Column("dense", "Dense (ms)", lambda x: f"{x:.3f}"),
                           Column("sparse", "2:4 (ms)", lambda x: f"{x:.3f}"),
                           Column("speedup", "Speed-up", lambda x: f"{x:.2f}x")])]
    return md
