"""`detector run --dry-run`: the config validated and the plan printed (stages, models, trials, trial-epochs,
resources), with nothing started: no Ray, no run folder."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from detector.cli import main
from detector.config import save_yaml
from detector.job.experiment import load_experiment
from detector.job.plan import plan
from detector.job.runfolder import BASELINE, RunFolder

DEMO = REPO / "jobs" / "configs" / "demo.yaml"
PAPER = REPO / "jobs" / "configs" / "paper.yaml"


def by_stage(steps):
    return {p.stage: p for p in steps}


def test_the_demo_plan_counts_every_trial_and_trial_epoch(tmp_path):
    steps = by_stage(plan(load_experiment(DEMO), tmp_path / "run", ["prepare", "baseline", "search", "finetune",
                                                                       "evaluate", "report"]))
    assert {s: p.action for s, p in steps.items()} == dict.fromkeys(steps, "run")
    # 4 sparsities and the dense control, 2 trials each, 2 epochs per trial
    assert (steps["search"].trials, steps["search"].trial_epochs) == (10, 20)
    assert (steps["baseline"].trials, steps["baseline"].trial_epochs) == (1, 6)
    assert (steps["finetune"].trials, steps["finetune"].trial_epochs) == (5, 15)
    assert steps["evaluate"].trials == 6
    assert steps["search"].resources.cpus_per_trial == 0.5 and steps["search"].resources.gpus_per_trial == 0


def test_the_paper_plan_and_its_resources(capsys, tmp_path):
    assert main(["run", "--config", str(PAPER), "--out", str(tmp_path / "paper"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 x 5 trials x 10 epochs" in out  # 4 sparsities and the control, 5 trials each, 10 epochs
    assert "25 trial(s), at most 250 trial-epochs" in out
    assert "5 trial(s), at most 500 trial-epochs" in out  # fine-tunes: up to 100 epochs each
    assert "8 CPU, 1 GPU per trial" in out
    assert "models: baseline, prune-10, prune-20, prune-30, prune-40, dense-ft" in out
    assert "in all: at most 850 trial-epochs" in out
    assert not (tmp_path / "paper").exists()


def test_overrides_and_stages_change_the_plan(capsys, tmp_path):
    assert main(["run", "--config", str(PAPER), "--out", str(tmp_path / "p"), "--dry-run", "--stages", "search",
                 "--set", "search.control=false", "--set", "search.trials_per_sparsity=3",
                 "--set", "resources.search.workers_per_trial=4"]) == 0
    out = capsys.readouterr().out
    assert "4 x 3 trials x 10 epochs" in out and "12 trial(s), at most 120 trial-epochs" in out
    assert "4 data-parallel workers per trial, each 8 CPU, 1 GPU" in out
    assert "baseline  skip" in out and "finetune  skip" in out


def test_a_finished_stage_is_planned_as_reused(tmp_path):
    exp = load_experiment(DEMO)
    run = tmp_path / "run"
    folder = RunFolder(run)
    folder.model(BASELINE).parent.mkdir(parents=True)
    folder.model(BASELINE).write_bytes(b"")
    folder.model_summary(BASELINE).write_text("{}")  # a model is done once its summary is written
    save_yaml(exp, folder.config)
    steps = by_stage(plan(exp, run, ["baseline", "search"]))
    assert steps["baseline"].action == "reuse" and steps["search"].action == "run"
    assert steps["prepare"].action == "skip"


def test_a_bad_value_is_one_error_line(capsys, tmp_path):
    assert main(["run", "--config", str(DEMO), "--out", str(tmp_path / "r"), "--dry-run",
                 "--set", "search.trials_per_sparsity=zero"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["detector run: error: --set search.trials_per_sparsity=zero: "
                                "search.trials_per_sparsity: expected an integer, got 'zero'"]


def test_a_run_folder_of_another_config_is_refused_as_the_run_would(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["run", "--config", str(DEMO), "--out", str(run), "--dry-run"]) == 0
    (run / "models").mkdir(parents=True)
    from detector.config import save_yaml

    save_yaml(load_experiment(DEMO), run / "experiment.yaml")
    capsys.readouterr()
    assert main(["run", "--config", str(DEMO), "--out", str(run), "--dry-run", "--set", "train.arch=resnet34"]) == 2
    assert "started with a different config" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "demo"])
def test_nothing_is_started(command, tmp_path):
    args = ["--config", str(DEMO)] if command == "run" else []
    code = ("import sys\nfrom detector.cli import main\n"
            f"status = main([{command!r}, *{args!r}, '--out', {str(tmp_path / 'r')!r}, '--dry-run'])\n"
            "print(status, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "0 False"
    assert "nothing was started (--dry-run)" in out.stdout
    assert not (tmp_path / "r").exists()  # no run folder, no samples


def test_what_a_frontier_or_pareto_search_decides_is_not_counted_before_it_runs(tmp_path):
    stages = ["baseline", "search", "finetune", "evaluate"]
    frontier = by_stage(plan(load_experiment(PAPER, ["search.mode=frontier"]), tmp_path / "f", stages))
    assert frontier["search"].trials == 25 and "frontier round 1" in frontier["search"].work
    assert frontier["finetune"].action == "within"  # each probe is fine-tuned inside the search
    assert frontier["evaluate"].trials is None
    pareto = by_stage(plan(load_experiment(PAPER, ["search.mode=pareto"]), tmp_path / "p", stages))
    assert (pareto["search"].trials, pareto["search"].trial_epochs) == (20, 200)  # pareto.trials x 10 epochs
    assert pareto["finetune"].trials is None and "3 models of the Pareto front and the dense control" in \
        pareto["finetune"].work
