"""The report's figures (PNG), drawn from the collected data (``report.json``) and the stored predictions.

Each answers one question, shows the uncertainty that was computed (error bars), labels its axes with units,
uses integer ticks for counts, and explains colours with a legend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from detector.io import atomic_open
from detector.report.answer import answer_figure
from detector.report.collect import ordered_sets
from detector.report.frontier import frontier_figure
from detector.report.pareto import pareto_figure
from detector.report.roles import baseline, comparison_key, control, labelled, pruned_models, reference, role


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

    answer_figure(data, save)
    if models:
        _confusion_figure(models, primary, save)
        _roc_figure(models, primary, (data.get("primary") or {}).get("source"), save)
        _accuracy_figure(models, data.get("statistics") or {}, primary, save)
        if any(m.get("robustness") for m in models):
            _robustness_figure(data, save)
    _search_figure(data["trials"], data.get("search") or {}, save)
    frontier_figure(data, save)
    pareto_figure(data, save)
    return paths


def model_style(model: dict[str, Any], models: list[dict[str, Any]]) -> dict[str, Any]:
    """One look per model in every figure: the baseline black and dashed, the control blue, the pruned
    models darker with sparsity (so an order is read without the legend)."""
    import matplotlib

    kind = role(model)
    if kind == "baseline":
        return {"color": "black", "ls": "--", "marker": "D"}
    if kind == "control":
        return {"color": "tab:blue", "ls": "-", "marker": "s"}
    pruned = pruned_models(models)
    k = next(i for i, m in enumerate(pruned) if m["name"] == model["name"])
    return {"color": matplotlib.colormaps["YlOrRd"](0.45 + 0.5 * k / max(len(pruned) - 1, 1)), "ls": "-",
            "marker": "o"}


def _confusion_figure(models: list[dict[str, Any]], primary: str, save: Callable[[Any, str], None]) -> None:
    """Fig 5: confusion matrices of every model on the primary set, each cell named by its direction, in
    rows of at most three so that the numbers stay legible at the report's width."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = -(-len(models) // 3)
    cols = -(-len(models) // rows)  # balanced: four models in two rows of two, not three and one
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    for k, (ax, m) in enumerate(zip(axes.flat, models)):
        cm = np.asarray(m["metrics"][primary]["confusion_matrix"]["matrix"])
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cm):
            colour = "white" if v > cm.max() / 2 else "black"
            ax.text(j, i - 0.1, f"{v:,}", ha="center", va="center", fontsize=13, color=colour)
            ax.text(j, i + 0.22, f"{['fake', 'real'][i]} predicted {['fake', 'real'][j]}", ha="center",
                    va="center", fontsize=7.5, color=colour)
        ax.set_xticks([0, 1], ["fake", "real"])
        ax.set_yticks([0, 1], ["fake", "real"])
        if k // cols == rows - 1 or k + cols >= len(models):  # the lowest panel of each column
            ax.set_xlabel("predicted class")
        if k % cols == 0:  # one label per row: a label per panel runs into the neighbouring matrix
            ax.set_ylabel("true class")
        ax.set_title(m["name"], fontsize=11)
    fig.suptitle(f"Fig 5. Confusion matrices on {primary} (primary set), images")
    save(fig, "confusion_matrices.png")


