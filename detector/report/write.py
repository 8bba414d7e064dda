"""The run's report: what the run ran on, the paper's Tables 3-6 as Markdown and CSV, what pruning alone costs
before fine-tuning, intervals and tests, ``report.json``, and figures.

Reads only the run folder (``experiment.yaml``, ``eval/*.json``, ``search/results.json``, ``models/*``), so
it can be rewritten at any time, on any machine, without Ray or a GPU::

    detector report RUN

Every table is a list of flat dict rows and its columns (``detector.report.tables``): the same rows give
the Markdown table in report.md and the CSV file beside it. Every part of report.md is a ``Section`` (a
heading, its lines, its tables); ``SECTIONS`` lists them in order.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Callable

from detector.io import atomic_write_json, atomic_write_text
from detector.job.runfolder import RunFolder
from detector.job.selection import TIE_BREAK, select_best
from detector.report.answer import answer_section
from detector.report.collect import METRIC_KEYS, RANKING_KEYS, collect, ordered_sets
from detector.report.figures import write_figures
from detector.report.frontier import frontier_section
from detector.report.pareto import pareto_section
from detector.report.robustness import robustness_section
from detector.report.roles import baseline, comparison_key, control, labelled, pruned_models, reference, role
from detector.report.sections import (audit_section, errors_section, generator_section, paper_section,
                                      primary_section, threshold_section, video_section)
from detector.report.statistics import efficiency_note, semistructured_section, statistics_section, timing_flag
from detector.report.tables import Column, Section, Table, csv_text, fixed, markdown, pct, thousands

log = logging.getLogger(__name__)

PAPER_SETTING = ("resnet50", 224)  # the paper's architecture and input size


def _clock(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")


def _param(value: Any) -> str:
    """A searched parameter's value: numbers in scientific notation (learning rates span decades)."""
    if value is None:
        return "n/a"
    return f"{value:.4e}" if isinstance(value, float) else str(value)


# Every metric of a data set as one flat row: both classes' precision, recall and F1, their macro mean,
# the ranking metrics, and the confusion cells named by direction.
METRIC_TITLES = {"accuracy": "Accuracy", "precision": "Precision (real)", "recall": "Recall (real)",
                 "f1": "F1 (real)", "precision_fake": "Precision (fake)", "recall_fake": "Recall (fake)",
                 "f1_fake": "F1 (fake)", "macro_f1": "Macro F1", "auc": "AUC", "ap_real": "AP (real positive)",
                 "ap_fake": "AP (fake positive)", "eer": "EER"}
CELL_KEYS = {"fake predicted fake": "fake_as_fake", "fake predicted real": "fake_as_real",
             "real predicted fake": "real_as_fake", "real predicted real": "real_as_real"}


def metric_row(m: dict[str, Any]) -> dict[str, Any]:
    """A data set's metrics (``collect.test_sets``' summary) as one flat row."""
    fake = (m.get("per_class") or {}).get("fake") or {}
    cal = m.get("at_calibrated") or {}
    cells = (m.get("confusion_matrix") or {}).get("cells") or {}
    return {**{k: m.get(k) for k in (*METRIC_KEYS, *RANKING_KEYS)},
            "precision_fake": fake.get("precision"), "recall_fake": fake.get("recall"), "f1_fake": fake.get("f1"),
            "macro_f1": (m.get("macro") or {}).get("f1"), "samples": m.get("samples"),
            "accuracy_calibrated": cal.get("accuracy"), "threshold_calibrated": cal.get("threshold"),
            **{CELL_KEYS[name]: n for name, n in cells.items()}}


def _metric_columns(keys: tuple[str, ...] = tuple(METRIC_TITLES)) -> list[Column]:
    return [Column(k, METRIC_TITLES[k], fixed(4) if k in ("auc", "ap_real", "ap_fake", "eer") else pct) for k in keys]


