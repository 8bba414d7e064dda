"""The report's robustness section: every model under every perturbation (``evaluate.robustness``), against
its own clean accuracy and against the reference (the equal-budget control, else the baseline) on the same
perturbed images, worded by the tests."""

from __future__ import annotations

from typing import Any

from detector.report.roles import beside_reference, comparison_key, pruned_models, reference, reference_words
from detector.report.statistics import set_words
from detector.report.tables import Column, Section, Table, fixed, pct


def perturbations(models: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every perturbation any model was scored under, in the evaluate stage's order (mildest first per family)."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        for name, p in ((m.get("robustness") or {}).get("perturbations") or {}).items():
            out.setdefault(name, {k: p[k] for k in ("family", "severity", "label", "set", "images")})
    return out


def _signed_pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}"


def _ci_pp(d: dict[str, Any] | None) -> str:
    if not d or d.get("estimate") is None:
        return "n/a"
    return f"{100 * d['estimate']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _acc_ci(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a"
    return f"{100 * iv['estimate']:.2f}% [{100 * iv['low']:.2f}, {100 * iv['high']:.2f}]"


def robustness_table(models: list[dict[str, Any]]) -> Table:
    """Every model under every perturbation; the difference from the reference on the same perturbed images
    under ``diff_vs_control`` or ``diff_vs_baseline`` (as its comparisons are named, ``roles.comparison_key``)."""
    ref = reference(models)
    key = comparison_key(ref)
    rows = []
    for name, p in perturbations(models).items():
        for m in models:
            r = ((m.get("robustness") or {}).get("perturbations") or {}).get(name)
            if r is None:
                continue
            clean = m["metrics"][r["set"]]["accuracy"]
            iv = ((m.get("robustness_intervals") or {}).get(name) or {}).get("accuracy")
            vs = (m.get(f"robustness_{key}") or {}).get(name) or {}
            paired = "accuracy_difference" in vs
            rows.append({
                "perturbation": name, "label": p["label"], "family": p["family"], "severity": p["severity"],
                "data_set": r["set"], "model": m["name"], "images": r["images"], "clean_accuracy": clean,
                "accuracy": r["metrics"]["accuracy"], "accuracy_ci": iv, "change_vs_clean": r["metrics"]["accuracy"] - clean,
                "auc": r["metrics"].get("auc"),
                f"diff_{key}": vs.get("accuracy_difference") if paired else None,
                f"auc_diff_{key}": (vs.get("auc_difference") or {}).get("estimate") if paired else None,
                "mcnemar_p": vs["mcnemar"]["p_value"] if paired else None,
                "conclusion": (vs["sentence"].rsplit(": ", 1)[-1] if paired else vs.get("unpaired", "")),
            })
    return Table("robustness.csv", rows, [
        Column("label", "Perturbation"), Column("data_set", "Set"), Column("model", "Model"),
        Column("clean_accuracy", "Clean accuracy", pct), Column("accuracy_ci", "Accuracy [95 % CI]", _acc_ci),
        Column("change_vs_clean", "Change vs clean (pp)", _signed_pp), Column("auc", "AUC", fixed(4)),
        Column(f"diff_{key}", f"Difference vs {ref['name'] if ref else 'baseline'}, same images (pp [95 % CI])",
               _ci_pp),
        Column("mcnemar_p", "McNemar p", lambda p: "-" if p is None else f"{p:.3g}"),
        Column("conclusion", "Conclusion", lambda x: x or "-")],
        extra_csv=("perturbation", "family", "severity", "images", "accuracy", f"auc_diff_{key}"))


def robustness_sentence(model: str, label: str, vs: dict[str, Any], *, alpha: float = 0.05,
                        against: str = "the baseline") -> str:
    """One pruned model against the reference (``against``) under one perturbation, as the numbers say it.

    >>> robustness_sentence("prune-40", "JPEG q50", {"accuracy_difference": {"estimate": -0.061, "low": -0.074,
    ...                     "high": -0.048}, "mcnemar": {"p_value": 2e-5}})
    'prune-40 loses 6.10 pp [4.80, 7.40] against the baseline under JPEG q50 (McNemar p = 2.0e-05): significant'
    """
    d, p = vs["accuracy_difference"], vs["mcnemar"]["p_value"]
    est, low, high = (100 * d[k] for k in ("estimate", "low", "high"))
    p_text = f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"
    verdict = "significant" if p < alpha else "not significant"
    if est < 0:  # the loss and its interval, as losses
        change = f"loses {-est:.2f} pp [{-high:.2f}, {-low:.2f}]"
    elif est > 0:
        change = f"gains {est:.2f} pp [{low:.2f}, {high:.2f}]"
    else:
        change = f"is as accurate (difference 0.00 pp [{low:+.2f}, {high:+.2f}])"
    return f"{model} {change} against {against} under {label} (McNemar p = {p_text}): {verdict}"


