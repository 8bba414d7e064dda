"""The run's report: the paper's Tables 3-6 as Markdown and CSV, ``report.json``, and figures.

Reads only the run folder (``eval/*.json``, ``search/results.json``, ``models/*.json``), so it can be
rewritten at any time, on any machine, without Ray or a GPU::

    detector report RUN

Every table is a list of flat dict rows and its columns (``detector.report.tables``): the same rows give
the Markdown table in report.md and the CSV file beside it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.io import atomic_write_json, atomic_write_text
from detector.job.runfolder import RunFolder
from detector.report.collect import METRIC_KEYS, collect
from detector.report.figures import write_figures
from detector.report.statistics import (STATISTICS_COLUMNS, efficiency_note, semistructured_section,
                                        statistics_rows, statistics_section)
from detector.report.tables import Column, csv_text, fixed, markdown, pct, thousands

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    csv: str  # file name of its CSV in RUN/report/
    rows: list[dict[str, Any]]
    columns: list[Column]


def _clock(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")


def _param(value: Any) -> str:
    """A searched parameter's value: numbers in scientific notation (learning rates span decades)."""
    if value is None:
        return "n/a"
    return f"{value:.4e}" if isinstance(value, float) else str(value)


def _metric_columns() -> list[Column]:
    titles = {"accuracy": "Accuracy", "precision": "Precision (real)", "recall": "Recall (real)",
              "f1": "F1 (real)", "auc": "AUC"}
    return [Column(k, titles[k], fixed(4) if k == "auc" else pct) for k in METRIC_KEYS]


def table3(baseline: dict[str, Any] | None) -> Table:
    """The baseline on every data set (not per generator)."""
    rows = [] if baseline is None else [
        {"dataset": name, **{k: m[k] for k in METRIC_KEYS}, "samples": m["samples"]}
        for name, m in baseline["metrics"].items() if "/" not in name]
    return Table("table3_baseline.csv", rows, [Column("dataset", "Dataset"), *_metric_columns(),
                                               Column("samples", "Samples")])


def table4(data: dict[str, Any]) -> Table:
    """The search's best parameters per sparsity."""
    metric = data["search"].get("metric", "val_accuracy")
    rows, params = [], []
    for b in sorted(data["search"].get("best", {}).values(), key=lambda b: b["sparsity"]):
        params += [k for k in b["params"] if k not in params]
        rows.append({"sparsity": b["sparsity"], **b["params"], "objective": b["objective"],
                     "val_accuracy": b["val_accuracy"],
                     "trials": sum(1 for t in data["trials"] if t["sparsity"] == b["sparsity"])})
    param_columns = [Column(k, f"Best {k}", _param) for k in params]
    return Table("table4_best_params.csv", rows, [
        Column("sparsity", "Sparsity", lambda s: f"{100 * s:.0f}%"), *param_columns,
        Column("objective", f"Trial {metric} (objective)", fixed(4)),
        Column("val_accuracy", "Trial val accuracy", pct), Column("trials", "Trials")])


def table5(models: list[dict[str, Any]]) -> Table:
    """Accuracy of every model on the combined test set and on each source's test set."""
    names = list(models[0]["metrics"]) if models else []
    sources = [n for n in names if n not in ("combined_val", "combined_test") and "/" not in n]
    sets = ["combined_test", *sources] if len(sources) > 1 else ["combined_test"]
    rows = [{"model": m["name"], **{n: m["metrics"][n]["accuracy"] for n in sets}} for m in models]
    return Table("table5_accuracy.csv", rows, [Column("model", "Model"),
                                               *(Column(n, f"Accuracy: {n}", pct) for n in sets)])


def table6(models: list[dict[str, Any]]) -> Table:
    rows = [{"model": m["name"], "sparsity": m["measured_sparsity"],
             **{k: m["efficiency"].get(k) for k in ("nonzero_params", "total_params", "size_mb", "sparse_size_mb",
                                                    "macs", "latency_ms", "throughput", "device")}} for m in models]
    return Table("table6_efficiency.csv", rows, [
        Column("model", "Model"), Column("sparsity", "Sparsity (%)", fixed(2, 100)),
        Column("nonzero_params", "Non-zero params", thousands), Column("total_params", "Total params", thousands),
        Column("size_mb", "Size (MB)", fixed(2)), Column("sparse_size_mb", "Sparse file (MB)", fixed(2)),
        Column("macs", "GMACs", fixed(3, 1e-9)), Column("latency_ms", "Latency (ms, batch 1)", fixed(2)),
        Column("throughput", "Throughput (img/s)", fixed(1)), Column("device", "Device")])