def _epochs(training: dict[str, Any] | None) -> str:
    if not training or training.get("epochs_run") is None:
        return "not recorded"
    early = ", stopped early" if training.get("stopped_early") else ""
    return f"{training['epochs_run']} (best {training['best_epoch']}{early})"


# -- what the run ran on ---------------------------------------------------------------------------------

def title_section(data: dict[str, Any]) -> Section:
    run_dir = Path(data["run_dir"])
    return Section(lines=[f"# Report: {run_dir.name}", "",
                          f"Run folder: `{run_dir}`. Every number below is read from the run folder's "
                          "`experiment.yaml`, `eval/`, `search/` and `models/` files; `detector report RUN` "
                          "rewrites this page.", ""])


def header_section(data: dict[str, Any]) -> Section:
    """The run's configuration and data, before any result."""
    run, models, trials = data["run"], data["models"], data["trials"]
    md: list[str] = []
    if run.get("config") is None:
        md += ["This run folder has no `experiment.yaml`: its configuration is unknown.", ""]
    else:
        arch, size = run["arch"], run["image_size"]
        paper = "" if (arch, size) == PAPER_SETTING else \
            f" (the paper's setting is {PAPER_SETTING[0]} at {PAPER_SETTING[1]} px: this run is not that)"
        md += [f"Configuration `{run['config']}` (name `{run['name']}`): **{arch} at {size}x{size} px**{paper}.", ""]
        base = baseline(models)
        run_epochs = {
            "baseline": _epochs(base["training"]) if base else "not evaluated",
            "search trial": (f"{', '.join(sorted({str(t['epochs']) for t in trials}))} per trial, {len(trials)} "
                             "trials" if trials else "no trials recorded"),
            "fine-tune": "; ".join(f"{m['name']}: {_epochs(m['training'])}" for m in fine_tuned(models))
                         or "none evaluated",
        }
        rows = [{"stage": stage, **cfg, "epochs_run": run_epochs[stage]} for stage, cfg in run["stages"].items()]
        md += [markdown(rows, [Column("stage", "Stage"), Column("max_epochs", "Max epochs"),
                               Column("patience", "Early stopping (patience)"), Column("epochs_run", "Epochs run"),
                               Column("batch_size", "Batch size"), Column("optimizer", "Optimizer"),
                               Column("lr", "Learning rate")])]
        s, p = run["search"], run["pruning"]
        md += [f"- Pruning: {p['method']} ({'global L1, zeros in dense tensors' if p['method'] == 'unstructured' else 'L1 channel pruning, channels removed'}) "
               f"at {', '.join(f'{100 * x:g} %' for x in p['sparsities'])}; each pruned model starts from the "
               "baseline, is pruned, then fine-tuned" + (
                   f"; the equal-budget control {control(models)['name']} went through the same search and "
                   "fine-tune at sparsity 0, from the same baseline weights." if control(models) else
                   "; no equal-budget dense control was run."),
               f"- Search per sparsity: {s['trials_per_sparsity']} trials, {s['space']}; {s['sampler']}; "
               f"scheduler {s['scheduler']}; objective: {s['metric']} at the trial's {s.get('objective', 'last')} "
               f"epoch ({s['direction']}).",
               f"- Evaluation: batch {run['evaluate']['batch_size']}, latency over {run['evaluate']['latency_repeats']} "
               f"repeats at batch 1, throughput at batch {run['evaluate']['throughput_batch']}; "
               f"{run['bootstrap_resamples']} bootstrap resamples; a decision threshold calibrated on the combined "
               f"validation set ({run['evaluate'].get('threshold_calibration', 'eer')}) beside 0.5; robustness "
               f"{'on' if run['evaluate'].get('robustness') else 'off'} (`evaluate.robustness`).", ""]
    md += _data_lines(run)
    return Section("The run", md)


