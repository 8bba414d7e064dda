"""SparsitySearcher: one Optuna study per sparsity inside one Tune experiment."""

import pytest
from ray import tune

from detector.job.tune import SparsitySearcher, private_api

SPACE = {"optimizer": tune.choice(["adam", "sgd"]), "lr": tune.loguniform(1e-6, 1e-4)}


def make(**kw):
    args = dict(trials_per_sparsity=2, space=SPACE, metric="val_accuracy", seed=0, tpe_startup_trials=1)
    args.update(kw)
    return SparsitySearcher([0.1, 0.2, 0.3, 0.4], **args)


def test_trials_are_handed_out_round_robin_then_the_search_ends():
    s = make()
    configs = [s.suggest(f"t{i}") for i in range(8)]
    assert [c["sparsity"] for c in configs] == [0.1, 0.2, 0.3, 0.4] * 2
    assert [c["trial"] for c in configs] == [1, 1, 1, 1, 2, 2, 2, 2]  # its number within its sparsity's search
    for c in configs:
        assert c["optimizer"] in ("adam", "sgd") and 1e-6 <= c["lr"] <= 1e-4
    assert s.suggest("t8") == SparsitySearcher.FINISHED


def test_each_study_sees_only_its_own_trials():
    s = make()
    for i in range(4):
        s.suggest(f"t{i}")
    for i, acc in enumerate([0.6, 0.7, 0.8, 0.9]):
        s.on_trial_complete(f"t{i}", {"val_accuracy": acc, "training_iteration": 1})
    for sparsity, acc in zip([0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]):
        study = private_api.study(s.studies[sparsity])
        assert [t.value for t in study.trials] == [acc]
        assert study.study_name == f"sparsity-{sparsity:g}"


def test_a_diverged_trial_is_a_failed_optuna_trial_not_a_value():
    s = make()
    s.suggest("t0")
    s.on_trial_result("t0", {"val_accuracy": float("nan"), "trial_failed": "loss became nan", "training_iteration": 1})
    s.on_trial_complete("t0", {"val_accuracy": float("nan"), "trial_failed": "loss became nan", "training_iteration": 1})
    (trial,) = private_api.study(s.studies[0.1]).trials
    assert trial.value is None and trial.state.name == "FAIL"


def finish(s, trial_ids):
    for i in trial_ids:
        s.on_trial_complete(f"t{i}", {"val_accuracy": 0.5 + i / 20, "training_iteration": 1})


def test_a_restored_search_goes_on_exactly_as_an_uninterrupted_one(tmp_path):
    """The studies live in an Optuna journal, the searcher's state is JSON (no pickle), and the samplers'
    random states travel with it: the suggestions after a resume are those the search would have made."""
    import json

    import optuna

    uninterrupted = make(storage=str(tmp_path / "a.journal"))
    first = [uninterrupted.suggest(f"t{i}") for i in range(4)]
    finish(uninterrupted, range(4))
    expected = [uninterrupted.suggest(f"t{i}") for i in range(4, 8)]

    s = make(storage=str(tmp_path / "b.journal"))
    assert [s.suggest(f"t{i}") for i in range(4)] == first
    finish(s, range(4))
    s.save(str(tmp_path / "searcher-state.pkl"))
    state = json.loads((tmp_path / "searcher-state.pkl").read_text())  # data, not a pickle
    assert state["trial_sparsity"] == {"t0": 0.1, "t1": 0.2, "t2": 0.3, "t3": 0.4}
    restored = make(storage=str(tmp_path / "b.journal"))
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    assert [restored.suggest(f"t{i}") for i in range(4, 8)] == expected
    # the journal holds every study and trial, readable by Optuna itself (and optuna-dashboard)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "b.journal")))
    names = sorted(st.study_name for st in optuna.get_all_study_summaries(storage))
    assert names == ["sparsity-0.1", "sparsity-0.2", "sparsity-0.3", "sparsity-0.4"]
    assert all(len(optuna.load_study(study_name=n, storage=storage).trials) == 2 for n in names)


