"""Which search trial is best: one rule, stated once, for the search stage and the report.

The best trial of a sparsity is the completed one with the highest objective (lowest with ``mode="min"``).
Trials on a validation set of a few hundred images often tie; a tie goes to the trial launched first
(earlier start, then trial id), as Optuna's ``study.best_trial`` keeps the first of equal values. Launch
order is the order in which the sparsity's study proposed the trials, so the rule never looks at anything
but validation results and the search's own order.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

TIE_BREAK = "a tie on the objective goes to the trial launched first (as Optuna's study.best_trial)"

# search.objective -> the trial row's key that holds it: the metric at the trial's last epoch, or the best
# epoch's val accuracy (what early stopping keeps; the training loop reports it with every epoch).
OBJECTIVE_EPOCH = {"last": "at the trial's last epoch", "best": "at the trial's best epoch"}


def objective_key(metric: str, objective: str) -> str:
    """The key of a trial's result (and row) that is its objective under ``search.objective``.

    >>> objective_key("val_accuracy", "last"), objective_key("val_accuracy", "best")
    ('val_accuracy', 'best_val_accuracy')
    """
    if objective not in OBJECTIVE_EPOCH:
        raise ValueError(f"search.objective: {objective!r} is not one of {', '.join(OBJECTIVE_EPOCH)}")
    if objective == "last":
        return metric
    if metric != "val_accuracy":
        raise ValueError(f"search.objective: best is tracked for val_accuracy only, not {metric!r}")
    return "best_val_accuracy"


def objective_of(row: Mapping[str, Any], metric: str, objective: str) -> float | None:
    """A finished trial's objective from its row (``val_accuracy``, ``best_val_accuracy``, ...), or None."""
    value = row.get(objective_key(metric, objective))
    return None if value is None else float(value)


def launch_order(trial: Mapping[str, Any]) -> tuple[float, bool, float, str]:
    """The trial's number within its sparsity's search (the order its study proposed it: deterministic,
    unlike start times of trials that run at once), then its start, then its id."""
    number = trial.get("trial")
    start = trial.get("start")
    return (float(number) if number is not None else float("inf"), start is None, float(start or 0.0),
            str(trial.get("trial_id", "")))


def select_best(trials: Sequence[Mapping[str, Any]], *, mode: Literal["max", "min"] = "max"
                ) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(the best trial, the other trials with exactly its objective) among ``trials``: rows with
    ``objective``, ``start`` (Unix seconds) and ``trial_id``, as ``detector.job.tune.trial_row`` writes them.

    >>> rows = [{"trial_id": "b", "start": 2.0, "objective": 0.95}, {"trial_id": "a", "start": 1.0, "objective": 0.95},
    ...         {"trial_id": "c", "start": 0.5, "objective": 0.90}]
    >>> best, ties = select_best(rows)
    >>> best["trial_id"], [t["trial_id"] for t in ties]
    ('a', ['b'])
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode: {mode!r} is not max or min")
    scored = [t for t in trials if t.get("objective") is not None]
    if not scored:
        raise ValueError("no trial with an objective to select from")
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(scored, key=lambda t: (sign * float(t["objective"]), launch_order(t)))
    best = ranked[0]
    return best, [t for t in ranked[1:] if t["objective"] == best["objective"]]