def _data_lines(run: dict[str, Any]) -> list[str]:
    d, cfg = run.get("data"), run.get("data_config") or {}
    if d is None:
        where = f" (config: `{cfg['path']}`)" if cfg.get("path") else ""
        return [f"Data{where}: no evaluation records it yet (the evaluate stage writes its summary).", ""]
    pixels = (f", decoded once into {d['pixels_size']} px pixels from `{d['decoded_from']}`"
              if d.get("pixels_size") else "")
    sources = f"; imported from {', '.join(cfg['sources'])}" if cfg.get("sources") else ""
    lines = [f"Data: `{d['path']}` ({d.get('format')}{pixels}{sources}; manifest sha256 "
             f"`{str(d.get('manifest_sha256'))[:12]}`). Images per split, source and class:", ""]
    return lines + [markdown(d["counts"], [Column("split", "Split"), Column("source", "Source"),
                                           Column("real", "Real", thousands), Column("fake", "Fake", thousands)])]


# -- the paper's tables ----------------------------------------------------------------------------------

def table3(base: dict[str, Any] | None, primary: str = "combined_test") -> Table:
    """The baseline (``base``) on every data set (not per generator), the primary set first."""
    rows = [] if base is None else [
        {"dataset": name, "role": "primary" if name == primary else "", **metric_row(base["metrics"][name])}
        for name in ordered_sets(list(base["metrics"]), primary) if "/" not in name]
    return Table("table3_baseline.csv", rows, [Column("dataset", "Dataset"), Column("role", "Role"),
                                               *_metric_columns(), Column("samples", "Samples")])


def table3_section(data: dict[str, Any]) -> Section:
    base = baseline(data["models"])
    t3 = table3(base, data["primary"]["set"])
    if base is None:
        return Section(tables=[t3])
    return Section("Table 3. Baseline performance on all data sets", [
        "Precision, recall and F1 for each class and their macro mean; AUC, average precision and EER rank the "
        "probability of real (positive class: real, except where a column says otherwise).", "", t3.markdown(),
        *undefined_lines([base], {r["dataset"] for r in t3.rows})], [t3])


def _objective_title(metric: str, objective: str = "last") -> str:
    return f"{metric.replace('_', ' ').capitalize()}, {objective} epoch (objective)"


def _all_random(run: dict[str, Any]) -> bool:
    """Whether every trial of the search was one of TPE's random start-up draws."""
    search = run.get("search")
    return bool(search) and search["trials_per_sparsity"] <= search["tpe_startup_trials"]


def table4_title(run: dict[str, Any]) -> str:
    how = "random sampling (TPE start-up)" if _all_random(run) else "Optuna (TPE)"
    return f"Table 4. Optimal hyper-parameters found by {how}, per sparsity"


def table4(data: dict[str, Any]) -> Table:
    """The search's best parameters per sparsity, its objective once, and the trials it tied with."""
    metric = data["search"].get("metric", "val_accuracy")
    mode = data["search"].get("direction", "max")
    rows, params = [], []
    for b in sorted(data["search"].get("best", {}).values(), key=lambda b: b["sparsity"]):
        params += [k for k in b["params"] if k not in params]
        mine = [t for t in data["trials"] if t["sparsity"] == b["sparsity"]]
        done = [t for t in mine if t["status"] == "completed" and t["objective"] is not None]
        ties = select_best(done, mode=mode)[1] if done else []
        tied = [t["trial_id"] for t in ties if t["trial_id"] != b.get("trial_id")]
        rows.append({"sparsity": b["sparsity"], **b["params"], "objective": b["objective"],
                     "trial_id": b.get("trial_id"), "tied_with": " ".join(tied) or None, "trials": len(mine)})
    param_columns = [Column(k, f"Best {k}", _param) for k in params]
    return Table("table4_best_params.csv", rows, [
        Column("sparsity", "Sparsity", lambda s: f"{100 * s:.0f}%" if s else "0% (dense-ft, the control)"),
        *param_columns,
        Column("objective", _objective_title(metric, (data["run"].get("search") or {}).get("objective", "last")),
               pct if "accuracy" in metric else fixed(4)),
        Column("trial_id", "Trial"), Column("tied_with", "Tied with (same objective)", lambda v: v or "none"),
        Column("trials", "Trials")])


