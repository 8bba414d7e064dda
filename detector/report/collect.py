"""What the report shows, gathered from the run folder alone (``report.json`` holds exactly this)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector.evaluate.sets import primary_source, sources_with_own_set
from detector.job.runfolder import RunFolder, check_model_name
from detector.report.frontier import frontier_data
from detector.report.roles import order, role
from detector.prune import PruningInfo

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "auc")
# beside METRIC_KEYS (the paper's), the field's: average precision (each class positive) and the EER
RANKING_KEYS = ("ap_real", "ap_fake", "eer")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m.get(k) for k in (*METRIC_KEYS, *RANKING_KEYS)}
    out["samples"] = m.get("samples")
    out["confusion_matrix"] = m.get("confusion_matrix")
    out["per_class"] = m.get("per_class")
    out["macro"] = m.get("macro")
    out["at_calibrated"] = m.get("at_calibrated")
    # why a metric above is undefined (None), e.g. precision of the real class on a fake-only set
    notes = dict(m.get("notes") or {})
    if m.get("auc_note"):
        notes["auc"] = m["auc_note"]
    out["notes"] = notes
    return out


def test_sets(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flatten one model's evaluation (``metrics``: ``{"val": ..., "test": ...}``) into named test sets: the
    combined validation set, the combined test set, each source's test set (unless it is the only one) and,
    where a source has several generators, each generator's."""
    val, test = evaluation["metrics"]["val"], evaluation["metrics"]["test"]
    out = {"combined_val": _summary(val["all"]), "combined_test": _summary(test["all"])}
    own = sources_with_own_set(list(test.get("sources", {})))
    for source, block in sorted(test.get("sources", {}).items()):
        if source in own:
            out[source] = _summary(block["all"])
        gens = block.get("generators", {})
        if len(gens) > 1:
            for gen, m in sorted(gens.items()):
                out[f"{source}/{gen}"] = _summary(m)
    return out


def _training(run: RunFolder, name: str) -> dict[str, Any] | None:
    """How the model was trained (its stage's fit summary, ``models/<model>.json``), or None if absent."""
    path = run.model_summary(name)
    if not path.is_file():
        return None
    fit = read_json(path)
    cfg = fit.get("config", {})
    return {"epochs_run": fit.get("epochs_run"), "best_epoch": fit.get("best_epoch"),
            "stopped_early": fit.get("stopped_early"), "max_epochs": cfg.get("max_epochs"),
            "batch_size": cfg.get("batch_size"), "optimizer": cfg.get("optimizer"), "lr": cfg.get("lr")}


def _per_source(evaluation: dict[str, Any], key: str) -> dict[str, Any]:
    """One block of every test source that has it: ``videos`` (frame -> video level), ``vs_reals`` (each
    generator against the source's reals) or ``vs_reals_note`` (why there is no such comparison)."""
    return {source: block[key] for source, block in sorted(evaluation["metrics"]["test"].get("sources", {}).items())
            if block.get(key)}