def _roc_figure(models: list[dict[str, Any]], primary: str, source: str | None,
                save: Callable[[Any, str], None]) -> None:
    """ROC curves on the primary set, from the stored predictions, with the false-positive rate on a log
    scale: near-perfect detectors differ only where few fakes pass as real, which a linear axis squeezes into
    its corner."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 5))
    curves = []
    for m in models:
        pred = json.loads(Path(m["predictions"]).read_text())["test"]
        y, p = np.asarray(pred["labels"]), np.asarray(pred["probs_real"])
        if source is not None:
            keep = np.asarray(pred["source"]) == source
            y, p = y[keep], p[keep]
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = roc_curve(y, p)
            curves.append((m, fpr, tpr, int((y != 1).sum())))
    if not curves:
        plt.close(fig)
        return
    # the left edge: the resolution of the rarest set (one fake in n), at most 1e-3
    left = min(1e-3, 10 ** math.floor(math.log10(1 / max(n for *_, n in curves))))
    lowest = 1.0
    for k, (m, fpr, tpr, _) in enumerate(curves):
        style = model_style(m, models)
        # each curve thinner than the one before, so that curves on top of each other still show
        ax.step(np.maximum(fpr, left), tpr, where="post", color=style["color"], ls=style["ls"],
                lw=1.2 + 1.8 * (len(curves) - 1 - k) / max(len(curves) - 1, 1),
                label=f"{m['name']} (AUC {m['metrics'][primary]['auc']:.4f})")
        lowest = min(lowest, float(tpr[np.searchsorted(fpr, left, side="right") - 1]))
    grid = np.logspace(math.log10(left), 0, 100)
    ax.plot(grid, grid, "k:", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(left, 1)
    bottom = max(0.0, lowest - 0.05 * (1 - lowest) - 0.01)
    ax.set_ylim(bottom, 1 + 0.02 * (1 - bottom))  # a curve along 1.0 stays above the frame
    ax.set_xlabel(f"share of fakes predicted real, log scale (false-positive rate, real positive;\n"
                  f"a rate of 0 is drawn at {left:g})")
    ax.set_ylabel("share of reals predicted real (true-positive rate)")
    ax.set_title(f"ROC, {primary} (primary set)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # beside: inside it hides a curve
    save(fig, "roc_curves.png")


def _accuracy_figure(models: list[dict[str, Any]], stats: dict[str, Any], primary: str,
                     save: Callable[[Any, str], None]) -> None:
    """How far can it be pruned: test accuracy against sparsity after fine-tuning (the control at 0 %, the
    pruned models), with the bootstrap intervals; the baseline apart at 0 % (it had no fine-tune); and right
    after pruning (no fine-tuning) where the evaluate stage measured it."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [n for n in ordered_sets(list(models[0]["metrics"]), primary) if "/" not in n and n != "combined_val"]
    tuned = [m for m in models if role(m) != "baseline"]
    base = baseline(models)
    span = max(100 * m["sparsity"] for m in models) or 1
    step = 0.015 * span  # side by side: one set's bars must not hide another's
    base_x = -0.12 * span  # the baseline stands apart, at its own tick: it is not the fine-tuned line's start
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, n in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * step
        colour = colours[k % len(colours)]

        def point(m: dict[str, Any]) -> tuple[float, float, float]:
            acc = m["metrics"][n]["accuracy"]
            iv = ((m.get("intervals") or {}).get(n) or {}).get("accuracy") or {}
            return (100 * acc, 100 * (acc - iv["low"]) if iv.get("low") is not None else 0.0,
                    100 * (iv["high"] - acc) if iv.get("high") is not None else 0.0)

        if tuned:
            ys, lows, highs = zip(*(point(m) for m in tuned))
            ax.errorbar([100 * m["sparsity"] + offset for m in tuned], ys, yerr=[lows, highs], marker="o",
                        capsize=3, color=colour)
        if base is not None:
            y, low, high = point(base)
            ax.errorbar([base_x + offset], [y], yerr=[[low], [high]], marker="D", mfc="white", capsize=3,
                        color=colour, ls="none")
    before = [(100 * m["sparsity"], 100 * m["before_finetune"]["metrics"][primary]["accuracy"])
              for m in pruned_models(models) if (m.get("before_finetune") or {}).get("status") == "measured"
              and primary in m["before_finetune"]["metrics"]]
    if before and base is not None:  # from the baseline's weights, which every pruned model starts from
        ax.plot(*zip((base_x, 100 * base["metrics"][primary]["accuracy"]), *before), "k--", marker="x")
    ctrl = control(models)
    handles = [Line2D([], [], color=colours[k % len(colours)], lw=6, label=f"{n}{' (primary)' if n == primary else ''}")
               for k, n in enumerate(names)]
    handles += [Line2D([], [], color="0.3", marker="o", label="after fine-tuning"
                       + (f" ({ctrl['name']} at 0 %: the control)" if ctrl else "")),
                Line2D([], [], color="0.3", marker="D", mfc="white", ls="none", label="baseline (no fine-tune)")]
    if before and base is not None:
        handles.append(Line2D([], [], color="k", ls="--", marker="x", label=f"{primary}, right after pruning"))
    xs = sorted({100 * m["sparsity"] for m in tuned})
    ticks = [f"0\n({ctrl['name']})" if x == 0 and ctrl else f"{x:g}" for x in xs]
    ax.set_xticks([base_x, *xs] if base else xs, [*(["baseline"] if base else []), *ticks])
    ax.set_xlabel("sparsity (% of prunable weights)")
    ax.set_ylabel("test accuracy (%)")
    resamples = stats.get("bootstrap_resamples")
    bars = f"{round(100 * stats.get('confidence', 0.95))} % bootstrap intervals" + (
        f", {resamples} resamples" if resamples else "")
    ax.set_title(f"Test accuracy against sparsity\n(bars: {bars})", fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, "accuracy_vs_sparsity.png")


