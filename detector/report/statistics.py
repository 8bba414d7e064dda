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

from detector.evaluate.metrics import EER_DEFINITION
from detector.evaluate.paired import (CLUSTERED_DIFFERENCE_METHOD, CLUSTERED_MCNEMAR_METHOD, DIFFERENCE_METHOD,
                                      MCNEMAR_METHOD)
from detector.evaluate.statistics import compare_models, compare_robustness
from detector.report.roles import baseline, pruned_models
from detector.report.tables import Column, Section, Table, markdown

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
ALPHA = 0.05
SEED = 0


def add_statistics(models: list[dict[str, Any]], *, resamples: int, primary: str = "combined_test") -> dict[str, Any]:
    """Add ``intervals`` (every model) and ``vs_baseline`` (pruned models) to each of ``models``, per
    perturbation ``robustness_intervals`` / ``robustness_vs_baseline`` (the same images, perturbed), and per
    test source made of video frames ``video_intervals`` (video-level accuracy, F1 and AUC, bootstrapped over
    videos); return the run's ``statistics`` block (methods, the unit resampled, resamples, the EER's
    definition, the primary set its conclusions are on, and why anything was left out). Every interval and
    test says its ``unit`` ("image", or "video" where a video's frames count as one) and how many
    ``clusters``. ``resamples``: the run's ``evaluate.bootstrap``."""
    predictions, missing = {}, []
    for m in models:
        path = Path(m["predictions"])
        if path.is_file():
            predictions[m["name"]] = json.loads(path.read_text())
        else:
            missing.append(m["name"])
    base = baseline(models)
    reference = base["name"] if base is not None and base["name"] in predictions else None
    log.info("statistics: %d models, %d bootstrap resamples, reference %s", len(predictions), resamples, reference)
    results = compare_models(predictions, reference=reference, resamples=resamples, confidence=CONFIDENCE,
                             seed=SEED, alpha=ALPHA) if predictions else {}
    for m in models:
        r = results.get(m["name"], {})
        m["intervals"] = r.get("intervals")
        m["vs_baseline"] = r.get("vs_reference")
        m["video_intervals"] = r.get("video_intervals")
    labels = {name: p["label"] for m in models for name, p in ((m.get("robustness") or {}).get("perturbations")
                                                                or {}).items()}
    perturbed = compare_robustness(predictions, labels, reference=reference, resamples=resamples,
                                   confidence=CONFIDENCE, seed=SEED, alpha=ALPHA) if labels else {}
    for m in models:
        mine = {pert: r[m["name"]] for pert, r in perturbed.items() if m["name"] in r}
        m["robustness_intervals"] = {pert: r["intervals"] for pert, r in mine.items()} or None
        m["robustness_vs_baseline"] = {pert: r["vs_reference"] for pert, r in mine.items() if "vs_reference" in r} or None
    notes = [f"{name}: no predictions file, so no intervals or tests" for name in missing]
    notes += [f"{m['name']}: not compared with the baseline: {m['vs_baseline']['unpaired']}"
              for m in models if isinstance(m.get("vs_baseline"), dict) and "unpaired" in m["vs_baseline"]]
    return {
        "confidence": CONFIDENCE,
        "interval_method": "percentile bootstrap over the videos and images of each data set (a video's frames "
                           "drawn together)",
        "resampling_unit": "videos (Celeb-DF frames grouped by video), images otherwise",
        "bootstrap_resamples": resamples,
        "seed": SEED,
        "paired_test": f"McNemar {MCNEMAR_METHOD}; on a set with frames of a video, the {CLUSTERED_MCNEMAR_METHOD}",
        "difference_interval": f"{DIFFERENCE_METHOD}; on a set with frames of a video, {CLUSTERED_DIFFERENCE_METHOD}",
        "video_interval_method": "percentile bootstrap over videos of the video-level accuracy, F1 and AUC (a "
                                 "video's score: the mean of its frames' probabilities of real)",
        "eer_definition": EER_DEFINITION,
        "alpha": ALPHA,
        "pairing": "images matched by sha256",
        "reference": reference,
        "primary_set": primary,
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
    "diff_method", "mcnemar_b", "mcnemar_c", "mcnemar_p", "mcnemar_method")]


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
                             "diff_low": d.get("low"), "diff_high": d.get("high"),
                             "diff_method": (d.get("method", "percentile bootstrap") if d else None),
                             "mcnemar_b": t.get("b"),
                             "mcnemar_c": t.get("c"), "mcnemar_p": t.get("p_value"), "mcnemar_method": t.get("method")})
    return rows


