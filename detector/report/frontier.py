"""The report's answer to "how far can it be pruned?" for a frontier search (``search.mode: frontier``).

The frontier was chosen on validation data (``search/frontier.json``), against the validation accuracy of
the reference it records (the equal-budget control, or the baseline in a run without one); this section then states it on the test set as a non-inferiority claim against the reference (the
equal-budget control where the run has one, else the baseline, named with the epochs each side had): the
frontier model's accuracy difference on the same test images, with its paired interval, against the margin.
It claims non-inferiority only when the whole interval lies above minus the margin.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from detector.job.runfolder import RunFolder, model_name
from detector.report.robustness import model_summary
from detector.report.roles import beside_reference, comparison_key, pruned_models, reference, reference_words
from detector.report.statistics import set_words
from detector.report.tables import Column, Section, markdown, pct



def _test_set(data: dict[str, Any]) -> str:
    """The set the claim is checked on: the report's primary set (``evaluate.primary_set``), as for Table 5."""
    return (data.get("primary") or {}).get("set", "combined_test")


def frontier_data(run: RunFolder) -> dict[str, Any] | None:
    """``search/frontier.json`` as written by the search, or None for a grid search."""
    if not run.frontier.exists():
        return None
    try:
        return json.loads(run.frontier.read_text())
    except ValueError as e:
        raise ValueError(f"{run.frontier}: not valid JSON: {e}") from None


def judged_against(frontier: dict[str, Any]) -> tuple[str, float]:
    """The model the probes were judged against on validation, and its val accuracy (a record written before
    the reference was recorded judged them against the baseline)."""
    ref = frontier.get("reference") or {"model": "baseline", "val_accuracy": frontier["baseline_val_accuracy"]}
    return str(ref["model"]), float(ref["val_accuracy"])


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def test_claim(data: dict[str, Any], frontier: dict[str, Any]) -> str:
    """One sentence: the frontier on the test set, with its interval, against the margin."""
    ans = frontier.get("answer") or {}
    margin = frontier["rule"]["margin"]
    s = ans.get("sparsity")
    if s is None:
        return (f"No probed sparsity was non-inferior to {judged_against(frontier)[0]} on validation data: the "
                "search found no "
                "sparsity that can be pruned within the margin.")
    models = data["models"]
    model = next((m for m in pruned_models(models) if abs(m["sparsity"] - s) < 1e-9), None)
    test_set = _test_set(data)
    key, against = comparison_key(reference(models)), reference_words(models)
    vs = ((model or {}).get(key) or {}).get(test_set)
    if not vs:
        return (f"On validation data up to {100 * s:g} % of the weights can be removed within the margin; "
                f"the test-set comparison is not available yet (evaluate {model_name(s)}).")
    d = vs["accuracy_difference"]
    within = d["low"] is not None and d["low"] > -margin
    verdict = (f"within the {100 * margin:g} pp margin: non-inferior on the test set" if within else
               f"the interval reaches below -{100 * margin:g} pp: non-inferiority is not shown on the test set")
    robust = model_summary(model, key=key, against=against)
    return (f"Up to {100 * s:g} % of the weights can be removed: on {set_words(test_set)} the accuracy difference "
            f"of {beside_reference(model, models)} from {against} is {_pp(d['estimate'])} pp, 95 % CI "
            f"[{_pp(d['low'])}, {_pp(d['high'])}] pp, {verdict}"
            + (f" (the first inferior probe, on validation, was {100 * ans['first_inferior']:g} %)."
               if ans.get("first_inferior") is not None else ".")
            + (f" Under perturbation, {model_name(s)} against {against}: {robust}." if robust else ""))


