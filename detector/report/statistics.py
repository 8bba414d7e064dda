"""The report's statistics: intervals for every model and data set, tests of each pruned model against each
reference the run has (the equal-budget control, whose tests are the verdicts, and the baseline, the paper's
view, named with the epochs each side had), and wording that says only what those numbers support.

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
from detector.report.roles import (baseline, beside_reference, comparison_key, control, epochs_run, labelled,
                                   no_control_note, pruned_models, reference, reference_words, role)
from detector.report.tables import Column, Section, Table, markdown

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
ALPHA = 0.05
SEED = 0


def _against(ref: dict[str, Any] | None, models: list[dict[str, Any]], predictions: dict[str, Any],
             perturbations: dict[str, str], resamples: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every model's intervals and tests against ``ref`` (None: intervals only), on the clean sets and per
    perturbation: model -> (its ``compare_models`` result, perturbation -> its ``compare_robustness`` result)."""
    # The statistics name models by their keys, so the keys are how a sentence names each model: beside the
    # baseline, with the epochs each had (a pruned model had the baseline's and its fine-tune's).
    beside_baseline = ref is not None and role(ref) == "baseline"
    names = {m["name"]: labelled(m, models) if beside_baseline else m["name"] for m in models
             if m["name"] in predictions}
    named = {names[n]: predictions[n] for n in names}
    ref_name = names[ref["name"]] if ref is not None else None
    settings = dict(resamples=resamples, confidence=CONFIDENCE, seed=SEED, alpha=ALPHA)
    clean = compare_models(named, reference=ref_name, **settings) if named else {}
    perturbed = compare_robustness(named, perturbations, reference=ref_name, **settings) if perturbations else {}
    return {n: (clean.get(label, {}), {p: by_model[label] for p, by_model in perturbed.items() if label in by_model})
            for n, label in names.items()}