def table4_section(data: dict[str, Any]) -> Section:
    t4 = table4(data)
    if not t4.rows:
        return Section(tables=[t4])
    return Section(table4_title(data["run"]), [t4.markdown(), *_search_lines(data, t4)], [t4])


def _search_lines(data: dict[str, Any], t4: Table) -> list[str]:
    s, run = data["search"], data["run"]
    objective = (run.get("search") or {}).get("objective", "last")
    other = "best" if objective == "last" else "last"
    lines = [f"Search: scheduler `{s.get('scheduler')}`, {s.get('epochs_run')} trial-epochs run of a budget of "
             f"{s.get('epochs_budget')}. The objective is the trial's {s.get('metric', 'val_accuracy')} at its "
             f"{objective} epoch (`search.objective: {objective}`; not its {other} epoch; the trials table lists "
             f"both). Best trial: {TIE_BREAK}."]
    tied = [r for r in t4.rows if r["tied_with"]]
    if tied:
        lines.append("Ties: " + "; ".join(f"at {100 * r['sparsity']:.0f} % trial {r['trial_id']} tied with "
                                          f"{r['tied_with']} and was launched first" for r in tied) + ".")
    mismatch = []
    for b in s.get("best", {}).values():
        done = [t for t in data["trials"] if t["sparsity"] == b["sparsity"] and t["status"] == "completed"
                and t["objective"] is not None]
        if done and select_best(done, mode=s.get("direction", "max"))[0]["trial_id"] != b.get("trial_id"):
            mismatch.append(f"{100 * b['sparsity']:.0f} %")
    if mismatch:
        lines.append(f"At {', '.join(mismatch)} the search recorded another best trial than this rule picks "
                     "(an older selection): the table shows what the search used.")
    search = run.get("search")
    if _all_random(run):
        lines.append(f"With {search['trials_per_sparsity']} trials per sparsity and TPE's first "
                     f"{search['tpe_startup_trials']} at random, every trial of this search was a random draw "
                     "(TPE's model never proposed a trial): the table's title says random sampling.")
    return [" ".join(lines), ""]


def table5(models: list[dict[str, Any]], primary: str = "combined_test") -> Table:
    """Accuracy of every model on the primary set first (the paper's Table 5), then on the combined test set
    and on each other source's test set."""
    names = list(models[0]["metrics"]) if models else []
    sets = [n for n in ordered_sets(names, primary) if n != "combined_val" and "/" not in n]
    rows = [{"model": m["name"], **{n: m["metrics"][n]["accuracy"] for n in sets}} for m in models]
    return Table("table5_accuracy.csv", rows, [Column("model", "Model"), *(
        Column(n, f"Accuracy: {n}" + (" (primary)" if n == primary else ""), pct) for n in sets)])


def _same_set_lines(data: dict[str, Any]) -> list[str]:
    return [f"The test data has one source, `{src}`: its test set is the combined test set, shown once as "
            f"`{same}` (its generators keep their own rows)." for src, same in data["same_sets"].items()]


def table5_section(data: dict[str, Any]) -> Section:
    models, primary = data["models"], data["primary"]["set"]
    t5 = table5(models, primary)
    if not models:
        return Section(tables=[t5])
    return Section(f"Table 5. Accuracy comparison on the test sets (first column: {primary}, the primary set)",
                   [t5.markdown(), *_same_set_lines(data), ""], [t5])


