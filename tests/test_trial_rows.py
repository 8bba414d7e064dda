"""A trial's rows: the status table's (from Tune's trial), the search results' (from the status row), the pick."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from detector.job.tune.trial_rows import best_entry, control_entry, error_line, status_row, trial_name, trial_row


def tune_trial(status="TERMINATED", error_file=None, config=None, **last):
    return SimpleNamespace(trial_id="a1", status=status, config=config or {"sparsity": 0.4, "trial": 3, "lr": 1e-5},
                           last_result=last, num_failures=1, error_file=error_file)


@pytest.mark.parametrize("experiment, config, name", [
    ("baseline", {}, "baseline"),
    ("search", {"sparsity": 0.4, "trial": 3}, "s40-t3"),
    ("search", {"sparsity": 0.0, "trial": 3}, "s0-t3"),  # the dense control's search
    ("search-r2", {"sparsity": 0.825, "trial": 1}, "s82.5-t1"),
    ("finetune", {"sparsity": 0.4}, "s40"),
    ("finetune", {"sparsity": 0.0}, "s0"),
    ("evaluate", {"model": "prune-40"}, "prune-40"),
    ("evaluate", {"model": "dense-ft"}, "dense-ft"),
    ("evaluate", {"model": "baseline"}, "baseline"),
    # an evaluate experiment started by an older version, resumed: its trials name a sparsity
    ("evaluate", {"sparsity": 0.4}, "prune-40"),
    ("evaluate", {"sparsity": 0.0}, "baseline"),
])
def test_a_trial_is_named_by_what_it_is(experiment, config, name):
    assert trial_name(experiment, config) == name


def test_an_evaluation_is_named_by_its_model_and_shows_its_sparsity_once_it_has_reported():
    pending = status_row(tune_trial(status="PENDING", config={"model": "prune-40"}), "evaluate", finished=False,
                         epochs_planned=1, objective="val_accuracy", objectives=())
    assert pending["name"] == "evaluate/prune-40" and pending["sparsity"] is None
    done = status_row(tune_trial(config={"model": "prune-40"}, sparsity=0.4, test_accuracy=0.9), "evaluate",
                      finished=True, epochs_planned=1, objective="val_accuracy", objectives=())
    assert done["state"] == "done" and done["sparsity"] == 0.4
    with pytest.raises(ValueError, match="not a model name"):
        trial_name("evaluate", {"model": "../../etc/passwd"})


def test_a_failed_trial_shows_the_exception_it_failed_with(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad lr\n\n")
    assert error_line(str(error)) == "ValueError: bad lr"
    error.write_text("E" * 400)
    assert error_line(str(error)) == "E" * 300
    assert error_line(str(tmp_path / "gone.txt")) == "error (see the trial's error.txt)"
    assert error_line(None) is None


def test_a_status_row_becomes_a_results_row_and_a_pick():
    row = status_row(tune_trial(epoch=2, val_accuracy=0.9, best_val_accuracy=0.95, trial_start=1.0, time_now=5.0),
                     "search", finished=True, epochs_planned=4, objective="best_val_accuracy", objectives=())
    assert row["name"] == "search/s40-t3" and row["state"] == "done" and row["objective"] == 0.95
    assert row["params"] == {"lr": 1e-5} and row["epochs"] == 2 and row["restarts"] == 1
    result = trial_row(row)
    assert result["status"] == "completed" and (result["start"], result["end"]) == (1.0, 5.0)
    assert best_entry(result) == {"sparsity": 0.4, "params": {"lr": 1e-5}, "objective": 0.95, "val_accuracy": 0.9,
                                  "trial_id": "a1", "name": "search/s40-t3"}


def test_an_errored_trial_is_failed_with_its_reason(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback\nRuntimeError: worker died\n")
    row = status_row(tune_trial(status="ERROR", error_file=str(error), val_accuracy=float("nan")), "search",
                     finished=False, epochs_planned=4, objective="val_accuracy", objectives=())
    assert row["state"] == "error" and row["reason"] == "RuntimeError: worker died" and row["val_accuracy"] is None
    assert trial_row(row)["status"] == "failed: RuntimeError: worker died"


def test_a_pareto_search_s_control_takes_the_parameters_of_the_front_s_least_pruned_trial():
    front_end = {"trial_id": "b2", "name": "search/s12.5-t4", "sparsity": 0.125, "params": {"lr": 3e-4},
                 "objective": 0.91, "val_accuracy": 0.91}
    assert control_entry(front_end) == {
        "sparsity": 0.0, "params": {"lr": 3e-4}, "objective": None, "val_accuracy": None, "trial_id": None,
        "name": None, "params_from": {"trial_id": "b2", "name": "search/s12.5-t4", "sparsity": 0.125}}