def add_statistics(models: list[dict[str, Any]], *, resamples: int, primary: str = "combined_test") -> dict[str, Any]:
    """Add ``intervals`` (every model) and the tests against each reference the run has, ``vs_control`` and
    ``vs_baseline`` (None where that reference is absent, or is the model), to each of ``models``; per
    perturbation likewise ``robustness_intervals``, ``robustness_vs_control`` and ``robustness_vs_baseline``
    (the same images, perturbed); and per test source made of video frames ``video_intervals`` (video-level
    accuracy, F1 and AUC, bootstrapped over videos). Return the run's ``statistics`` block (methods, the unit
    resampled, resamples, the EER's definition, the primary set its conclusions are on, and why anything was
    left out). Every interval and test says its ``unit`` ("image", or "video" where a video's frames count as
    one) and how many ``clusters``. ``resamples``: the run's ``evaluate.bootstrap``."""
    predictions, missing = {}, []
    for m in models:
        path = Path(m["predictions"])
        if path.is_file():
            predictions[m["name"]] = json.loads(path.read_text())
        else:
            missing.append(m["name"])
    # The control first: its comparisons are the verdicts; the baseline's are the paper's view.
    references = [r for r in (control(models), baseline(models)) if r is not None and r["name"] in predictions]
    reference = references[0]["name"] if references else None
    log.info("statistics: %d models, %d bootstrap resamples, reference %s", len(predictions), resamples, reference)
    labels = {name: p["label"] for m in models for name, p in ((m.get("robustness") or {}).get("perturbations")
                                                                or {}).items()}
    for m in models:
        m.update(intervals=None, video_intervals=None, vs_control=None, vs_baseline=None,
                 robustness_intervals=None, robustness_vs_control=None, robustness_vs_baseline=None)
    notes = [f"{name}: no predictions file, so no intervals or tests" for name in missing]
    for k, ref in enumerate(references or [None]):
        key = comparison_key(ref)
        for name, (r, mine) in _against(ref, models, predictions, labels, resamples).items():
            m = next(m for m in models if m["name"] == name)
            if k == 0:  # each model's own intervals, from the first reference's draws
                m["intervals"] = r.get("intervals")
                m["video_intervals"] = r.get("video_intervals")
                m["robustness_intervals"] = {p: x["intervals"] for p, x in mine.items()} or None
            m[key] = r.get("vs_reference")
            m[f"robustness_{key}"] = {p: x["vs_reference"] for p, x in mine.items() if "vs_reference" in x} or None
            if ref is not None and "unpaired" in (m[key] or {}):
                notes.append(f"{name}: not compared with {ref['name']}: {m[key]['unpaired']}")
    videos = any(iv.get("unit") == "video" for m in models for iv in (m.get("intervals") or {}).values())
    return {
        "confidence": CONFIDENCE,
        "interval_method": ("percentile bootstrap over the videos and images of each data set (a video's frames "
                            "drawn together)" if videos else "percentile bootstrap over the images of each data set"),
        "resampling_unit": ("videos (Celeb-DF frames grouped by video), images otherwise" if videos else
                            "images (no data set holds frames of a video)"),
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
        "references": {comparison_key(r): r["name"] for r in references},
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


# The CSV of every interval and test: one row per model, data set, metric and reference compared with.
STATISTICS_COLUMNS = [Column(k) for k in (
    "model", "data_set", "metric", "estimate", "low", "high", "reference", "diff_estimate", "diff_low", "diff_high",
    "diff_method", "mcnemar_b", "mcnemar_c", "mcnemar_p", "mcnemar_method")]
COMPARISONS = ("vs_control", "vs_baseline")  # each model's tests, against each reference (roles.comparison_key)


def statistics_rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model's intervals once per reference it was compared with (once, with no reference, otherwise)."""
    names = {comparison_key(r): r["name"] for r in (control(models), baseline(models)) if r is not None}
    rows = []
    for m in models:
        against = [k for k in COMPARISONS if m.get(k) and "unpaired" not in m[k]] or [None]
        for key in against:
            for name, iv in (m.get("intervals") or {}).items():
                vs = (m.get(key) or {}).get(name) if key else None
                for k in ("accuracy", "f1", "auc"):
                    d = vs[f"{k}_difference"] if vs else {}
                    t = vs["mcnemar"] if vs and k == "accuracy" else {}
                    rows.append({"model": m["name"], "data_set": name, "metric": k,
                                 **{x: iv[k][x] for x in ("estimate", "low", "high")},
                                 "reference": names.get(key) if vs else None, "diff_estimate": d.get("estimate"),
                                 "diff_low": d.get("low"), "diff_high": d.get("high"),
                                 "diff_method": (d.get("method", "percentile bootstrap") if d else None),
                                 "mcnemar_b": t.get("b"), "mcnemar_c": t.get("c"), "mcnemar_p": t.get("p_value"),
                                 "mcnemar_method": t.get("method")})
    return rows


def _definitions(stats: dict[str, Any]) -> str:
    """What the EER is and what the bootstrap resamples, as the statistics block states them."""
    eer = stats.get("eer_definition") or (
        "the error rate where the share of fakes predicted real equals the share of reals predicted fake, "
        "interpolated linearly between neighbouring thresholds (detector.evaluate.metrics.equal_error_rate)")
    unit = stats.get("resampling_unit") or stats.get("unit") or (
        "the image: every image is drawn independently, frames of one video included")
    return f"EER: {eer}. Unit resampled: {unit}."


def _comparison_table(models: list[dict[str, Any]], shown: list[dict[str, Any]], key: str, ref_title: str,
                      pct: str, epochs: bool = False) -> str:
    """The paired tests of ``shown`` against one reference (``key``: ``vs_control`` or ``vs_baseline``)."""
    rows = []
    for m in shown:
        tests = m.get(key) or {}
        if "unpaired" in tests:  # said in the notes above
            continue
        for name, vs in tests.items():
            t = vs["mcnemar"]
            rows.append({"model": m["name"], "epochs": epochs_run(m, models), "data_set": name,
                         "difference": vs["accuracy_difference"], "b": t["b"], "c": t["c"], "p": t["p_value"],
                         "conclusion": vs["sentence"].rsplit(": ", 1)[-1]})
    if not rows:
        return ""
    return markdown(rows, [
        Column("model", "Model"), *([Column("epochs", "Epochs run", lambda x: x or "not recorded")] if epochs else []),
        Column("data_set", "Data set"),
        Column("difference", f"Accuracy difference (pp, {pct} CI)", lambda x: _ci(x, unit="", signed=True)),
        Column("b", f"{ref_title} right, model wrong"), Column("c", f"{ref_title} wrong, model right"),
        Column("p", "McNemar p", lambda p: f"{p:.3g}"), Column("conclusion", "Conclusion")])


def statistics_section(data: dict[str, Any]) -> Section:
    """The intervals and tests in report.md, every one of them in statistics.csv (``statistics_rows``)."""
    stats, models = data.get("statistics") or {}, data["models"]
    if not any(m.get("intervals") for m in models):
        return Section()
    pct = f"{round(100 * stats['confidence'])} %"
    ref, ref_words = reference(models), reference_words(models)
    md = [f"Each model's own accuracy, F1 and AUC: {stats['interval_method']}, {stats['bootstrap_resamples']} "
          f"resamples (`evaluate.bootstrap`), seed {stats['seed']}. {_definitions(stats)} A pruned model against "
          f"{ref_words}, on the same test images ({stats['pairing']}): {stats['paired_test']}; the interval of "
          f"the accuracy difference is {stats['difference_interval']}, so it excludes 0 exactly when p < "
          f"{stats['alpha']}: the interval and the conclusion agree by construction (F1 and AUC differences in "
          "statistics.csv are paired bootstrap intervals; no conclusion is drawn from them). Significant means "
          f"p < {stats['alpha']}. With few discordant images the score test can exceed its nominal level "
          "slightly (Fagerland, Lydersen & Laake 2013, who recommend it where that is acceptable); the counts b "
          "and c are in the table below.", ""]
    note = no_control_note(models)
    md += [note, ""] if note else []
    md += _conclusions(models, stats)
    intervals = [{"model": m["name"], "data_set": name, "accuracy": iv["accuracy"], "f1": iv["f1"], "auc": iv["auc"]}
                 for m in models for name, iv in (m.get("intervals") or {}).items()]
    md += [f"### Accuracy, F1 and AUC with {pct} intervals", "", markdown(intervals, [
        Column("model", "Model"), Column("data_set", "Data set"), Column("accuracy", "Accuracy", _ci),
        Column("f1", "F1 (real)", _ci), Column("auc", "AUC", lambda x: _ci(x, scale=1.0, unit=""))])]
    key = comparison_key(ref)
    table = _comparison_table(models, pruned_models(models), key, "Control" if key == "vs_control" else "Baseline",
                              pct, epochs=key == "vs_baseline")
    if table:
        md += [f"### Each pruned model against {ref_words}, on the same images", "", table]
    # the control first: its row is what the extra epochs do without pruning
    paper = (_comparison_table(models, [ref, *pruned_models(models)], "vs_baseline", "Baseline", pct, epochs=True)
             if key == "vs_control" else "")
    if paper:
        base_epochs = epochs_run(baseline(models), models) or "not recorded"
        md += ["### The paper's view: every model against the baseline, with the epochs each had", "",
               f"The paper compares each pruned model with the baseline (epochs run: {base_epochs}), although a "
               "pruned model had its fine-tune's epochs on top of the baseline's; the row of the control, "
               f"{ref['name']}, shows what those extra epochs do without pruning. Not the verdicts: those are "
               f"against {ref_words} above.", "", paper]
    return Section(f"Uncertainty: {pct} confidence intervals and paired tests against "
                   f"{'the control' if key == 'vs_control' else 'the baseline'}", md,
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
    """The claims the numbers support on the primary set (``stats["primary_set"]``) against the reference
    (the control, else the baseline, with the epochs each had), one sentence per pruned model, then a
    summary that names every model once: significantly lower, significantly higher, or no difference."""
    lines = [f"- {note}" for note in stats.get("notes", [])]
    primary = stats.get("primary_set", "combined_test")
    where = f"On {set_words(primary)} (the primary set)"
    key, ref = comparison_key(reference(models)), reference_words(models)
    compared = [(m, m[key][primary]) for m in pruned_models(models)
                if isinstance(m.get(key), dict) and primary in m[key]]
    if not compared:
        return lines + ([""] if lines else [])
    lines += [f"- {vs['sentence']}." for _, vs in compared]
    lower = [m for m, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] < 0]
    higher = [m for m, vs in compared if vs["significant"] and vs["accuracy_difference"]["estimate"] > 0]
    same = [(m, vs) for m, vs in compared if not vs["significant"]]

    def names(ms: list[dict[str, Any]]) -> str:
        return ", ".join(beside_reference(m, models) for m in ms)

    lines.append("")
    if lower:
        lines += [f"{where} pruning lowered accuracy significantly against {ref} for {names(lower)}: a claim of "
                  "no loss in accuracy does not hold for these models.", ""]
    if higher:
        lines += [f"{where}, significantly higher accuracy than {ref}: {names(higher)}"
                  + (" (the extra epochs are a likelier cause than pruning: see \"Pruning alone, and after "
                     "fine-tuning\")." if key == "vs_baseline" else "."), ""]
    if same:
        worst, vs = min(same, key=lambda x: x[1]["accuracy_difference"]["low"])
        low = vs["accuracy_difference"]["low"]
        text = (f"{where} no pruned model's accuracy differs significantly from that of {ref}. "
                if len(same) == len(compared) else
                f"{where} the accuracy of {names([m for m, _ in same])} does not differ significantly from that "
                f"of {ref}. ")
        if low < 0:
            text += (f"That is not proof of equal accuracy: the intervals still allow a loss of up to "
                     f"{_pp(-low)} ({worst['name']}).")
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


def timing_ratio(e: dict[str, Any], b: dict[str, Any], what: str) -> tuple[float, str] | None:
    """(model / reference, whether that is beyond the spread of their repeats) for latency or throughput."""
    key, low, high = TIMINGS[what]
    if not (e.get(key) and b.get(key)):
        return None
    overlap = _ranges_overlap(e, b, low, high)
    return e[key] / b[key], {True: "within noise", False: "beyond the spread", None: "no spread recorded"}[overlap]


def timing_flag(e: dict[str, Any], b: dict[str, Any]) -> str:
    """A model's latency and throughput against a reference's (``b``), and whether the difference is larger
    than the spread of their repeats (on a shared CPU the load between two measurements moves them too)."""
    found = {what: timing_ratio(e, b, what) for what in TIMINGS}
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
    """What Table 6's columns measure, and what its numbers show about size and speed against the reference
    (the control, else the baseline), in words that follow them."""
    ref = reference(models)
    e0 = (ref or models[0])["efficiency"]
    whose = f"{ref['name']}'s" if ref else "reference's"
    text = ("State dict: the bytes of the model's dense saved state dict (masks made permanent) / 2^20, the "
            "paper's \"size\". Model file: `models/<model>.pt` as it lies on disk; an unstructured model's file "
            "keeps its pruning masks beside the weights, so it is larger than a dense model's. Sparse export: "
            "`detector export --format sparse` (the non-zero weights and a bit mask). All sizes in MiB (2^20 "
            f"bytes). Latency: median of {e0.get('repeats', 'n')} forward passes at batch 1, with the 10th and "
            f"90th percentile; throughput: images/s over {e0.get('throughput_repeats', 'several')} passes at batch "
            f"{e0.get('throughput_batch', 'n/a')}, with the slowest and fastest pass. The models were timed one after "
            f"another on {_devices(models)}; a timing counts as different from the {whose} only where the "
            "two spreads do not overlap (\"within noise\" otherwise); on a CPU shared with other work even that is "
            "weak evidence.")
    pruned = pruned_models(models)
    if ref is None or not pruned:
        return text
    top = max(pruned, key=lambda m: m["sparsity"])
    b, e = ref["efficiency"], top["efficiency"]
    method = top.get("pruning_method") or "unstructured"
    latency = timing_ratio(e, b, "latency")
    text += (f" At {100 * top['sparsity']:.0f} % ({method} pruning) the state dict is "
             f"{e['size_mb'] / b['size_mb']:.2f}x the {whose}"
             + (f" and the batch-1 latency {latency[0]:.2f}x ({latency[1]})." if latency else "."))
    if method == "unstructured":
        text += (" Unstructured pruning keeps every tensor's shape, so the state dict and the arithmetic stay "
                 "(GMACs are equal): any difference in latency or throughput between these models is measurement "
                 "noise, not an effect of pruning. Only the sparse export shrinks")
        if e.get("sparse_size_mb") is not None:
            text += f" (to {e['sparse_size_mb'] / b['size_mb']:.2f}x the {whose} state dict)"
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