def metrics_table(models: list[dict[str, Any]]) -> Table:
    """Every metric of every model on every data set, per-generator rows included."""
    rows = []
    for m in models:
        for name, v in m["metrics"].items():
            cm = v["confusion_matrix"]["matrix"] if v.get("confusion_matrix") else [[None, None], [None, None]]
            rows.append({"model": m["name"], "data_set": name, **{k: v[k] for k in METRIC_KEYS},
                         "samples": v["samples"], "tn": cm[0][0], "fp": cm[0][1], "fn": cm[1][0], "tp": cm[1][1]})
    return Table("metrics.csv", rows, [
        Column("model", "Model"), Column("data_set", "Data set"),
        *(Column(k, k, fixed(4) if k == "auc" else pct) for k in METRIC_KEYS), Column("samples"),
        Column("tn", "TN (fake->fake)"), Column("fp", "FP (fake->real)"), Column("fn", "FN (real->fake)"),
        Column("tp", "TP (real->real)")])


def trials_table(trials: list[dict[str, Any]]) -> Table:
    rows = [{"sparsity": t["sparsity"], "trial_id": t["trial_id"], **t["params"], "val_accuracy": t["val_accuracy"],
             "epochs": t["epochs"], "start": t["start"], "end": t["end"], "status": t["status"]} for t in trials]
    params = []
    for t in trials:
        params += [k for k in t["params"] if k not in params]
    return Table("trials.csv", rows, [
        Column("sparsity", "Sparsity", lambda s: f"{s:g}"), Column("trial_id", "Trial"),
        *(Column(k, k, _param) for k in params),
        Column("val_accuracy", "Val accuracy", pct), Column("epochs", "Epochs"),
        Column("start", "Start", _clock), Column("end", "End", _clock), Column("status", "Status")])


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/`` (report.md, report.json, *.csv, *.png); returns the report.md path."""
    run_dir = Path(run_dir)
    out = RunFolder(run_dir).report
    out.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir)
    models = data["models"]
    baseline = next((m for m in models if m["sparsity"] == 0), None)
    tables: list[Table] = []

    def show(table: Table) -> str:
        tables.append(table)
        return markdown(table.rows, table.columns)

    md: list[str] = [f"# Report: {run_dir.name}", ""]
    md += [f"Run folder: `{run_dir}`. Every number below is read from the run folder's `eval/`, `search/` and "
           "`models/` files; `detector report RUN` rewrites this page.", ""]
    t3 = table3(baseline)
    if baseline:
        md += ["## Table 3. Baseline performance on all data sets", "", show(t3)]
    t4 = table4(data)
    if t4.rows:
        s = data["search"]
        md += ["## Table 4. Optimal hyper-parameters found by Optuna (TPE), per sparsity", "", show(t4)]
        md += [f"Search: scheduler `{s.get('scheduler')}`, {s.get('epochs_run')} trial-epochs run of a budget of "
               f"{s.get('epochs_budget')}.", ""]
    if models:
        md += ["## Table 5. Accuracy comparison on the test sets", "", show(table5(models))]
        md += statistics_section(data)
        md += ["## Table 6. Model efficiency", "", show(table6(models))]
        md += ["Sparsity: prunable weights zeroed (unstructured) or removed (structured). Size: the dense saved "
               "state dict (MiB); sparse file: the compact export (`detector export --format sparse`). "
               + efficiency_note(models), ""]
    else:
        md += ["No model has been evaluated yet (the evaluate stage writes `eval/`): tables 3, 5 and 6 follow "
               "once it has run.", ""]
    md += semistructured_section(models)
    if models:
        md += ["## All metrics", "", "Positive class: real (label 1). Confusion-matrix rows are true classes, "
               "columns predicted ones.", "", show(metrics_table(models))]
    if data["trials"]:
        md += ["## Search trials", "", show(trials_table(data["trials"]))]

    figures = write_figures(data, out)
    md += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]

    # Empty tables still get their CSV (a header row), so scripts find every file in every report.
    for table in {t.csv: t for t in [t3, t4, table5(models), table6(models), metrics_table(models),
                                     *tables]}.values():
        atomic_write_text(out / table.csv, csv_text(table.rows, table.columns))
    stats = statistics_rows(models)
    if stats:
        atomic_write_text(out / "statistics.csv", csv_text(stats, STATISTICS_COLUMNS))
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "report.md", "\n".join(md))
    log.info("report: %s", out / "report.md")
    return out / "report.md"
