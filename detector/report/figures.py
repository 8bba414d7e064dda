"""The report's figures (PNG), drawn from the collected data (``report.json``) and the stored predictions.

Each answers one question, shows the uncertainty that was computed (error bars), labels its axes with units,
uses integer ticks for counts, and explains colours with a legend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from detector.io import atomic_open
from detector.report.collect import ordered_sets
from detector.report.frontier import frontier_figure
from detector.report.pareto import pareto_figure
from detector.report.roles import baseline


def write_figures(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = data["models"]
    primary = (data.get("primary") or {}).get("set", "combined_test")
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    if models:
        _confusion_figure(models, primary, save)
        _roc_figure(models, primary, (data.get("primary") or {}).get("source"), save)
        _accuracy_figure(models, data.get("statistics") or {}, primary, save)
        if any(m.get("robustness") for m in models):
            _robustness_figure(models, save)
    _search_figure(data["trials"], data.get("search") or {}, save)
    frontier_figure(data, save)
    pareto_figure(data, save)
    return paths


def _confusion_figure(models: list[dict[str, Any]], primary: str, save: Callable[[Any, str], None]) -> None:
    """Fig 5: confusion matrices of every model on the primary set, each cell named by its direction."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(models), figsize=(2.9 * len(models), 3.9), squeeze=False, sharey=True,
                             layout="constrained")
    for k, (ax, m) in enumerate(zip(axes[0], models)):
        cm = np.asarray(m["metrics"][primary]["confusion_matrix"]["matrix"])
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cm):
            name = f"{['fake', 'real'][i]} predicted\n{['fake', 'real'][j]}"
            ax.text(j, i, f"{v:,}\n{name}", ha="center", va="center", fontsize=8,
                    color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["fake", "real"])
        ax.set_yticks([0, 1], ["fake", "real"])
        ax.set_xlabel("predicted class")
        if k == 0:  # one label for the shared axis: a label per panel runs into the neighbouring matrix
            ax.set_ylabel("true class")
        ax.set_title(m["name"])
    fig.suptitle(f"Fig 5. Confusion matrices on {primary} (primary set), images")
    save(fig, "confusion_matrices.png")


def _roc_figure(models: list[dict[str, Any]], primary: str, source: str | None,
                save: Callable[[Any, str], None]) -> None:
    """ROC curves on the primary set, from the stored predictions."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for m in models:
        pred = json.loads(Path(m["predictions"]).read_text())["test"]
        y, p = np.asarray(pred["labels"]), np.asarray(pred["probs_real"])
        if source is not None:
            keep = np.asarray(pred["source"]) == source
            y, p = y[keep], p[keep]
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = roc_curve(y, p)
            auc = m["metrics"][primary]["auc"]
            ax.plot(fpr, tpr, label=f"{m['name']} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("share of fakes predicted real\n(false-positive rate with real as positive class)")
    ax.set_ylabel("share of reals predicted real (true-positive rate)")
    ax.set_title(f"ROC, {primary} (primary set)")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc_curves.png")


def _accuracy_figure(models: list[dict[str, Any]], stats: dict[str, Any], primary: str,
                     save: Callable[[Any, str], None]) -> None:
    """How far can it be pruned: test accuracy against sparsity after fine-tuning, with the bootstrap
    intervals, and right after pruning (no fine-tuning) where the evaluate stage measured it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    names = [n for n in ordered_sets(list(models[0]["metrics"]), primary) if "/" not in n and n != "combined_val"]
    xs = [100 * m["sparsity"] for m in models]
    step = 0.6  # side by side: one set's bars must not hide another's
    for k, n in enumerate(names):
        ys, lows, highs = [], [], []
        for m in models:
            acc = m["metrics"][n]["accuracy"]
            iv = ((m.get("intervals") or {}).get(n) or {}).get("accuracy") or {}
            ys.append(100 * acc)
            lows.append(100 * (acc - iv["low"]) if iv.get("low") is not None else 0.0)
            highs.append(100 * (iv["high"] - acc) if iv.get("high") is not None else 0.0)
        offset = (k - (len(names) - 1) / 2) * step
        ax.errorbar([x + offset for x in xs], ys, yerr=[lows, highs], marker="o", capsize=3,
                    label=f"{n}{' (primary)' if n == primary else ''}, after fine-tuning")
    before = [(100 * m["sparsity"], 100 * m["before_finetune"]["metrics"][primary]["accuracy"])
              for m in models if (m.get("before_finetune") or {}).get("status") == "measured"
              and primary in m["before_finetune"]["metrics"]]
    base = baseline(models)
    if before and base is not None:
        before = [(0.0, 100 * base["metrics"][primary]["accuracy"]), *before]
        ax.plot(*zip(*before), "k--", marker="x", label=f"{primary}, right after pruning (not trained)")
    ax.set_xticks(xs)
    ax.set_xlabel("sparsity (% of prunable weights)")
    ax.set_ylabel("test accuracy (%)")
    resamples = stats.get("bootstrap_resamples")
    bars = f"{round(100 * stats.get('confidence', 0.95))} % bootstrap intervals" + (
        f", {resamples} resamples" if resamples else "")
    ax.set_title(f"Test accuracy against sparsity\n(bars: {bars})", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "accuracy_vs_sparsity.png")