def fine_tuned(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models a fine-tune made from the baseline's weights: the control (if any), then the pruned."""
    return [m for m in models if role(m) != "baseline"]


def pruning_table(models: list[dict[str, Any]], primary: str = "combined_test") -> Table:
    """Each pruned model right after pruning (no training) beside after fine-tuning, with its epochs: test
    accuracy on the primary set, validation accuracy on the combined validation set. The control's row is
    the same without pruning: what its fine-tune's epochs alone gained."""
    base_epochs = (baseline(models) or {}).get("training") or {}
    rows = []
    for m in fine_tuned(models):
        before = m.get("before_finetune") or {}
        measured = before.get("status") == "measured"
        b = before.get("metrics", {}) if measured else {}
        ft = m.get("training") or {}
        after = m["metrics"][primary]["accuracy"]
        pruned = b[primary]["accuracy"] if measured and primary in b else None
        total = (base_epochs.get("best_epoch") + ft["best_epoch"]
                 if base_epochs.get("best_epoch") is not None and ft.get("best_epoch") is not None else None)
        rows.append({"model": m["name"], "method": m["pruning_method"] or "none (the control)",
                     "val_pruned": b["combined_val"]["accuracy"] if measured else None,
                     "test_pruned": pruned, "test_finetuned": after,
                     "recovered_pp": None if pruned is None else 100 * (after - pruned),
                     "finetune_epochs": _epochs(ft) if ft else "not recorded", "epochs_total": total,
                     "note": None if measured else before.get("status", "not measured (older run)")})
    return Table("pruning_before_after.csv", rows, [
        Column("model", "Model"), Column("method", "Method"),
        Column("val_pruned", "Val accuracy right after pruning", pct),
        Column("test_pruned", "Test accuracy right after pruning", pct),
        Column("test_finetuned", "Test accuracy after fine-tuning", pct),
        Column("recovered_pp", "Fine-tuning gained (pp)", lambda x: "n/a" if x is None else f"{x:+.2f}"),
        Column("finetune_epochs", "Fine-tune epochs run"),
        Column("epochs_total", "Epochs behind the saved weights", lambda x: "n/a" if x is None else str(x)),
        Column("note", "Note", lambda x: x or "")])


def pruning_section(data: dict[str, Any]) -> Section:
    models, primary = data["models"], data["primary"]["set"]
    table = pruning_table(models, primary)
    if not table.rows:
        return Section(tables=[table])
    return Section(f"Pruning alone, and after fine-tuning (test: {primary}; val: combined_val)",
                   [table.markdown(), *_pruning_lines(models, table, primary)], [table])


def _pruning_lines(models: list[dict[str, Any]], table: Table, primary: str = "combined_test") -> list[str]:
    base = baseline(models)
    be = (base or {}).get("training") or {}
    if not be.get("best_epoch"):
        return ["The baseline's epochs are not recorded (`models/baseline.json`).", ""]
    text = (f"The baseline's saved weights are those of its epoch {be['best_epoch']} (of {be['epochs_run']} run). "
            "Every pruned model starts from those weights, is pruned, and is then fine-tuned: the last column "
            "counts the baseline's epochs plus the fine-tune's best epoch, so each pruned model had more "
            "training than the baseline. \"Right after pruning\" is the cost of pruning alone (same images, "
            "same preprocessing, no training).")
    ctrl = control(models)
    if ctrl is not None:
        text += (f" The control, {ctrl['name']}, went through the same search and fine-tune without pruning: its "
                 "gain is what the extra epochs alone give, and every verdict compares a pruned model with it.")
    else:
        text += (" Without an equal-budget control in this run, where a pruned model beats the baseline the "
                 "extra epochs are a likelier cause than pruning.")
        base_test = base["metrics"][primary]["accuracy"]
        better = [m for m in pruned_models(models) if m["metrics"][primary]["accuracy"] > base_test]
        if better:
            text += (f" Here {', '.join(labelled(m, models) for m in better)} scored above the baseline's "
                     f"{100 * base_test:.2f} % after fine-tuning (the baseline ran {be['epochs_run']} epochs).")
    return [text, ""]


def table6(models: list[dict[str, Any]]) -> Table:
    """Every model's size and speed; each timing also against the reference's (the control, else the
    baseline) in the column ``vs_control`` or ``vs_baseline``."""
    ref = reference(models)
    key = comparison_key(ref)
    rows = []
    for m in models:
        e = m["efficiency"]
        rows.append({"model": m["name"], "sparsity": m["measured_sparsity"],
                     **{k: e.get(k) for k in ("nonzero_params", "total_params", "size_mb", "sparse_size_mb", "macs",
                                              "latency_ms", "latency_p10_ms", "latency_p90_ms", "throughput",
                                              "throughput_min", "throughput_max", "throughput_batch", "device")},
                     "file_mib": m.get("model_file_mib"),
                     key: timing_flag(e, ref["efficiency"]) if ref and m is not ref else None})
    # what every row shares goes into a column title, not a column of equal cells (the CSV keeps both)
    batches = {r["throughput_batch"] for r in rows}
    batch = f", batch {batches.pop()}" if len(batches) == 1 else ""
    devices = {r["device"] for r in rows}
    device = [] if len(devices) == 1 else [Column("device", "Device")]
    columns = [
        Column("model", "Model"), Column("sparsity", "Sparsity (%)", fixed(2, 100)),
        Column("nonzero_params", "Non-zero params", thousands), Column("total_params", "Total params", thousands),
        Column("size_mb", "State dict (MiB)", fixed(2)), Column("file_mib", "Model file (MiB)", fixed(2)),
        Column("sparse_size_mb", "Sparse export (MiB)", fixed(2)), Column("macs", "GMACs", fixed(3, 1e-9)),
        Column("latency_ms", "Latency, batch 1 (ms, median)", fixed(2)),
        Column("latency_p10_ms", "p10", fixed(2)), Column("latency_p90_ms", "p90", fixed(2)),
        Column("throughput", f"Throughput{batch} (img/s)", fixed(1)),
        Column("throughput_min", "slowest pass", fixed(1)), Column("throughput_max", "fastest pass", fixed(1)),
        Column(key, f"Timing vs {ref['name'] if ref else 'baseline'}", lambda x: x or "-"), *device]
    return Table("table6_efficiency.csv", rows, columns, extra_csv=("throughput_batch", "device"))


def table6_section(data: dict[str, Any]) -> Section:
    models = data["models"]
    t6 = table6(models)
    if not models:
        return Section(lines=["No model has been evaluated yet (the evaluate stage writes `eval/`): tables 3, 5 and "
                              "6 follow once it has run.", ""], tables=[t6])
    return Section("Table 6. Model efficiency", [t6.markdown(), efficiency_note(models), ""], [t6])


def metrics_table(models: list[dict[str, Any]]) -> Table:
    """Every metric of every model on every data set, per-generator rows included; confusion cells by
    direction, at 0.5, and accuracy at the validation-calibrated threshold."""
    rows = [{"model": m["name"], "data_set": name, **metric_row(v)} for m in models for name, v in m["metrics"].items()]
    return Table("metrics.csv", rows, [
        Column("model", "Model"), Column("data_set", "Data set"), *_metric_columns(), Column("samples", "Samples"),
        *(Column(key, name) for name, key in CELL_KEYS.items()),
        Column("accuracy_calibrated", "Accuracy at calibrated threshold", pct),
        Column("threshold_calibrated", "Calibrated threshold", fixed(4))])


def metrics_section(data: dict[str, Any]) -> Section:
    models = data["models"]
    table = metrics_table(models)
    if not models:
        return Section(tables=[table])
    return Section("All metrics", [
        "Positive class: real (label 1); every confusion cell is named by its direction (true class, then "
        "predicted class), at 0.5, and accuracy is also given at the validation-calibrated threshold.", "",
        table.markdown(), *undefined_lines(models)], [table])


def undefined_lines(models: list[dict[str, Any]], sets: set[str] | None = None) -> list[str]:
    """Why a cell reads n/a: one line per group of data sets with the same reasons."""
    by_set: dict[str, dict[str, str]] = {}
    for m in models:
        for name, v in m["metrics"].items():
            if sets is None or name in sets:
                for metric, reason in (v.get("notes") or {}).items():
                    by_set.setdefault(name, {}).setdefault(metric, reason)
    groups: dict[tuple, list[str]] = {}
    for name, notes in by_set.items():
        groups.setdefault(tuple(sorted(notes.items())), []).append(name)
    lines = []
    titles = {"precision": "precision (real)", "recall": "recall (real)", "f1": "F1 (real)", "auc": "AUC",
              "precision_fake": "precision (fake)", "recall_fake": "recall (fake)", "f1_fake": "F1 (fake)",
              "ap_real": "AP (real positive)", "ap_fake": "AP (fake positive)", "eer": "EER"}
    for notes, names in groups.items():
        reasons: dict[str, list[str]] = {}
        for metric, reason in notes:
            reasons.setdefault(reason, []).append(titles.get(metric, metric))
        text = "; ".join(f"{', '.join(ms)} {reason}" for reason, ms in reasons.items())
        lines.append(f"- n/a on {', '.join(names)}: {text}.")
    return lines + [""] if lines else []


def trials_table(trials: list[dict[str, Any]]) -> Table:
    rows = [{"sparsity": t["sparsity"], "trial_id": t["trial_id"], **t["params"], "val_accuracy": t["val_accuracy"],
             "best_val_accuracy": t.get("best_val_accuracy"), "epochs": t["epochs"], "start": t["start"],
             "end": t["end"], "status": t["status"]} for t in trials]
    params = []
    for t in trials:
        params += [k for k in t["params"] if k not in params]
    return Table("trials.csv", rows, [
        Column("sparsity", "Sparsity", lambda s: f"{s:g}"), Column("trial_id", "Trial"),
        *(Column(k, k, _param) for k in params),
        Column("val_accuracy", "Val accuracy, last epoch", pct),
        Column("best_val_accuracy", "Val accuracy, best epoch", pct), Column("epochs", "Epochs"),
        Column("start", "Start (UTC)", _clock), Column("end", "End (UTC)", _clock), Column("status", "Status")])


def trials_section(data: dict[str, Any]) -> Section:
    if not data["trials"]:
        return Section()
    table = trials_table(data["trials"])
    return Section("Search trials", [table.markdown()], [table])


def figures_section(figures: list[Path]) -> Section:
    return Section("Figures", [*(f"![{f.stem}]({f.name})" for f in figures), ""])


# report.md from top to bottom. Each section reads the collected data and decides itself whether it has
# anything to show (most need an evaluated model), so this list is the report's whole outline.
SECTIONS: tuple[Callable[[dict[str, Any]], Section], ...] = (
    title_section, answer_section, header_section, frontier_section, pareto_section, primary_section, table3_section,
    table4_section, table5_section, errors_section, threshold_section, pruning_section, statistics_section,
    robustness_section, video_section, generator_section, audit_section, paper_section, table6_section,
    semistructured_section, metrics_section, trials_section)


def _csv_files(sections: list[Section]) -> dict[str, Table]:
    out: dict[str, Table] = {}
    for table in (t for s in sections for t in s.tables):
        if table.csv in out:
            raise ValueError(f"two tables of the report would write {table.csv}")
        out[table.csv] = table
    return out


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/`` (report.md, report.json, *.csv, *.png); returns the report.md path."""
    run_dir = Path(run_dir)
    out = RunFolder(run_dir).report
    out.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir)
    sections = [section(data) for section in SECTIONS]
    embedded = {line for s in sections for line in s.lines}  # a figure a section shows is not listed again
    figures = [f for f in write_figures(data, out) if f"![{f.stem}]({f.name})" not in embedded]
    sections.append(figures_section(figures))
    for name, table in _csv_files(sections).items():
        atomic_write_text(out / name, csv_text(table.rows, table.csv_columns))
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "report.md", "\n".join(line for s in sections for line in s.markdown()))
    log.info("report: %s", out / "report.md")
    return out / "report.md"
