"""Data-parallel stages on a real local Ray (CPU, gloo): a 2-worker baseline, a search of 2-worker trials and a
2-worker fine-tune run as Ray Train runs inside the job's Tune experiments; a worker killed mid-run costs a restart from the last
checkpoint, not the trial. The training loop on two ranks without Ray: tests/test_distributed.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from detector.checkpoint import load_checkpoint, load_model
from detector.data.demo import DemoConfig
from detector.data.prepare import prepare
from detector.job.pipeline import run
from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from detector.prune.unstructured import sparsity_report
from pipeline_helpers import tiny_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

def descendants_named(prefix: str) -> set[int]:
    """This process's descendants (the Ray it started: raylet, then its workers) whose title starts with
    ``prefix``; never another test's or user's processes."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            pid = int(entry.name)
            if not title.startswith(prefix):
                continue
            while pid > 1:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == me:
                    found.add(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def result_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class WorkerKiller(threading.Thread):
    """Once the baseline's Ray Train run stored its first checkpoint (epoch 1), kill one of its workers
    (SIGKILL, as the OOM killer would) while the next epoch trains, then watch for the workers Ray Train
    starts instead."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.killed, self.before, self.after = run_dir, None, set(), set()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.killed is None:
            stored = [d for d in (self.run_dir / "tune" / "baseline").glob("*/checkpoint_*") if d.is_dir()]
            workers = descendants_named("ray::RayTrainWorker")
            if stored and workers:
                self.before = workers
                self.killed = min(workers)
                os.kill(self.killed, 9)
            time.sleep(0.1)
        while time.monotonic() < deadline and not self.after:
            self.after = descendants_named("ray::RayTrainWorker") - self.before
            time.sleep(0.2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, WorkerKiller]:
    tmp = tmp_path_factory.mktemp("dp")
    data = tmp / "data"
    prepare(data, demo=DemoConfig(image_size=16, train=64, val=32, test=16), workers=1, progress=False)
    run_dir = tmp / "run"
    # about data-parallel trials: without the dense control's search and fine-tune
    exp = tiny_experiment(
        data, control=False, train={"image_size": 16}, baseline={"max_epochs": 2, "patience": None}, finetune={"max_epochs": 1},
        search={"sparsities": [0.4], "trials_per_sparsity": 2},
        resources={"cpus_per_trial": 0.5, "max_failures": 2, "baseline": {"workers_per_trial": 2},
                   "search": {"workers_per_trial": 2}, "finetune": {"workers_per_trial": 2}})
    killer = WorkerKiller(run_dir)
    killer.start()
    try:
        run(exp, run_dir, stages=["baseline", "search", "finetune"])
    finally:
        killer.join(timeout=5)
    return run_dir, killer


def test_a_two_worker_baseline_and_fine_tune_complete(finished):
    run_dir, _ = finished
    stages = read_status(RunFolder(run_dir))["trial_stages"]
    for stage, epochs in (("baseline", 2), ("finetune", 1)):
        (trial,) = stages[stage]["trials"]
        assert trial["state"] == "done" and trial["epochs"] == epochs, trial
    for name in ("baseline", "prune-40"):
        meta = load_checkpoint(run_dir / "models" / f"{name}.pt")["metadata"]
        assert meta["world_size"] == 2  # trained by two ranks
    best = json.loads(RunFolder(run_dir).search_results.read_text())["best"]["0.4"]["params"]
    used = json.loads((run_dir / "models" / "prune-40.json").read_text())["config"]
    assert (used["optimizer"], used["lr"], used["batch_size"]) == (best["optimizer"], best["lr"], 16)  # global batch
    # The pruned model kept its masks through training on two ranks (fit also checked, at its end, that
    # both ranks held the same weights and masks).
    model, _ = load_model(run_dir / "models" / "prune-40.pt")
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.4, abs=1e-6)
    # Ray Train kept its checkpoints in the Tune trial's folder; once the stage was done they were dropped.
    trial_dir = next((run_dir / "tune" / "finetune").glob("*/checkpoint_manager_snapshot.json")).parent
    assert (trial_dir / "result.json").exists() and not [d for d in trial_dir.glob("checkpoint_*") if d.is_dir()]


def test_a_search_of_two_worker_trials_chooses_the_fine_tunes_parameters(finished):
    run_dir, _ = finished
    trials = read_status(RunFolder(run_dir))["trial_stages"]["search"]["trials"]
    assert len(trials) == 2 and all(t["state"] == "done" and t["epochs"] == 1 for t in trials), trials
    # Each search trial was a Ray Train run of its own (its checkpoint manager's state in the trial's folder)
    # that reported to the search through Tune: both results reached search/results.json.
    snapshots = list((run_dir / "tune" / "search").glob("*/checkpoint_manager_snapshot.json"))
    assert len(snapshots) == 2
    results = json.loads(RunFolder(run_dir).search_results.read_text())
    rows = [r for r in results["trials"] if r["sparsity"] == 0.4]
    assert len(rows) == 2 and all(r["status"] == "completed" and 0.0 <= r["val_accuracy"] <= 1.0 for r in rows), rows
    best = results["best"]["0.4"]
    assert (best["trial_id"], best["params"]) in [(r["trial_id"], r["params"]) for r in rows]


def test_a_killed_worker_restarts_from_the_last_checkpoint_and_the_trial_finishes(finished):
    run_dir, killer = finished
    assert killer.killed is not None, "no Ray Train worker was killed"
    assert not Path(f"/proc/{killer.killed}").exists()
    assert killer.after, "Ray Train started no new worker after the kill"
    (rows_file,) = (run_dir / "tune" / "baseline").glob("*/result.json")
    rows = result_rows(rows_file)
    # From the last checkpoint, not from scratch: no epoch reported twice, both there, and Tune's own trial
    # never failed (the restart happened inside the Ray Train run).
    assert [r["epoch"] for r in rows] == [1, 2]
    (trial,) = read_status(RunFolder(run_dir))["trial_stages"]["baseline"]["trials"]
    assert trial["restarts"] == 0 and trial["state"] == "done"
    assert (run_dir / "models" / "baseline.pt").exists()