def statistics_section(data: dict[str, Any]) -> Section:
    """The intervals and tests in report.md, every one of them in statistics.csv (``statistics_rows``)."""
    stats, models = data.get("statistics") or {}, data["models"]
    if not any(m.get("intervals") for m in models):
        return Section()
    pct = f"{round(100 * stats['confidence'])} %"
    md = [f"Each model's own accuracy, F1 and AUC: {stats['interval_method']}, {stats['bootstrap_resamples']} "
          f"resamples (`evaluate.bootstrap`), seed {stats['seed']}. A pruned model against the baseline, on the "
          f"same test images ({stats['pairing']}): {stats['paired_test']}; the interval of the accuracy "
          f"difference is {stats['difference_interval']}, so it excludes 0 exactly when p < {stats['alpha']}: "
          "the interval and the conclusion agree by construction (F1 and AUC differences in statistics.csv are "
          "paired bootstrap intervals; no conclusion is drawn from them). Significant means p < "
          f"{stats['alpha']}. With few discordant images the score test can exceed its nominal level slightly "
          "(Fagerland, Lydersen & Laake 2013, who recommend it where that is acceptable); the counts b and c "
          "are in the table below.", ""]
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
                                "b": t["b"], "c": t["c"], "p": t["p_value"],
                                "conclusion": vs["sentence"].rsplit(": ", 1)[-1]})
    if comparisons:
        md += ["### Each pruned model against the baseline, on the same images", "", markdown(comparisons, [
            Column("model", "Model"), Column("data_set", "Data set"),
            Column("difference", f"Accuracy difference (pp, {pct} CI)", lambda x: _ci(x, unit="", signed=True)),
            Column("b", "Baseline right, model wrong"), Column("c", "Baseline wrong, model right"),
            Column("p", "McNemar p", lambda p: f"{p:.3g}"), Column("conclusion", "Conclusion")])]
    return Section(f"Uncertainty: {pct} confidence intervals and paired tests against the baseline", md,
                   [Table("statistics.csv", statistics_rows(models), STATISTICS_COLUMNS)])


def _pp(x: float) -> str:
    """A loss in percentage points as the sentence needs it: never "-0.00", never "0.00" for a loss > 0."""
    value = 100 * x
    return "less than 0.01 pp" if 0 < value < 0.005 else f"{value:.2f} pp"


def set_words(name: str) -> str:
    """How a sentence names a data set: "the combined test set", "the faces140k test set"."""
    if name in ("combined_test", "combined_val"):
        return f"the combined {'test' if name == 'combined_test' else 'validation'} set"
    return f"the {name} test set"


def _conclusions(models: list[dict[str, Any]], stats: dict[str, Any]) -> list[str]:
    """The claims the numbers support on the primary set (``stats["primary_set"]``), one sentence per pruned
    model, then a summary that names every model once: significantly lower, significantly higher, or no
    difference detected."""
    lines = [f"- {note}" for note in stats.get("notes", [])]
    primary = stats.get("primary_set", "combined_test")
    where = f"On {set_words(primary)} (the primary set)"
    compared = [(m["name"], m["vs_baseline"][primary]) for m in models
                if isinstance(m.get("vs_baseline"), dict) and primary in m["vs_baseline"]]
    if not compared:
        return lines + ([""] if lines else [])
    lines += [f"- {vs['sentence']}." for _, vs in compared]
    lower = [(n, vs) for n, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] < 0]
    higher = [(n, vs) for n, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] > 0]
    same = [(n, vs) for n, vs in compared if not vs["significant"]]
    lines.append("")
    if lower:
        lines += [f"{where} pruning lowered accuracy significantly for "
                  f"{', '.join(n for n, _ in lower)}: a claim of no loss in accuracy does not hold for these "
                  "models.", ""]
    if higher:
        lines += [f"{where}, significantly higher accuracy than the baseline: {', '.join(n for n, _ in higher)} "
                  "(see \"Pruning alone, and after fine-tuning\" for how many more epochs of training they had).", ""]
    if same:
        names = ", ".join(n for n, _ in same)
        worst_name, worst = min(same, key=lambda x: x[1]["accuracy_difference"]["low"])
        low = worst["accuracy_difference"]["low"]
        text = (f"{where} no pruned model's accuracy differs significantly from the baseline's. "
                if len(same) == len(compared) else
                f"{where} the accuracy of {names} does not differ significantly from the baseline's. ")
        if low < 0:
            text += (f"That is not proof of equal accuracy: the intervals still allow a loss of up to "
                     f"{_pp(-low)} ({worst_name}).")
        else:
            text += "The intervals' lower ends are at 0: they allow no loss, and show no gain."
        lines += [text, ""]
    return lines


def _ranges_overlap(e: dict[str, Any], b: dict[str, Any], low: str, high: str) -> bool | None:
    if any(x.get(k) is None for x in (e, b) for k in (low, high)):
        return None
    return e[low] <= b[high] and b[low] <= e[high]


TIMINGS = {"latency": ("latency_ms", "latency_p10_ms", "latency_p90_ms"),
           "throughput": ("throughput", "throughput_min", "throughput_max")}


