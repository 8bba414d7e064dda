"""Accuracy against size: the Pareto front of a multi-objective search, by hand and on a real local Ray."""

from __future__ import annotations

import json

import pytest

from detector.job.pareto import dominates, non_dominated, pick_models
from pipeline_helpers import make_tiny_data, tiny_experiment

OBJ = ["val_accuracy", "nonzero_params"]


def row(s, acc, nonzero):
    return {"trial_id": f"t{s}", "sparsity": s, "objectives": {"val_accuracy": acc, "nonzero_params": nonzero}}


def test_dominance_respects_each_objective_s_direction():
    dirs = ["max", "min"]
    assert dominates([0.9, 10], [0.8, 20], dirs) and not dominates([0.9, 30], [0.8, 20], dirs)
    assert not dominates([0.9, 10], [0.9, 10], dirs)  # equal is not better


def test_the_front_and_the_picks_spread_over_it():
    rows = [row(0.1, 0.99, 90), row(0.3, 0.99, 70), row(0.5, 0.98, 50), row(0.6, 0.90, 60),
            row(0.8, 0.95, 20), row(0.95, 0.70, 5), {"trial_id": "failed", "sparsity": 0.4, "objectives": {}}]
    front = non_dominated(rows, OBJ)
    assert [r["sparsity"] for r in front] == [0.3, 0.5, 0.8, 0.95]
    assert [r["sparsity"] for r in pick_models(front, 2)] == [0.3, 0.95]
    assert [r["sparsity"] for r in pick_models(front, 3)] == [0.3, 0.5, 0.95] or \
        [r["sparsity"] for r in pick_models(front, 3)] == [0.3, 0.8, 0.95]
    assert len(pick_models(front, 9)) == 4


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_pareto_run_completes_with_its_front_in_the_report_and_the_study_in_optuna_s_storage(tmp_path):
    import optuna

    from detector.job.pipeline import run
    from detector.job.runfolder import CONTROL, RunFolder, model_name

    data = make_tiny_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    exp = tiny_experiment(data, search={"mode": "pareto", "pareto": {
        "trials": 4, "models": 2, "sparsity_min": 0.2, "sparsity_max": 0.9,
        "objectives": ["val_accuracy", "nonzero_params", "model_bytes"]}})
    run(exp, run_dir)
    folder = RunFolder(run_dir)
    results = json.loads(folder.search_results.read_text())
    assert len(results["trials"]) == 4 and results["front"]
    for t in results["trials"]:
        assert 0.2 <= t["sparsity"] <= 0.9 and set(t["objectives"]) == {"val_accuracy", "nonzero_params", "model_bytes"}
    picks = sorted(b["sparsity"] for b in results["best"].values() if b["sparsity"] > 0)
    assert 1 <= len(picks) <= 2 and all(folder.model(model_name(s)).exists() and folder.evaluation(model_name(s)).exists() for s in picks)
    # The dense control is the front's fixed dense end: sparsity 0, fine-tuned with the picks' budget and the
    # parameters of the front's least pruned trial, evaluated like them.
    front = sorted((t for t in results["trials"] if t["trial_id"] in results["front"]), key=lambda t: t["sparsity"])
    control = results["best"]["0"]
    assert control["sparsity"] == 0 and control["params"] == front[0]["params"]
    assert control["params_from"] == {k: front[0][k] for k in ("trial_id", "name", "sparsity")}
    fit = json.loads(folder.model_summary(CONTROL).read_text())
    assert {k: fit["config"][k] for k in ("optimizer", "lr")} == control["params"]
    assert json.loads(folder.evaluation(CONTROL).read_text())["before_finetune"]["status"] == "measured"
    assert not [t for t in results["trials"] if t["sparsity"] == 0]  # no trial of the study is dense
    md = (folder.report / "report.md").read_text()
    assert "Pareto front" in md and (folder.report / "pareto_front.png").read_bytes()[:4] == b"\x89PNG"
    # Optuna's own API finds the study and every trial, with a value per objective
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder.optuna_journal)))
    study = optuna.load_study(study_name="pareto", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(len(t.values) == 3 for t in study.trials)
    assert {round(t.params["sparsity"], 6) for t in study.trials} == {t["sparsity"] for t in results["trials"]}