def model_summary(model: dict[str, Any], found: dict[str, dict[str, Any]] | None = None, *,
                  key: str = "vs_baseline", against: str = "the baseline") -> str | None:
    """One pruned model against a reference over every perturbation, in words (None: never perturbed);
    ``found``: ``perturbations(models)``, for the labels; ``key``: which comparisons (``vs_control`` or
    ``vs_baseline``), ``against``: how a sentence names that reference."""
    found = found if found is not None else perturbations([model])
    vs_all = model.get(f"robustness_{key}") or {}
    paired = {name: vs for name, vs in vs_all.items() if "accuracy_difference" in vs}
    unpaired = sorted({vs["unpaired"] for vs in vs_all.values() if "unpaired" in vs})
    if unpaired:
        return f"not compared with {against} ({'; '.join(unpaired)})"
    if not paired:
        return None
    lower = [found[n]["label"] for n, vs in paired.items() if vs["significant"] and vs["accuracy_difference"]["estimate"] < 0]
    higher = [found[n]["label"] for n, vs in paired.items() if vs["significant"] and vs["accuracy_difference"]["estimate"] > 0]
    rest = len(paired) - len(lower) - len(higher)
    parts = []
    if lower:
        parts.append(f"significantly less accurate under {', '.join(lower)}")
    if higher:
        parts.append(f"significantly more accurate under {', '.join(higher)}")
    if rest:
        worst_name, worst = min(((n, vs) for n, vs in paired.items() if not vs["significant"]),
                                key=lambda x: x[1]["accuracy_difference"]["low"])
        low = worst["accuracy_difference"]["low"]
        allow = (f"; there the intervals still allow a loss of up to {-100 * low:.2f} pp "
                 f"({found[worst_name]['label']})" if low < 0 else "")
        parts.append(f"no significant difference under {'the other ' if lower or higher else ''}{rest} "
                     f"perturbation{'s' if rest != 1 else ''}{allow}")
    return "; ".join(parts)


def robustness_section(data: dict[str, Any]) -> Section:
    models = data["models"]
    found = perturbations(models)
    if not found:
        return Section()
    table = robustness_table(models)
    sets = sorted({p["set"] for p in found.values()})
    primary = data["primary"]["set"]
    key, against = comparison_key(reference(models)), reference_words(models)
    where = "; ".join(f"{set_words(s)} for {', '.join(p['label'] for p in found.values() if p['set'] == s)}"
                      for s in sets)
    md = [f"Every model scored again on perturbed copies of the test images: {where}. Format equalisation runs on "
          "the whole test split, where JPEG and PNG sources mix; the others on the primary set. Each perturbation "
          "is applied to the decoded image before the resize to the model's input, identically for every model "
          f"(docs/evaluation.md). Differences against {against} pair the same perturbed images: the McNemar "
          "score test, with Tango's interval, as for the clean sets.", "",
          table.markdown()]
    sentences, summary = [], []
    for m in pruned_models(models):
        name = beside_reference(m, models)
        paired = {p: vs for p, vs in (m.get(f"robustness_{key}") or {}).items() if "accuracy_difference" in vs}
        # the table words every result; the list repeats the significant ones, the summary the rest
        for p, vs in paired.items():
            if vs["significant"]:
                sentences.append(f"- {robustness_sentence(name, found[p]['label'], vs, against=against)}.")
        line = model_summary(m, found, key=key, against=against)
        if line:
            summary.append(f"{name}: {line}.")
    if sentences:
        md += [f"Significant differences from {against} on the same perturbed images:", "", *sentences, ""]
    elif any(m.get(f"robustness_{key}") for m in models):
        md += [f"No pruned model's accuracy differs significantly from that of {against} under any perturbation.",
               ""]
    md += [f"Per pruned model against {against}, over every perturbation:", "",
           *(f"- {line}" for line in summary), ""] if summary else []
    if primary not in sets:
        md += [f"(The primary set, {set_words(primary)}, is not among the perturbed sets.)", ""]
    return Section("Robustness: does pruning cost robustness?", md, [table])