def test_restore_refuses_a_search_over_other_sparsities(tmp_path):
    s = make(storage=str(tmp_path / "s.journal"))
    s.save(str(tmp_path / "searcher.pkl"))
    other = SparsitySearcher([0.5], trials_per_sparsity=1, space=SPACE, metric="val_accuracy",
                             storage=str(tmp_path / "s.journal"))
    with pytest.raises(ValueError, match="sparsities"):
        other.restore(str(tmp_path / "searcher.pkl"))


def test_restore_refuses_a_pickle(tmp_path):
    import pickle

    (tmp_path / "searcher.pkl").write_bytes(pickle.dumps({"trial_sparsity": {}}))
    with pytest.raises(ValueError, match="not the JSON state"):
        make(storage=str(tmp_path / "s.journal")).restore(str(tmp_path / "searcher.pkl"))


def test_same_seed_same_suggestions():
    a, b = make(seed=3), make(seed=3)
    assert [a.suggest(f"t{i}") for i in range(4)] == [b.suggest(f"t{i}") for i in range(4)]


def test_the_pending_trials_setting_lasts_one_experiment_and_yields_to_the_users(monkeypatch):
    import os

    from detector.job.tune import env_default

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    with env_default("TUNE_MAX_PENDING_TRIALS_PG", "4"):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "4"
    # gone again: a later search of 4 sparsities must not run with a 1-sparsity search's value
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "2")
    with env_default("TUNE_MAX_PENDING_TRIALS_PG", "4"):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "2"
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "2"


@pytest.mark.parametrize("budget, sparsities, fit, pending", [
    (20, 4, 0, 4),    # a cluster scaling up from no GPUs: every search starts at once
    (20, 4, 8, 8),    # as many as the cluster holds now
    (20, 4, 20, 20),  # the paper's 20 trials on 20 GPUs: all pending, their processes start in one wave
    (20, 4, 64, 20),  # never more than the search has
])
def test_the_searches_may_wait_for_resources_one_per_sparsity_or_as_many_as_fit(budget, sparsities, fit, pending):
    from detector.job.tune import search_pending

    assert search_pending(budget, sparsities, fit) == pending


def test_the_dense_control_searched_last_leaves_the_pruned_searches_draws_as_they_were():
    """search.control adds sparsity 0 after the pruned sparsities: each pruned study keeps its seed (seed + its
    position), so it draws the same parameters with the control as without it."""
    alone = make()
    with_control = SparsitySearcher([0.1, 0.2, 0.3, 0.4, 0.0], trials_per_sparsity=2, space=SPACE,
                                    metric="val_accuracy", seed=0, tpe_startup_trials=1)
    drawn = [alone.suggest(f"t{i}") for i in range(8)]
    drawn_with = [with_control.suggest(f"t{i}") for i in range(10)]
    assert [c["sparsity"] for c in drawn_with] == [0.1, 0.2, 0.3, 0.4, 0.0] * 2
    key = lambda c: (c["sparsity"], c["trial"])  # noqa: E731
    assert sorted((c for c in drawn_with if c["sparsity"] > 0), key=key) == sorted(drawn, key=key)
    assert with_control.study_name(0.0) == "sparsity-0"


def test_asha_keeps_the_dense_control_s_trials_in_rungs_of_their_own():
    """With the control, a pruned trial is stopped only for being behind pruned trials: the control's would
    otherwise stop pruned trials that no rung stopped without it, and cut short the searches it controls."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from detector.job.tune.schedulers import asha

    def first_epochs(control_apart: bool, results: list[tuple[str, float, float]]) -> list[str]:
        scheduler = asha(metric="val_accuracy", mode="max", max_t=4, grace_period=1, reduction_factor=2,
                         control_apart=control_apart)
        assert scheduler.set_search_properties(None, None)
        decisions = []
        for name, sparsity, accuracy in results:
            trial = SimpleNamespace(trial_id=name, config={"sparsity": sparsity})
            scheduler.on_trial_add(None, trial)
            decisions.append(scheduler.on_trial_result(None, trial, {"training_iteration": 1,
                                                                    "val_accuracy": accuracy}))
        return decisions

    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    results = [("c1", 0.0, 0.95), ("p1", 0.4, 0.60), ("p2", 0.4, 0.55), ("c2", 0.0, 0.90)]
    assert first_epochs(True, results) == [go, go, stop, stop]  # each behind the first of its own rung
    assert first_epochs(False, results) == [go, stop, stop, go]  # one rung: the control stops p1 too