FAMILY_TITLES = {"jpeg": "JPEG re-compression", "blur": "Gaussian blur", "downscale": "down-scale and back",
                 "format": "format equalisation"}
CLEAN = {"jpeg": "clean", "blur": "clean", "downscale": "x1 (clean)", "format": "as stored"}


def _severity_tick(family: str, severity: float) -> str:
    s = f"{severity:g}"
    return {"jpeg": f"q{s}", "blur": f"sigma {s}", "downscale": f"x{s}", "format": f"JPEG q{s}"}[family]


def _robustness_figure(models: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    """Does pruning cost robustness: accuracy (with its bootstrap interval) and AUC against severity, one
    panel per perturbation family, one line per model, the clean score first."""
    import matplotlib.pyplot as plt

    from detector.report.robustness import perturbations

    found = perturbations(models)
    families = [f for f in FAMILY_TITLES if any(p["family"] == f for p in found.values())]
    fig, axes = plt.subplots(2, len(families), figsize=(3.3 * len(families), 6.2), squeeze=False, sharey="row",
                             layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, family in enumerate(families):
        names = [n for n, p in found.items() if p["family"] == family]
        ticks = [CLEAN[family], *(_severity_tick(family, found[n]["severity"]) for n in names)]
        for k, m in enumerate(models):
            mine = (m.get("robustness") or {}).get("perturbations") or {}
            if not all(n in mine for n in names):
                continue
            clean = m["metrics"][found[names[0]]["set"]]
            acc = [clean["accuracy"], *(mine[n]["metrics"]["accuracy"] for n in names)]
            ivs = [((m.get("intervals") or {}).get(found[names[0]]["set"]) or {}).get("accuracy"),
                   *(((m.get("robustness_intervals") or {}).get(n) or {}).get("accuracy") for n in names)]
            low = [100 * (a - iv["low"]) if iv and iv.get("low") is not None else 0.0 for a, iv in zip(acc, ivs)]
            high = [100 * (iv["high"] - a) if iv and iv.get("high") is not None else 0.0 for a, iv in zip(acc, ivs)]
            x = [i + (k - (len(models) - 1) / 2) * 0.06 for i in range(len(ticks))]  # side by side
            colour = colours[k % len(colours)]
            axes[0][col].errorbar(x, [100 * a for a in acc], yerr=[low, high], marker="o", capsize=2, color=colour,
                                  label=m["name"])
            auc = [clean.get("auc"), *(mine[n]["metrics"].get("auc") for n in names)]
            if any(a is not None for a in auc):
                axes[1][col].plot(x, [float("nan") if a is None else a for a in auc], marker="o", color=colour,
                                  label=m["name"])
        for row in (0, 1):
            axes[row][col].set_xticks(range(len(ticks)), ticks, fontsize=8)
        axes[0][col].set_title(f"{FAMILY_TITLES[family]}\n({found[names[0]]['set']})", fontsize=10)
        axes[1][col].set_xlabel("severity")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[1][0].set_ylabel("AUC")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(models), fontsize=8)
    fig.suptitle("Robustness: accuracy (bars: 95 % bootstrap intervals) and AUC against perturbation severity")
    save(fig, "robustness.png")


def _search_figure(trials: list[dict[str, Any]], search: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """Each search's trial history: every trial's objective in launch order, the best so far, the trial chosen."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from detector.job.selection import launch_order

    if not trials:
        return
    sparsities = sorted({t["sparsity"] for t in trials})
    optimizers = sorted({str(t["params"].get("optimizer")) for t in trials})
    colours = dict(zip(optimizers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    chosen = {b.get("trial_id") for b in (search.get("best") or {}).values()}
    fig, axes = plt.subplots(1, len(sparsities), figsize=(3.2 * len(sparsities), 3.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, s in zip(axes[0], sparsities):
        ts = sorted((t for t in trials if t["sparsity"] == s and t["val_accuracy"] is not None), key=launch_order)
        n = np.arange(1, len(ts) + 1)
        vals = [100 * t["val_accuracy"] for t in ts]
        ax.scatter(n, vals, c=[colours[str(t["params"].get("optimizer"))] for t in ts], zorder=3)
        ax.plot(n, np.maximum.accumulate(vals) if vals else [], "k-", lw=1, zorder=2)
        for x, t, v in zip(n, ts, vals):
            if t["trial_id"] in chosen:
                ax.scatter([x], [v], s=160, facecolors="none", edgecolors="black", zorder=4)
        ax.set_title(f"sparsity {100 * s:.0f}%")
        ax.set_xlabel("trial (launch order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(len(ts), 1) + 0.5)
    axes[0][0].set_ylabel("val accuracy, last epoch (%)")
    handles = [Line2D([], [], marker="o", ls="", color=colours[o], label=o) for o in optimizers]
    handles += [Line2D([], [], color="black", lw=1, label="best so far"),
                Line2D([], [], marker="o", ls="", markersize=12, markerfacecolor="none", markeredgecolor="black",
                       label="chosen (of tied trials, the first launched)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle("Search history: each trial, and the best so far")
    save(fig, "search_history.png")
