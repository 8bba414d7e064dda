"""The best search trial and its ties: one stated rule."""

import pytest

from detector.job.selection import select_best


def row(trial_id, start, objective):
    return {"trial_id": trial_id, "start": start, "objective": objective}


def test_the_highest_objective_wins_whatever_the_order():
    best, ties = select_best([row("a", 1.0, 0.90), row("b", 2.0, 0.97), row("c", 3.0, 0.95)])
    assert best["trial_id"] == "b" and ties == []


def test_a_tie_goes_to_the_trial_launched_first_and_the_others_are_named():
    trials = [row("late", 30.0, 0.95), row("first", 10.0, 0.95), row("middle", 20.0, 0.95), row("low", 5.0, 0.5)]
    best, ties = select_best(trials)
    assert best["trial_id"] == "first" and [t["trial_id"] for t in ties] == ["middle", "late"]
    # the same start (or none recorded): the trial id decides, so the choice never depends on list order
    assert select_best([row("y", 1.0, 0.9), row("x", 1.0, 0.9)])[0]["trial_id"] == "x"
    assert select_best([row("n", None, 0.9), row("m", 4.0, 0.9)])[0]["trial_id"] == "m"


def test_min_mode_and_trials_without_an_objective():
    best, _ = select_best([row("a", 1.0, 0.3), row("b", 2.0, 0.2), row("failed", 0.0, None)], mode="min")
    assert best["trial_id"] == "b"
    with pytest.raises(ValueError, match="no trial with an objective"):
        select_best([row("failed", 0.0, None)])
    with pytest.raises(ValueError, match="mode"):
        select_best([row("a", 1.0, 0.3)], mode="best")


def test_search_objective_picks_the_last_or_the_best_epoch():
    from detector.config import ConfigError, from_dict
    from detector.job.experiment import ExperimentConfig
    from detector.job.selection import objective_of

    row = {"val_accuracy": 0.91, "best_val_accuracy": 0.95}
    assert objective_of(row, "val_accuracy", "last") == 0.91
    assert objective_of(row, "val_accuracy", "best") == 0.95
    assert objective_of({"val_accuracy": None}, "val_accuracy", "last") is None
    with pytest.raises(ConfigError, match="search.objective: best is tracked for metric val_accuracy only"):
        from_dict(ExperimentConfig, {"search": {"metric": "val_loss", "direction": "min", "objective": "best"}})
