"""The report's figures (PNG), drawn from the collected data (``report.json``) and the stored predictions.

Each answers one question, shows the uncertainty that was computed (error bars), labels its axes with units,
uses integer ticks for counts, and explains colours with a legend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from detector.io import atomic_open
from detector.report.frontier import frontier_figure
from detector.report.pareto import pareto_figure


def write_figures(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = data["models"]
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    if models:
        _confusion_figure(models, save)
        _roc_figure(models, save)
        _accuracy_figure(models, data.get("statistics") or {}, save)
    _search_figure(data["trials"], data.get("search") or {}, save)
    frontier_figure(data, save)
    pareto_figure(data, save)
    return paths


def _confusion_figure(models: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    """Fig 5: confusion matrices of every model on the combined test set."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(models), figsize=(2.9 * len(models), 3.3), squeeze=False, sharey=True,
                             layout="constrained")
    for k, (ax, m) in enumerate(zip(axes[0], models)):
        cm = np.asarray(m["metrics"]["combined_test"]["confusion_matrix"]["matrix"])
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["fake", "real"])
        ax.set_yticks([0, 1], ["fake", "real"])
        ax.set_xlabel("predicted class")
        if k == 0:  # one label for the shared axis: a label per panel runs into the neighbouring matrix
            ax.set_ylabel("true class")
        ax.set_title(m["name"])
    fig.suptitle("Confusion matrices, combined test set (images)")
    save(fig, "confusion_matrices.png")


def _roc_figure(models: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    """ROC curves from the stored predictions."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for m in models:
        pred = json.loads(Path(m["predictions"]).read_text())["test"]
        y, p = np.asarray(pred["labels"]), np.asarray(pred["probs_real"])
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = roc_curve(y, p)
            auc = m["metrics"]["combined_test"]["auc"]
            ax.plot(fpr, tpr, label=f"{m['name']} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (fake called real)")
    ax.set_ylabel("true positive rate (real called real)")
    ax.set_title("ROC, combined test set")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc_curves.png")


def _accuracy_figure(models: list[dict[str, Any]], stats: dict[str, Any],
                     save: Callable[[Any, str], None]) -> None:
    """How far can it be pruned: test accuracy against sparsity after fine-tuning, with the bootstrap
    intervals, and right after pruning (no fine-tuning) where the evaluate stage measured it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    names = [n for n in models[0]["metrics"] if "/" not in n and n != "combined_val"]
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
                    label=f"{n}, after fine-tuning")
    before = [(100 * m["sparsity"], 100 * m["before_finetune"]["metrics"]["combined_test"]["accuracy"])
              for m in models if (m.get("before_finetune") or {}).get("status") == "measured"]
    base = next((m for m in models if m["sparsity"] == 0), None)
    if before and base is not None:
        before = [(0.0, 100 * base["metrics"]["combined_test"]["accuracy"]), *before]
        ax.plot(*zip(*before), "k--", marker="x", label="combined_test, right after pruning (not trained)")
    ax.set_xticks(xs)
    ax.set_xlabel("sparsity (% of prunable weights)")
    ax.set_ylabel("test accuracy (%)")
    resamples = stats.get("bootstrap_resamples")
    bars = f"{round(100 * stats.get('confidence', 0.95))} % bootstrap intervals" + (
        f", {resamples} resamples" if resamples else "")
    ax.set_title(f"Test accuracy against sparsity\n(bars: {bars})", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, "accuracy_vs_sparsity.png")


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