def _timing(e: dict[str, Any], b: dict[str, Any], what: str) -> tuple[float, str] | None:
    """(model / baseline, whether that is beyond the spread of their repeats) for latency or throughput."""
    key, low, high = TIMINGS[what]
    if not (e.get(key) and b.get(key)):
        return None
    overlap = _ranges_overlap(e, b, low, high)
    return e[key] / b[key], {True: "within noise", False: "beyond the spread", None: "no spread recorded"}[overlap]


def timing_flag(e: dict[str, Any], b: dict[str, Any]) -> str:
    """A model's latency and throughput against the baseline's, and whether the difference is larger than
    the spread of their repeats (on a shared CPU the load between two measurements moves them too)."""
    found = {what: _timing(e, b, what) for what in TIMINGS}
    same_work = e.get("macs") is not None and e.get("macs") == b.get("macs")
    out = []
    for what, x in found.items():
        if x is not None:
            ratio, verdict = x
            if verdict == "beyond the spread" and same_work:
                verdict += "; same GMACs, so from the load, not from pruning"
            out.append(f"{what} {ratio:.2f}x ({verdict})")
    return "; ".join(out)


def _devices(models: list[dict[str, Any]]) -> str:
    names = sorted({str(m["efficiency"].get("device")) for m in models})
    return names[0] if len(names) == 1 else "the devices named in the table"


def efficiency_note(models: list[dict[str, Any]]) -> str:
    """What Table 6's columns measure, and what its numbers show about size and speed, in words that follow them."""
    base = baseline(models)
    e0 = (base or models[0])["efficiency"]
    text = ("State dict: the bytes of the model's dense saved state dict (masks made permanent) / 2^20, the "
            "paper's \"size\". Model file: `models/<model>.pt` as it lies on disk; an unstructured model's file "
            "keeps its pruning masks beside the weights, so it is larger than the baseline's. Sparse export: "
            "`detector export --format sparse` (the non-zero weights and a bit mask). All sizes in MiB (2^20 "
            f"bytes). Latency: median of {e0.get('repeats', 'n')} forward passes at batch 1, with the 10th and "
            f"90th percentile; throughput: images/s over {e0.get('throughput_repeats', 'several')} passes at batch "
            f"{e0.get('throughput_batch', 'n/a')}, with the slowest and fastest pass. The models were timed one after "
            f"another on {_devices(models)}; a timing counts as different from the baseline's only where the "
            "two spreads do not overlap (\"within noise\" otherwise); on a CPU shared with other work even that is "
            "weak evidence.")
    pruned = pruned_models(models)
    if base is None or not pruned:
        return text
    top = max(pruned, key=lambda m: m["sparsity"])
    b, e = base["efficiency"], top["efficiency"]
    method = top.get("pruning_method") or "unstructured"
    latency = _timing(e, b, "latency")
    text += (f" At {100 * top['sparsity']:.0f} % ({method} pruning) the state dict is "
             f"{e['size_mb'] / b['size_mb']:.2f}x the baseline's"
             + (f" and the batch-1 latency {latency[0]:.2f}x ({latency[1]})." if latency else "."))
    if method == "unstructured":
        text += (" Unstructured pruning keeps every tensor's shape, so the state dict and the arithmetic stay "
                 "(GMACs are equal): any difference in latency or throughput between these models is measurement "
                 "noise, not an effect of pruning. Only the sparse export shrinks")
        if e.get("sparse_size_mb") is not None:
            text += f" (to {e['sparse_size_mb'] / b['size_mb']:.2f}x the baseline's state dict)"
        text += "."
    return text


def semistructured_section(data: dict[str, Any]) -> Section:
    """The 2:4 sparsity measurement of the baseline, or the reason it was skipped."""
    base = baseline(data["models"])
    if base is None or not base.get("semistructured"):
        return Section()
    s = base["semistructured"]
    title = "2:4 semi-structured sparsity (GPU)"
    if s["status"] != "measured":
        return Section(title, [f"2:4 variant of the baseline: {s['status']}.", ""])
    rows = [{"batch": batch, "dense": t["dense"], "sparse": t["2:4"], "speedup": s["speedup"][batch]}
            for batch, t in s["latency_ms"].items()]
    md = [f"The baseline with 2 of every 4 weights zeroed in {s['layers_2_4']} layers "
          f"({100 * s['weights_covered']:.1f} % of the prunable weights; {s['unsupported_layers']} layers stay "
          f"dense), {s['dtype']} on {s['device']}, image size {s['image_size']}. Latency only: this variant is "
          "not fine-tuned, so no accuracy is claimed for it.", "",
          markdown(rows, [Column("batch", "Batch"), Column("dense", "Dense (ms)", lambda x: f"{x:.3f}"),
                          Column("sparse", "2:4 (ms)", lambda x: f"{x:.3f}"),
                          Column("speedup", "Speed-up", lambda x: f"{x:.2f}x")])]
    return Section(title, md)