def _before_finetune(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    before = evaluation.get("before_finetune")
    if before is None:
        return None
    if before.get("status") != "measured":
        return {"status": before.get("status", "not measured")}
    return {"status": "measured", "pruned_from": before.get("pruned_from"), "metrics": test_sets(before)}


def _model(run: RunFolder, evaluation: dict[str, Any], best: dict[str, Any], where: Path) -> dict[str, Any]:
    pruning = PruningInfo.from_metadata(evaluation, where=str(where))
    s = pruning.sparsity
    name = check_model_name(where.stem)  # the file's name, not a name read from inside it
    kind = role({"name": name, "sparsity": s})
    # the control's search is the one at sparsity 0 (key "0"); the baseline had none
    bp = best.get(f"{s:g}") if kind != "baseline" else None
    file = run.model(name)
    model = {
        "name": name,
        "role": kind,
        "sparsity": s,
        "measured_sparsity": evaluation["sparsity"],
        "best_params": dict(bp["params"]) if bp else None,
        "metrics": test_sets(evaluation),
        "efficiency": evaluation["efficiency"],
        "predictions": str(run.predictions(name)),
        "pruning_method": pruning.method if kind == "pruned" else None,
        "training": _training(run, name),
        # the control's is the baseline's weights as they were, unpruned: its fine-tune's starting point
        "before_finetune": _before_finetune(evaluation) if kind != "baseline" else None,
        "threshold": evaluation.get("threshold"),
        "videos": _per_source(evaluation, "videos"),
        "vs_reals": _per_source(evaluation, "vs_reals"),
        "vs_reals_notes": _per_source(evaluation, "vs_reals_note"),
        "robustness": evaluation.get("robustness"),
        # bytes of models/<model>.pt on disk / 2^20 (an unstructured model's file keeps its masks)
        "model_file_mib": file.stat().st_size / 2**20 if file.is_file() else None,
    }
    if "semistructured" in evaluation:
        model["semistructured"] = evaluation["semistructured"]
    return model


def _same_sets(evaluations: list[dict[str, Any]]) -> dict[str, str]:
    """Data sets left out because they equal another: ``{"demo": "combined_test"}``."""
    for e in evaluations:
        sources = list(e["metrics"]["test"].get("sources", {}))
        if len(sources) == 1 and not sources_with_own_set(sources):
            return {sources[0]: "combined_test"}
    return {}


def ordered_sets(names: list[str], primary: str) -> list[str]:
    """Data set names with the primary set first, then the combined sets, then each source's."""
    rest = [n for n in names if n != primary]
    return [primary, *sorted(rest, key=lambda n: (not n.startswith("combined_"), n))] if primary in names else rest


PRIMARY_DEFAULT = "faces140k"  # evaluate.primary_set's default, for runs without a config


def primary(evaluations: list[dict[str, Any]], configured: str) -> dict[str, Any]:
    """Which data set the headline numbers are on (``evaluate.primary_set``), and how to say it."""
    sources = sorted({s for e in evaluations for s in e["metrics"]["test"].get("sources", {})})
    source = primary_source(sources, configured)
    if source is not None:
        what = f"the {source} test set" + (", the paper's balanced 140k test set" if source == "faces140k" else "")
    elif sources == [configured]:
        what = f"the whole test split, which is the {configured} test set alone"
    else:
        what = (f"the whole test split ({', '.join(sources)}): it has no {configured} test set beside other "
                "sources" if configured != "combined" else "the whole test split (evaluate.primary_set: combined)")
    return {"set": source or "combined_test", "source": source, "configured": configured, "description": what}


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as ``report.json`` holds it."""
    from detector.report.answer import add_video_differences
    from detector.report.run_summary import run_summary
    from detector.report.statistics import add_statistics

    run = RunFolder(Path(run_dir))
    search = read_json(run.search_results) if run.search_results.exists() else None
    evaluations = [(p, read_json(p)) for p in run.evaluation_files()]
    if not evaluations and search is None:
        raise FileNotFoundError(f"{run_dir}: neither evaluations (eval/) nor search results (search/) to report on")
    best = (search or {}).get("best", {})
    models = sorted((_model(run, e, best, p) for p, e in evaluations), key=order)
    summary = run_summary(run, [e for _, e in evaluations])
    configured = summary.get("primary_set") or next(
        (e["primary"]["configured"] for _, e in evaluations if e.get("primary")), PRIMARY_DEFAULT)
    main = primary([e for _, e in evaluations], configured)
    statistics = add_statistics(models, resamples=summary["bootstrap_resamples"], primary=main["set"])
    add_video_differences(models)
    trials = [{"sparsity": t["sparsity"], "params": t["params"], "val_accuracy": t["val_accuracy"],
               "best_val_accuracy": t.get("best_val_accuracy"), "objective": t["objective"], "epochs": t["epochs"],
               "start": t["start"], "end": t["end"], "status": t["status"], "trial_id": t["trial_id"],
               **{k: t[k] for k in ("name", "trial", "objectives") if k in t}}
              for t in (search or {}).get("trials", [])]
    return {
        "run_dir": str(run_dir),
        "run": summary,
        "same_sets": _same_sets([e for _, e in evaluations]),
        "primary": main,
        "models": models,
        "trials": trials,
        "search": {k: v for k, v in (search or {}).items() if k != "trials"},
        "statistics": statistics,
        "frontier": frontier_data(run),
    }
