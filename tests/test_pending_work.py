"""What a run still has to do, read from its folder alone: the baseline and the evaluations by model name, the
searches and fine-tunes by sparsity; the dense control (sparsity 0, model dense-ft) is one more of each."""

from __future__ import annotations

import json
from pathlib import Path

from detector.config import from_dict
from detector.job.experiment import ExperimentConfig
from detector.job.pipeline import pending_work
from detector.job.runfolder import BASELINE, CONTROL, RunFolder, model_name

STAGES = ["baseline", "search", "finetune", "evaluate"]


def experiment(**search) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {"search": {"sparsities": [0.2, 0.4], **search}})


def write(path: Path, data: object = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data or {}))


def write_model(run: RunFolder, name: str) -> None:
    """A model as a stage saves it: its weights, then its summary (what says it is done)."""
    write(run.model(name))
    write(run.model_summary(name))


def test_a_new_run_has_everything_to_do_the_control_last():
    todo = pending_work(experiment(), Path("/nonexistent/run"), STAGES)
    assert todo == {"baseline": [BASELINE], "search": [0.2, 0.4, 0.0], "finetune": [0.2, 0.4, 0.0],
                    "evaluate": [BASELINE, "prune-20", "prune-40", CONTROL]}
    without = pending_work(experiment(control=False), Path("/nonexistent/run"), STAGES)
    assert without == {"baseline": [BASELINE], "search": [0.2, 0.4], "finetune": [0.2, 0.4],
                       "evaluate": [BASELINE, "prune-20", "prune-40"]}


def test_what_exists_is_done_and_only_the_rest_is_pending(tmp_path):
    run = RunFolder(tmp_path)
    for name in (BASELINE, "prune-20", "prune-40"):
        write_model(run, name)
        write(run.evaluation(name))
    write(run.search_results)
    todo = pending_work(experiment(), tmp_path, STAGES)
    assert todo == {"baseline": [], "search": [], "finetune": [0.0], "evaluate": [CONTROL]}
    assert pending_work(experiment(), tmp_path, ["evaluate"]) == {"evaluate": [CONTROL]}
    write(run.model(CONTROL))  # a fine-tune cut between its two writes: its model is not done
    assert pending_work(experiment(), tmp_path, ["finetune"]) == {"finetune": [0.0]}
    write(run.model_summary(CONTROL))
    write(run.evaluation(CONTROL))
    assert not any(pending_work(experiment(), tmp_path, STAGES).values())


def test_a_frontier_fine_tunes_itself_and_evaluates_its_probes_and_the_control_once_it_has_run(tmp_path):
    run = RunFolder(tmp_path)
    exp = experiment(mode="frontier")
    assert pending_work(exp, tmp_path, STAGES)["evaluate"] == [BASELINE]  # the probes are not known yet
    write(run.search_results)
    write(run.frontier, {"rounds": [{"round": 1, "probes": [{"sparsity": 0.2}, {"sparsity": 0.4}]},
                                    {"round": 2, "probes": [{"sparsity": 0.3}]}]})
    todo = pending_work(exp, tmp_path, STAGES)
    assert todo["finetune"] == [] and todo["evaluate"] == [BASELINE, "prune-20", "prune-30", "prune-40", CONTROL]


def test_a_pareto_search_fine_tunes_its_picks_and_the_control(tmp_path):
    run = RunFolder(tmp_path)
    write(run.search_results, {"best": {"0.35": {"sparsity": 0.35}, "0.8": {"sparsity": 0.8},
                                        "0": {"sparsity": 0.0}}})
    todo = pending_work(experiment(mode="pareto"), tmp_path, STAGES)
    assert todo["finetune"] == [0.0, 0.35, 0.8]
    assert todo["evaluate"] == [BASELINE, CONTROL, model_name(0.35), model_name(0.8)]
