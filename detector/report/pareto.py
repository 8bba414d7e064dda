"""The report's Pareto front (``search.mode: pareto``): accuracy against size, the non-dominated trials,
and which of them were fine-tuned and evaluated."""

from __future__ import annotations

from typing import Any, Callable

from detector.job.pareto import PARETO_OBJECTIVES
from detector.report.roles import baseline
from detector.report.tables import Column, Section, markdown, pct

UNITS = {"nonzero_params": ("non-zero weights (millions)", 1e-6), "model_bytes": ("sparse file (MiB)", 1 / 2**20),
         "latency_ms": ("latency, batch 1 (ms)", 1.0), "val_loss": ("val loss", 1.0),
         "val_accuracy": ("val accuracy (%)", 100.0)}


def _front(data: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str], set[float]]:
    search = data.get("search") or {}
    front_ids = set(search.get("front", []))
    # the front's picks; the dense control (best["0"]) is fine-tuned beside them, not picked from the front
    picks = {float(b["sparsity"]) for b in search.get("best", {}).values() if float(b["sparsity"]) > 0}
    trials = [t for t in data["trials"] if t.get("objectives") and t["status"] == "completed"]
    return trials, front_ids, picks


def _picked(n: int) -> str:
    return "The model marked below was" if n == 1 else f"The {n} models marked below were"


def pareto_section(data: dict[str, Any]) -> Section:
    search = data.get("search") or {}
    if search.get("mode") != "pareto":
        return Section()
    objectives = search["objectives"]
    trials, front_ids, picks = _front(data)
    front = sorted((t for t in trials if t["trial_id"] in front_ids), key=lambda t: t["sparsity"])
    rows = [{"trial": t.get("name") or t["trial_id"], "sparsity": t["sparsity"], **t["params"],
             **{f"obj_{o}": t["objectives"].get(o) for o in objectives},
             "model": "fine-tuned and evaluated" if t["sparsity"] in picks else ""} for t in front]
    params = [k for k in (front[0]["params"] if front else {})]

    def fmt(o: str) -> Callable[[Any], str]:
        if o == "val_accuracy":
            return pct
        label, scale = UNITS[o]
        return lambda v: "n/a" if v is None else f"{scale * v:.3f}"

    md = [f"One multi-objective Optuna study (TPE) searched the sparsity beside {', '.join(params)}: "
          f"{len(trials)} trials, objectives {', '.join(f'{o} ({PARETO_OBJECTIVES[o]})' for o in objectives)} "
          "(val values at the trial's last epoch; sizes of the pruned model). A trial is on the front when no other "
          f"is at least as good in every objective and better in one: {len(front)} "
          f"{'is' if len(front) == 1 else 'are'}. {_picked(len(picks))} fine-tuned and evaluated like the grid's "
          "models (Tables 5 and 6).", "",
          markdown(rows, [Column("trial", "Trial"), Column("sparsity", "Sparsity", lambda s: f"{100 * s:g} %"),
                          *(Column(k, k, lambda v: f"{v:.3e}" if isinstance(v, float) else str(v)) for k in params),
                          *(Column(f"obj_{o}", UNITS[o][0], fmt(o)) for o in objectives),
                          Column("model", "Model")])]
    return Section("Accuracy against size: the Pareto front", md)


def pareto_figure(data: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    search = data.get("search") or {}
    if search.get("mode") != "pareto":
        return
    import matplotlib.pyplot as plt

    objectives = search["objectives"]
    y_name = "val_accuracy" if "val_accuracy" in objectives else objectives[0]
    x_name = next(o for o in objectives if o != y_name)
    trials, front_ids, picks = _front(data)
    (xl, xs), (yl, ys) = UNITS[x_name], UNITS[y_name]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    others = [t for t in trials if t["trial_id"] not in front_ids]
    front = sorted((t for t in trials if t["trial_id"] in front_ids), key=lambda t: t["objectives"][x_name])
    ax.scatter([xs * t["objectives"][x_name] for t in others], [ys * t["objectives"][y_name] for t in others],
               c="0.6", s=18, label="trial (dominated)")
    ax.plot([xs * t["objectives"][x_name] for t in front], [ys * t["objectives"][y_name] for t in front], "o-",
            c="tab:blue", ms=5, label="Pareto front")
    chosen = [t for t in front if t["sparsity"] in picks]
    ax.scatter([xs * t["objectives"][x_name] for t in chosen], [ys * t["objectives"][y_name] for t in chosen],
               s=90, facecolors="none", edgecolors="tab:red", label="fine-tuned and evaluated")
    for t in front:
        ax.annotate(f"{100 * t['sparsity']:g} %", (xs * t["objectives"][x_name], ys * t["objectives"][y_name]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    base = baseline(data["models"])
    if base is not None and x_name == "nonzero_params" and y_name == "val_accuracy":
        ax.scatter([xs * base["efficiency"]["nonzero_params"]], [100 * base["metrics"]["combined_val"]["accuracy"]],
                   marker="*", s=160, c="k", label="dense baseline")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title("Accuracy against size: every trial, and the front")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, "pareto_front.png")
