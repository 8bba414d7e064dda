"""What the report shows, gathered from the run folder alone (``report.json`` holds exactly this)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector.job.runfolder import RunFolder
from detector.prune import PruningInfo

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "auc")


def read_json(path: Path) -> Any:
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


def _model(run: RunFolder, evaluation: dict[str, Any], best: dict[str, Any], where: Path) -> dict[str, Any]:
    pruning = PruningInfo.from_metadata(evaluation, where=str(where))
    s = pruning.sparsity
    bp = best.get(f"{s:g}") if s > 0 else None
    model = {
        "name": evaluation["name"],
        "sparsity": s,
        "measured_sparsity": evaluation["sparsity"],
        "best_params": dict(bp["params"]) if bp else None,
        "metrics": test_sets(evaluation),
        "efficiency": evaluation["efficiency"],
        "predictions": str(run.predictions(s)),
        "pruning_method": pruning.method if s > 0 else None,
    }
    if "semistructured" in evaluation:
        model["semistructured"] = evaluation["semistructured"]
    return model


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows, as ``report.json`` holds it."""
    from detector.report.statistics import add_statistics

    run = RunFolder(Path(run_dir))
    search = read_json(run.search_results) if run.search_results.exists() else None
    evaluations = [(p, read_json(p)) for p in run.evaluation_files()]
    if not evaluations and search is None:
        raise FileNotFoundError(f"{run_dir}: neither evaluations (eval/) nor search results (search/) to report on")
    best = (search or {}).get("best", {})
    models = sorted((_model(run, e, best, p) for p, e in evaluations), key=lambda m: m["sparsity"])
    statistics = add_statistics(run, models)
    trials = [{"sparsity": t["sparsity"], "params": t["params"], "val_accuracy": t["val_accuracy"],
               "objective": t["objective"], "epochs": t["epochs"], "start": t["start"], "end": t["end"],
               "status": t["status"], "trial_id": t["trial_id"]} for t in (search or {}).get("trials", [])]
    return {
        "run_dir": str(run_dir),
        "models": models,
        "trials": trials,
        "search": {k: v for k, v in (search or {}).items() if k != "trials"},
        "statistics": statistics,
    }