def frontier_section(data: dict[str, Any]) -> Section:
    frontier = data.get("frontier")
    if not frontier:
        return Section()
    rule, ans = frontier["rule"], frontier.get("answer") or {}
    rows = [{"round": r["round"], "sparsity": p["sparsity"], "val_accuracy": p.get("val_accuracy"),
             "difference": p.get("difference"),
             "non_inferior": {True: "yes", False: "no", None: "not decided"}[p.get("non_inferior")]}
            for r in frontier["rounds"] for p in r["probes"]]
    judge, judge_val = judged_against(frontier)
    fair = (f"{judge} is the equal-budget control (the same search and fine-tune budget as every probe)"
            if judge != "baseline" else
            "the baseline trained fewer epochs than each probe (its own, against its own plus a fine-tune's): "
            "the search's rule, not a like-for-like verdict")
    md = [f"The frontier is the largest sparsity whose fine-tuned model is non-inferior to {judge} on the "
          f"validation set: val accuracy (best epoch) at least {judge}'s {100 * judge_val:.2f} % "
          f"minus {100 * rule['margin']:g} pp. Round 1 probed {', '.join(f'{100 * s:g} %' for s in rule['grid'])}; "
          f"each later round probed {rule['parallel']} sparsit{'y' if rule['parallel'] == 1 else 'ies'} inside the "
          f"bracket of the last non-inferior and the first inferior probe, until it was {100 * rule['resolution']:g} pp "
          f"wide. Every probe had its own Optuna search and fine-tune; the choice read validation data only. {fair}; "
          f"the test-set claim below is against {reference_words(data['models'])}.", ""]
    if ans:
        md += [f"**{test_claim(data, frontier)}** Stopped because {ans['stopped_because']}.", ""]
    else:
        md += ["The search has not finished: the probes so far are below.", ""]
    md += [markdown(rows, [Column("round", "Round"), Column("sparsity", "Sparsity", lambda s: f"{100 * s:g} %"),
                           Column("val_accuracy", "Val accuracy (best epoch)", pct),
                           Column("difference", f"Difference from {judge} (pp)",
                                  lambda d: "n/a" if d is None else _pp(d)),
                           Column("non_inferior", "Non-inferior (val)")])]
    return Section("How far can it be pruned? The sparsity frontier", md)


def frontier_figure(data: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """Val accuracy of every probe against sparsity, the margin, and the frontier (and test accuracy with its
    interval for the evaluated models)."""
    frontier = data.get("frontier")
    if not frontier or not frontier["rounds"]:
        return
    import matplotlib.pyplot as plt

    judge, base = judged_against(frontier)
    margin = frontier["rule"]["margin"]
    probes = sorted((p for r in frontier["rounds"] for p in r["probes"] if p.get("val_accuracy") is not None),
                    key=lambda p: p["sparsity"])
    fig, ax = plt.subplots(figsize=(8.5, 4), layout="constrained")
    ax.axhspan(100 * (base - margin), 100 * base, color="tab:green", alpha=0.12, label="within the margin")
    ax.axhline(100 * base, color="k", lw=1, label=f"{judge} (val)")
    for ok, colour, label in ((True, "tab:green", "non-inferior probe (val)"), (False, "tab:red", "inferior probe (val)")):
        pts = [p for p in probes if p["non_inferior"] is ok]
        if pts:
            ax.scatter([100 * p["sparsity"] for p in pts], [100 * p["val_accuracy"] for p in pts], c=colour,
                       label=label, zorder=3)
    test_set = _test_set(data)
    tested = [m for m in pruned_models(data["models"]) if (m.get("intervals") or {}).get(test_set)]
    if tested:
        iv = [m["intervals"][test_set]["accuracy"] for m in tested]
        ax.errorbar([100 * m["sparsity"] for m in tested], [100 * i["estimate"] for i in iv],
                    yerr=[[100 * (i["estimate"] - i["low"]) for i in iv], [100 * (i["high"] - i["estimate"]) for i in iv]],
                    fmt="s", ms=4, color="tab:blue", alpha=0.7, capsize=3, label=f"test accuracy, 95 % CI ({test_set})")
    ans = frontier.get("answer") or {}
    if ans.get("sparsity") is not None:
        ax.axvline(100 * ans["sparsity"], color="tab:green", ls="--", lw=1,
                   label=f"frontier: {100 * ans['sparsity']:g} %")
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("The sparsity frontier: decided on validation, checked on test")
    # beside the axes: inside, it covers the margin band and the baseline line it explains
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    save(fig, "frontier.png")