FAMILY_TITLES = {"jpeg": "JPEG re-compression", "blur": "Gaussian blur", "downscale": "down-scale and back",
                 "format": "format equalisation"}
CLEAN = {"jpeg": "clean", "blur": "clean", "downscale": "x1 (clean)", "format": "as stored"}


def _severity_tick(family: str, severity: float) -> str:
    s = f"{severity:g}"
    return {"jpeg": f"q{s}", "blur": f"sigma {s}", "downscale": f"x{s}", "format": f"JPEG q{s}"}[family]


def _robustness_figure(data: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """Does pruning cost robustness: each pruned model's accuracy minus the reference's on the same perturbed
    images (paired interval), one panel per perturbation family, severities along x, the clean difference
    first. Points only, side by side per severity: lines joining offset points would cross each other."""
    import matplotlib.pyplot as plt

    from detector.report.robustness import perturbations

    models, margin = data["models"], (data.get("run") or {}).get("margin")
    ref = reference(models)
    key = comparison_key(ref)
    found = perturbations(models)
    families = [f for f in FAMILY_TITLES if any(p["family"] == f for p in found.values())]
    pruned = [m for m in pruned_models(models) if m.get(f"robustness_{key}")]
    if ref is None or not pruned or not families:
        return
    fig, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families) + 0.6, 4.2), squeeze=False,
                             sharey=True, layout="constrained")
    width = 0.7 / len(pruned)
    for ax, family in zip(axes[0], families):
        names = [n for n, p in found.items() if p["family"] == family]
        clean_set = found[names[0]]["set"]
        ticks = [CLEAN[family], *(_severity_tick(family, found[n]["severity"]) for n in names)]
        ax.axhline(0, color="k", lw=1)
        if margin:
            ax.axhline(-100 * margin, color="tab:green", lw=1, ls="--")
        for k, m in enumerate(pruned):
            clean = ((m.get(key) or {}).get(clean_set) or {}).get("accuracy_difference")
            diffs = [clean, *(((m[f"robustness_{key}"] or {}).get(n) or {}).get("accuracy_difference") for n in names)]
            xs = [i + (k - (len(pruned) - 1) / 2) * width for i in range(len(ticks))]
            shown = [(x, d) for x, d in zip(xs, diffs) if d and d.get("estimate") is not None]
            if not shown:
                continue
            style = model_style(m, models)
            ax.errorbar([x for x, _ in shown], [100 * d["estimate"] for _, d in shown],
                        yerr=[[100 * (d["estimate"] - d["low"]) for _, d in shown],
                              [100 * (d["high"] - d["estimate"]) for _, d in shown]],
                        fmt=style["marker"], color=style["color"], capsize=2, ms=5, label=m["name"])
        ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_title(f"{FAMILY_TITLES[family]}\n({clean_set})", fontsize=10)
        ax.set_xlabel("severity")
    axes[0][0].set_ylabel(f"accuracy − {ref['name']}'s, same images (pp)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if margin:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="tab:green", lw=1, ls="--"))
        labels.append(f"-margin ({100 * margin:g} pp)")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    against = ref["name"] if role(ref) == "control" else f"{labelled(ref, models)}, which ran fewer epochs,"
    fig.suptitle(f"Robustness: each pruned model against {against}\nunder perturbation (bars: 95 % CI)")
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
