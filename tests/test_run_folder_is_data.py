"""A run folder is data, not code: `detector status` and `detector report` read plain JSON and never unpickle
what a teammate (or anyone who can write the shared volume) planted there; resuming, which unpickles Tune's
state, refuses a folder that others could have written unless the user says they trust it."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import save_yaml
from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline


class Payload:
    """Creates ``marker`` when unpickled: what an attacker would plant (with worse code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(run_dir: Path, marker: Path) -> None:
    """Pickles where Tune keeps its state, and a JSON experiment state carrying a pickled trial, as Ray's does."""
    for stage in ("baseline", "search"):
        folder = run_dir / "tune" / stage
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
        (folder / "searcher-state-2026-12-01_00-00-00.pkl").write_bytes(pickle.dumps(Payload(marker)))
        (folder / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps({
            "trial_data": [[pickle.dumps(Payload(marker)).hex(), pickle.dumps(Payload(marker)).hex()]],
            "runner_data": {"_session_str": "2026-12-01_00-00-00"}}))


def test_status_and_report_never_run_what_was_planted_in_the_run_folder(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "PWNED"
    run_dir.mkdir()
    (run_dir / "experiment.yaml").write_text("name: planted\n")
    plant(run_dir, marker)
    (run_dir / "search").mkdir()
    (run_dir / "search" / "results.json").write_text(json.dumps({
        "metric": "val_accuracy", "direction": "max", "scheduler": "none", "epochs_run": 1, "epochs_budget": 1,
        "trials": [{"trial_id": "t1", "name": "search/s10-t1", "trial": 1, "sparsity": 0.1,
                    "params": {"optimizer": "adam", "lr": 1e-4}, "objective": 0.5, "val_accuracy": 0.5,
                    "best_val_accuracy": 0.5, "epochs": 1, "start": 0.0, "end": 1.0, "status": "completed"}],
        "best": {"0.1": {"sparsity": 0.1, "params": {"optimizer": "adam", "lr": 1e-4}, "objective": 0.5,
                         "val_accuracy": 0.5, "trial_id": "t1", "name": "search/s10-t1"}}}))
    for command in (["status", str(run_dir)], ["status", str(run_dir), "--json"], ["report", str(run_dir)]):
        out = subprocess.run([sys.executable, "-m", "detector.cli", *command], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert not marker.exists(), f"`detector {' '.join(command)}` ran a planted pickle"
    assert json.loads(subprocess.run([sys.executable, "-m", "detector.cli", "status", str(run_dir), "--json"],
                                     capture_output=True, text=True).stdout)["state"] == "not started"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_refuses_tune_state_that_others_could_have_written(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run_dir, marker = tmp_path / "run", tmp_path / "PWNED"
    exp = tiny_experiment(data, control=False, search={"sparsities": [0.1], "trials_per_sparsity": 1})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    write_untrained_baseline(run_dir, exp)
    cmd = [sys.executable, "-m", "detector.cli", "run", "--config", str(config), "--out", str(run_dir),
           "--stages", "search"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=240).returncode == 0
    # The search must run again (its results are gone), from the Tune state a teammate could have replaced.
    (run_dir / "search" / "results.json").unlink()
    (run_dir / "tune" / "search" / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (run_dir / "tune" / "search").chmod(0o775)  # group-writable, as on a volume shared by a team
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "writable by group" in refused.stderr and "--trust-run-folder" in refused.stderr
    assert not marker.exists()
