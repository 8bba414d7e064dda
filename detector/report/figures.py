"""The report's figures (PNG), drawn from the collected data (``report.json``) and the stored predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from detector.io import atomic_open


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
        _model_figures(models, save)
    _search_figure(data["trials"], save)
    return paths


def _model_figures(models: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_curve

    # Fig 5: confusion matrices of every model on the combined test set.
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        cm = np.asarray(m["metrics"]["combined_test"]["confusion_matrix"]["matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["fake", "real"])
        ax.set_yticks([0, 1], ["fake", "real"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(m["name"])
    fig.suptitle("Confusion matrices, combined test set")
    save(fig, "confusion_matrices.png")

    # ROC curves from the stored predictions.
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

    # Accuracy against sparsity, per test set.
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = [n for n in models[0]["metrics"] if "/" not in n and n != "combined_val"]
    xs = [100 * m["sparsity"] for m in models]
    for n in names:
        ax.plot(xs, [100 * (m["metrics"][n]["accuracy"] or 0) for m in models], marker="o", label=n)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Test accuracy against sparsity")
    ax.legend(fontsize=8)
    save(fig, "accuracy_vs_sparsity.png")


def _search_figure(trials: list[dict[str, Any]], save: Callable[[Any, str], None]) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    # Each search's trial history: trial value in launch order, and the best so far.
    if trials:
        sparsities = sorted({t["sparsity"] for t in trials})
        fig, axes = plt.subplots(1, len(sparsities), figsize=(3.4 * len(sparsities), 3.2), squeeze=False, sharey=True)
        for ax, s in zip(axes[0], sparsities):
            ts = sorted((t for t in trials if t["sparsity"] == s and t["val_accuracy"] is not None),
                        key=lambda t: t["start"] or 0)
            vals = [100 * t["val_accuracy"] for t in ts]
            colors = ["tab:blue" if t["params"].get("optimizer") == "adam" else "tab:orange" for t in ts]
            ax.scatter(range(1, len(ts) + 1), vals, c=colors)
            ax.plot(range(1, len(ts) + 1), np.maximum.accumulate(vals) if vals else [], "k-", lw=1)
            ax.set_title(f"sparsity {100 * s:.0f}%")
            ax.set_xlabel("trial")
        axes[0][0].set_ylabel("val accuracy (%)  (blue adam, orange sgd)")
        fig.suptitle("Search history: each trial, and the best so far")
        save(fig, "search_history.png")
