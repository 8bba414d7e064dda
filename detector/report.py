"""The run's report: the paper's Tables 3-6 as Markdown and CSV, ``report.json``, and figures.

Reads only the run folder (``eval/*.json``, ``search/results.json``, ``models/*.json``), so it can be
rewritten at any time, on any machine, without Ray or a GPU::

    detector report RUN
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from detector.io import atomic_open, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "auc")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m.get(k) for k in METRIC_KEYS}
    out["samples"] = m.get("samples")
    out["confusion_matrix"] = m.get("confusion_matrix")
    return out


def test_sets(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flatten one model's evaluation into named test sets: the combined validation set, the combined test
    set, each source's test set and, where a source has several generators, each generator's."""
    val, test = evaluation["metrics"]["val"], evaluation["metrics"]["test"]
    out = {"combined_val": _summary(val["all"]), "combined_test": _summary(test["all"])}
    for source, block in sorted(test.get("sources", {}).items()):
        out[source] = _summary(block["all"])
        gens = block.get("generators", {})
        if len(gens) > 1:
            for gen, m in sorted(gens.items()):
                out[f"{source}/{gen}"] = _summary(m)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as ``report.json`` holds it."""
    from detector.stages import eval_path

    cfg_search = _read(run_dir / "search" / "results.json") if (run_dir / "search" / "results.json").exists() else None
    evals = sorted((_read(p) for p in (run_dir / "eval").glob("*.json") if not p.name.endswith(".predictions.json")),
                   key=lambda e: e["target_sparsity"])
    if not evals and cfg_search is None:
        raise FileNotFoundError(f"{run_dir}: neither evaluations (eval/) nor search results (search/) to report on")
    best = (cfg_search or {}).get("best", {})
    models = []
    for e in evals:
        s = float(e["target_sparsity"])
        bp = best.get(f"{s:g}") if s > 0 else None
        models.append({
            "name": e["name"],
            "sparsity": s,
            "measured_sparsity": e["sparsity"],
            "best_params": {"optimizer": bp["optimizer"], "lr": bp["lr"]} if bp else None,
            "metrics": test_sets(e),
            "efficiency": e["efficiency"],
            "predictions": str(eval_path(run_dir, s).with_suffix(".predictions.json")),
            "pruning_method": e.get("pruning_method", "unstructured") if s > 0 else None,
            "params_removed": e.get("params_removed", e["sparsity"]),
            **({"semistructured": e["semistructured"]} if "semistructured" in e else {}),
        })
    from detector.report_stats import add_statistics

    statistics = add_statistics(run_dir, models)
    trials = []
    if cfg_search:
        for t in cfg_search["trials"]:
            trials.append({"sparsity": t["sparsity"], "params": t["params"], "val_accuracy": t["val_accuracy"],
                           "objective": t["objective"],
                           "epochs": t["epochs"], "start": t["start"], "end": t["end"], "status": t["status"],
                           "trial_id": t["trial_id"]})
    return {
        "run_dir": str(run_dir),
        "models": models,
        "trials": trials,
        "search": {k: v for k, v in (cfg_search or {}).items() if k != "trials"},
        "statistics": statistics,
    }


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/`` (report.md, report.json, *.csv, *.png); returns the report.md path."""
    from detector.report_stats import efficiency_note, semistructured_section, statistics_section

    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir)
    models = data["models"]
    baseline = next((m for m in models if m["sparsity"] == 0), None)
    set_names = list(models[0]["metrics"]) if models else []
    sources = [n for n in set_names if n not in ("combined_val", "combined_test") and "/" not in n]

    md: list[str] = [f"# Report: {run_dir.name}", ""]
    md += [f"Run folder: `{run_dir}`. Every number below is read from the run folder's `eval/`, `search/` and "
           "`models/` files; `detector report RUN` rewrites this page.", ""]

    # Table 3: the baseline on every data set.
    t3_header = ["Dataset", "Accuracy", "Precision (real)", "Recall (real)", "F1 (real)", "AUC", "Samples"]
    t3_rows = []
    if baseline:
        for name in (n for n in set_names if "/" not in n):
            m = baseline["metrics"][name]
            t3_rows.append([name, *(_pct(m[k]) if k != "auc" else ("n/a" if m[k] is None else f"{m[k]:.4f}")
                                    for k in METRIC_KEYS), m["samples"]])
        md += ["## Table 3. Baseline performance on all data sets", "", _md_table(t3_header, t3_rows), ""]

    # Table 4: the search's best parameters.
    metric = data["search"].get("metric", "val_accuracy")
    t4_header = ["Sparsity", "Best optimizer", "Best learning rate", f"Trial {metric} (objective)",
                 "Trial val accuracy", "Trials"]
    t4_rows = []
    for key, b in sorted(data["search"].get("best", {}).items(), key=lambda kv: float(kv[0])):
        n = sum(1 for t in data["trials"] if t["sparsity"] == b["sparsity"])
        t4_rows.append([f"{100 * b['sparsity']:.0f}%", b["optimizer"], f"{b['lr']:.4e}", f"{b['objective']:.4f}",
                        _pct(b["val_accuracy"]), n])
    if t4_rows:
        s = data["search"]
        md += ["## Table 4. Optimal hyper-parameters found by Optuna (TPE), per sparsity", "", _md_table(t4_header, t4_rows), ""]
        md += [f"Search: scheduler `{s.get('scheduler')}`, {s.get('epochs_run')} trial-epochs run of a budget of "
               f"{s.get('epochs_budget')}.", ""]

    # Table 5: accuracy of every model on every test set.
    t5_sets = ["combined_test", *sources] if len(sources) > 1 else ["combined_test"]
    t5_header = ["Model", *(f"Accuracy: {n}" for n in t5_sets)]
    t5_rows = [[m["name"], *(_pct(m["metrics"][n]["accuracy"]) for n in t5_sets)] for m in models]
    if models:
        md += ["## Table 5. Accuracy comparison on the test sets", "", _md_table(t5_header, t5_rows), ""]
        stats_md, stats_header, stats_rows = statistics_section(data)
        md += stats_md
    else:
        md += ["No model has been evaluated yet (the evaluate stage writes `eval/`): tables 3, 5 and 6 follow "
               "once it has run.", ""]

    # Table 6: efficiency.
    t6_header = ["Model", "Sparsity (%)", "Non-zero params", "Total params", "Size (MB)", "Sparse file (MB)",
                 "GMACs", "Latency (ms, batch 1)", "Throughput (img/s)", "Device"]
    t6_rows = []
    for m in models:
        e = m["efficiency"]
        t6_rows.append([m["name"], f"{100 * m['params_removed']:.2f}", f"{e['nonzero_params']:,}", f"{e['total_params']:,}",
                        f"{e['size_mb']:.2f}", _num(e.get("sparse_size_mb"), ".2f"), _num(e.get("macs"), ".3f", 1e-9),
                        f"{e['latency_ms']:.2f}", f"{e['throughput']:.1f}", e.get("device", "")])
    if models:
        md += ["## Table 6. Model efficiency", "", _md_table(t6_header, t6_rows), ""]
        md += ["Sparsity: prunable weights zeroed (unstructured) or removed (structured). Size: the dense saved "
               "state dict (MiB); sparse file: the compact export (`detector export --format sparse`). "
               + efficiency_note(models), ""]
    md += semistructured_section(models)

    # Full metrics, per model and data set (per-generator rows included).
    full_header = ["Model", "Data set", *METRIC_KEYS, "samples", "TN (fake->fake)", "FP (fake->real)",
                   "FN (real->fake)", "TP (real->real)"]
    full_rows = []
    for m in models:
        for name, v in m["metrics"].items():
            cm = v["confusion_matrix"]["matrix"] if v.get("confusion_matrix") else [[None, None], [None, None]]
            full_rows.append([m["name"], name, *(v[k] for k in METRIC_KEYS), v["samples"], cm[0][0], cm[0][1],
                              cm[1][0], cm[1][1]])
    if models:
        shown = [[r[0], r[1], *(_pct(x) if i < 4 else ("n/a" if x is None else f"{x:.4f}")
                                for i, x in enumerate(r[2:7])), *r[7:]] for r in full_rows]
        md += ["## All metrics", "", "Positive class: real (label 1). Confusion-matrix rows are true classes, "
               "columns predicted ones.", "", _md_table(full_header, shown), ""]

    if data["trials"]:
        tr_header = ["Sparsity", "Trial", "Optimizer", "Learning rate", "Val accuracy", "Epochs", "Start", "End", "Status"]
        tr_rows = [[f"{t['sparsity']:g}", t["trial_id"], t["params"].get("optimizer"), f"{t['params'].get('lr', float('nan')):.3e}",
                    _pct(t["val_accuracy"]), t["epochs"], _fmt_time(t["start"]), _fmt_time(t["end"]), t["status"]]
                   for t in data["trials"]]
        md += ["## Search trials", "", _md_table(tr_header, tr_rows), ""]

    figures = write_figures(data, out)
    md += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]

    atomic_write_text(out / "table3_baseline.csv", _csv(t3_header, t3_rows))
    atomic_write_text(out / "table4_best_params.csv", _csv(t4_header, t4_rows))
    atomic_write_text(out / "table5_accuracy.csv", _csv(t5_header, t5_rows))
    atomic_write_text(out / "table6_efficiency.csv", _csv(t6_header, t6_rows))
    atomic_write_text(out / "metrics.csv", _csv(full_header, full_rows))
    if models and stats_rows:
        atomic_write_text(out / "statistics.csv", _csv(stats_header, stats_rows))
    if data["trials"]:
        atomic_write_text(out / "trials.csv", _csv(tr_header, [[*r[:6], t["start"], t["end"], r[8]]
                                                                for r, t in zip(tr_rows, data["trials"])]))
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "report.md", "\n".join(md))
    log.info("report: %s", out / "report.md")
    return out / "report.md"


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if x is None else format(scale * x, fmt)


def _fmt_time(t: float | None) -> str:
    import datetime as dt

    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")


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
