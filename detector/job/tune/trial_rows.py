"""A trial's rows, each built here only: its name, its row in ``RUN/status/<experiment>.json`` (from Tune's
trial, while the experiment runs), its row in a search's results (from the status row), and a search's pick.

    Tune's Trial --status_row--> RUN/status/<experiment>.json --read_status_rows--> trial_row --> best_entry
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from detector.job.experiment import CONTROL_SPARSITY
from detector.job.runfolder import (BASELINE, RunFolder, check_model_name, model_name, sparsity_label, trial_label,
                                    tune_stage)
from detector.job.search_space import param_names


def trial_name(experiment: str, config: dict[str, Any]) -> str:
    """A trial's name within its experiment: ``baseline``; a search trial's sparsity and number (``s40-t3``,
    ``s0-t3`` for the dense control's); a fine-tune's sparsity (``s40``, ``s0``); an evaluation's model
    (``prune-40``, ``dense-ft``, ``baseline``)."""
    stage = tune_stage(experiment)
    if stage == "baseline":
        return BASELINE
    if stage == "evaluate":
        return evaluated_model(config)
    sparsity = float(config.get("sparsity", 0.0))
    return trial_label(sparsity, config.get("trial")) if stage == "search" else sparsity_label(sparsity)


def evaluated_model(config: dict[str, Any]) -> str:
    """The model an evaluation trial scores: its config's ``model``. An evaluate experiment started before
    evaluations were named (a run folder resumed from an older version) gave a sparsity instead, 0 for the
    baseline."""
    if "model" in config:
        return check_model_name(config["model"])
    sparsity = float(config["sparsity"])
    return BASELINE if sparsity == 0 else model_name(sparsity)


def trial_state(trial: Any, finished: bool) -> str:
    """A trial's state for the status table. ``finished``: Tune ended it in the experiment's loop. When an
    experiment ends early (a stop, an error), Tune's clean-up marks its running trials TERMINATED too, though
    they stay unfinished in its saved state and resume: those are "stopped", not "done"."""
    last = trial.last_result or {}
    if trial.status == "TERMINATED":
        if not finished:
            return "stopped"
        return "failed" if last.get("trial_failed") else "done"
    return {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "ERROR": "error"}.get(trial.status,
                                                                                             "pending")


def status_row(trial: Any, experiment: str, *, finished: bool, epochs_planned: int, objective: str,
               objectives: tuple[str, ...]) -> dict[str, Any]:
    """Tune's ``trial`` as a row of the status table (``detector.job.status.TRIAL_FIELDS``): its name, state,
    epochs done of ``epochs_planned``, last and best val accuracy, ``objective`` (the result key a search
    trial is judged by) and a Pareto search's ``objectives``, restarts, why it failed."""
    last = trial.last_result or {}
    config = trial.config or {}
    return {
        "trial_id": trial.trial_id,
        "name": f"{experiment}/{trial_name(experiment, config)}",
        "trial": config.get("trial"),
        # an evaluation's trial is named by its model; its sparsity comes with its result (None until then)
        "sparsity": _sparsity(config, last),
        "params": {k: config[k] for k in param_names() if k in config},
        "state": trial_state(trial, finished),
        # fit's own epoch count: Tune's training_iteration starts again at 1 in a data-parallel trial
        # resumed after its driver died (its checkpoints are Ray Train's, not Tune's)
        "epochs": int(last.get("epoch") or last.get("training_iteration") or 0),
        "epochs_planned": epochs_planned,
        "val_accuracy": _finite_or_none(last.get("val_accuracy")),
        "best_val_accuracy": _finite_or_none(last.get("best_val_accuracy")),
        "objective": _finite_or_none(last.get(objective)),
        "restarts": int(trial.num_failures),
        **({"objectives": {o: _finite_or_none(last.get(o)) for o in objectives}} if objectives else {}),
        "reason": last.get("trial_failed") or (error_line(trial.error_file) if trial.status == "ERROR" else None),
        "started": last.get("trial_start"),
        "updated": last.get("time_now"),
    }


def read_status_rows(run: RunFolder, experiment: str) -> list[dict[str, Any]]:
    """The trial rows as the live-status callback last wrote them (wherever Tune's loop ran)."""
    try:
        return json.loads(run.stage_status(experiment).read_text())["trials"]
    except (OSError, ValueError, KeyError):
        return []


def trial_row(row: dict[str, Any]) -> dict[str, Any]:
    """One finished search trial (its status row) as results.json lists it: its parameters, its objective (the
    metric at its last epoch), its val accuracy at the last and at the best epoch, epochs, start/end, status."""
    status = "completed" if row["state"] == "done" else f"failed: {row.get('reason')}"
    ok = status == "completed"
    return {
        "trial_id": row["trial_id"],
        "name": row["name"],
        "trial": row["trial"],
        "sparsity": row["sparsity"],
        "params": row["params"],
        # a row written before search.objective existed holds the last epoch's val accuracy only
        "objective": row.get("objective", row["val_accuracy"]) if ok else None,
        "val_accuracy": row["val_accuracy"] if ok else None,
        "best_val_accuracy": row["best_val_accuracy"] if ok else None,
        "epochs": row["epochs"],
        "start": row["started"],
        "end": row["updated"],
        "status": status,
        **({"objectives": row["objectives"]} if "objectives" in row else {}),
    }


def best_entry(trial: dict[str, Any]) -> dict[str, Any]:
    """A search's pick for a sparsity (results.json's ``best``), from its ``trial_row``: what the fine-tune
    trains with, and which trial it was."""
    return {"sparsity": trial["sparsity"], "params": trial["params"], "objective": trial["objective"],
            "val_accuracy": trial["val_accuracy"], "trial_id": trial["trial_id"], "name": trial["name"]}


def control_entry(trial: dict[str, Any]) -> dict[str, Any]:
    """A Pareto search's pick for the dense control (results.json's ``best["0"]``): sparsity 0, trained with
    the parameters of ``trial`` (a ``trial_row``), which it names; the control has no search trial of its own,
    so no objective."""
    return {"sparsity": CONTROL_SPARSITY, "params": trial["params"], "objective": None, "val_accuracy": None,
            "trial_id": None, "name": None, "params_from": {k: trial[k] for k in ("trial_id", "name", "sparsity")}}


def _sparsity(config: dict[str, Any], last: dict[str, Any]) -> float | None:
    value = config.get("sparsity", last.get("sparsity"))
    return None if value is None else float(value)


def _finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def error_line(error_file: str | None) -> str | None:
    """The exception a trial failed with: the last non-blank line of its error file (Tune writes the
    traceback there as text, the exception last), cut to 300 characters."""
    if not error_file:
        return None
    try:
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
    except OSError:
        return "error (see the trial's error.txt)"
    return lines[-1][:300] if lines else None
