"""SparsitySearcher: one Optuna study per sparsity inside one Tune experiment."""

import pytest
from ray import tune

from detector.job.tune import SparsitySearcher

SPACE = {"optimizer": tune.choice(["adam", "sgd"]), "lr": tune.loguniform(1e-6, 1e-4)}


def make(**kw):
    args = dict(trials_per_sparsity=2, space=SPACE, metric="val_accuracy", seed=0, tpe_startup_trials=1)
    args.update(kw)
    return SparsitySearcher([0.1, 0.2, 0.3, 0.4], **args)


def test_trials_are_handed_out_round_robin_then_the_search_ends():
    s = make()
    configs = [s.suggest(f"t{i}") for i in range(8)]
    assert [c["sparsity"] for c in configs] == [0.1, 0.2, 0.3, 0.4] * 2
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
        study = s.studies[sparsity]._ot_study
        assert [t.value for t in study.trials] == [acc]
        assert study.study_name == f"sparsity-{sparsity:g}"


def test_a_diverged_trial_is_a_failed_optuna_trial_not_a_value():
    s = make()
    s.suggest("t0")
    s.on_trial_result("t0", {"val_accuracy": float("nan"), "trial_failed": "loss became nan", "training_iteration": 1})
    s.on_trial_complete("t0", {"val_accuracy": float("nan"), "trial_failed": "loss became nan", "training_iteration": 1})
    (trial,) = s.studies[0.1]._ot_study.trials
    assert trial.value is None and trial.state.name == "FAIL"


def test_save_and_restore_continue_every_study(tmp_path):
    s = make()
    for i in range(4):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"val_accuracy": 0.5 + i / 10, "training_iteration": 1})
    s.save(str(tmp_path / "searcher.pkl"))
    restored = make()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [restored.suggest(f"t{i}")["sparsity"] for i in range(4, 8)] == [0.1, 0.2, 0.3, 0.4]
    assert all(len(st._ot_study.trials) == 2 for st in restored.studies.values())


def test_restore_refuses_a_search_over_other_sparsities(tmp_path):
    s = make()
    s.save(str(tmp_path / "searcher.pkl"))
    other = SparsitySearcher([0.5], trials_per_sparsity=1, space=SPACE, metric="val_accuracy")
    with pytest.raises(ValueError, match="sparsities"):
        other.restore(str(tmp_path / "searcher.pkl"))


def test_same_seed_same_suggestions():
    a, b = make(seed=3), make(seed=3)
    assert [a.suggest(f"t{i}") for i in range(4)] == [b.suggest(f"t{i}") for i in range(4)]


def test_the_pending_trials_setting_lasts_one_experiment_and_yields_to_the_users(monkeypatch):
    import os

    from detector.job.tune import _env_default

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    with _env_default("TUNE_MAX_PENDING_TRIALS_PG", "4"):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "4"
    # gone again: a later search of 4 sparsities must not run with a 1-sparsity search's value
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "2")
    with _env_default("TUNE_MAX_PENDING_TRIALS_PG", "4"):
        assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "2"
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "2"
