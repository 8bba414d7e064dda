"""Stopping a real `detector run` at each stage with SIGINT (Ctrl-C) and SIGTERM (`kill`, `ray job stop`), and
resuming it: a stop never becomes a result, nothing after the stopped stage starts, and the resumed run ends
as if it had never stopped (finished trials are not run again). One driver per run folder: a second one is
refused while the first lives, and takes over once it is dead."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from detector.config import save_yaml
from detector.job.runfolder import BASELINE, CONTROL, RunFolder
from detector.job.status import read_status
from driver_helpers import Driver
from pipeline_helpers import make_tiny_data, tiny_experiment
from process_helpers import processes_with

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def wait_for(run_dir: Path, driver: Driver, stage: str, *, timeout: float = 240, done: int = 0) -> dict:
    """Until the run is in ``stage``, and for a Tune stage until one of its trials has trained an epoch (and
    ``done`` of its trials have finished)."""
    deadline = time.monotonic() + timeout
    while True:
        assert driver.proc.poll() is None, f"the driver ended early:\n{driver.output()[-3000:]}"
        assert time.monotonic() < deadline, f"not in stage {stage} after {timeout} s:\n{driver.output()[-3000:]}"
        status = read_status(RunFolder(run_dir))
        if status.get("stage") == stage and status["stages"].get(stage) == "running":
            trials = status["trial_stages"].get(stage, {}).get("trials", [])
            trained = stage not in ("baseline", "search", "finetune") or any(
                t["epochs"] >= 1 and t["state"] == "running" for t in trials)
            if trained and sum(t["state"] == "done" for t in trials) >= done:
                return status
        time.sleep(0.3)


def assert_stopped(run_dir: Path, stage: str, code: int, sig: int) -> None:
    assert code == 128 + sig
    status = read_status(RunFolder(run_dir))
    assert status["state"] == "stopped" and status["stage"] == stage and status["stages"][stage] == "stopped"
    later = list(status["stages"])[list(status["stages"]).index(stage) + 1:]
    assert all(status["stages"][s] == "pending" for s in later), status["stages"]
    assert "--resume" in status["message"]
    for table in status["trial_stages"].values():
        assert not any(t["state"] in ("running", "pending") for t in table["trials"])


def result_rows(run_dir: Path, stage: str) -> dict[str, list[dict]]:
    out = {}
    for result in (run_dir / "tune" / stage).glob("*/result.json"):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stop")
    data = make_tiny_data(root / "shards")
    # With the dense control (the default): its search, fine-tune and evaluation stop and resume as the
    # others'. A stop comes a second or more after wait_for saw a trial's first epoch (the status file, the poll, the
    # signal), and an epoch here takes about one: the baseline and the fine-tunes keep several epochs
    # left by then, so none of them can finish (and write its model) before the stop lands.
    exp = tiny_experiment(data, train={"max_epochs": 6, "patience": None}, search_train={"max_epochs": 2},
                          finetune={"max_epochs": 5},
                          search={"sparsities": [0.2, 0.4], "trials_per_sparsity": 2})
    path = root / "tiny.yaml"
    save_yaml(exp, path)
    return path


@pytest.mark.timeout(1500)
def test_stopped_at_each_stage_and_resumed_it_ends_as_one_run(config, tmp_path):
    run_dir = tmp_path / "run"
    resume = ["run", "--resume", "--out", str(run_dir)]

    # Ctrl-C during the baseline: the whole job stops; no baseline model, nothing after it.
    first = Driver(["run", "--config", str(config), "--out", str(run_dir)], tmp_path / "1.log")
    wait_for(run_dir, first, "baseline")
    first.signal_group(signal.SIGINT)
    assert_stopped(run_dir, "baseline", first.wait(), signal.SIGINT)
    assert not RunFolder(run_dir).model(BASELINE).exists()
    assert "--resume" in first.output()

    # SIGTERM during the search (as `kill` or `ray job stop` send it, to the driver alone), once a trial has
    # finished and another is training (most of the 6 are still to come).
    second = Driver(resume, tmp_path / "2.log")
    wait_for(run_dir, second, "search", done=1)
    second.proc.send_signal(signal.SIGTERM)
    assert_stopped(run_dir, "search", second.wait(), signal.SIGTERM)
    assert RunFolder(run_dir).model(BASELINE).exists()
    assert not RunFolder(run_dir).search_results.exists()  # a cut search is never a result
    searched = read_status(RunFolder(run_dir))["trial_stages"]["search"]["trials"]
    done_before = {t["trial_id"] for t in searched if t["state"] == "done"}
    rows_before = {k: v for k, v in result_rows(run_dir, "search").items() if k in done_before}
    assert done_before and len(rows_before) == len(done_before)

    # Two Ctrl-Cs during the fine-tunes: the second one stops at once.
    third = Driver(resume, tmp_path / "3.log")
    wait_for(run_dir, third, "finetune")
    third.signal_group(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    third.signal_group(signal.SIGINT)
    code = third.wait(timeout=60)
    assert time.monotonic() - t0 < 30
    assert_stopped(run_dir, "finetune", code, signal.SIGINT)
    results = json.loads(RunFolder(run_dir).search_results.read_text())
    assert len(results["trials"]) == 6 and all(t["status"] == "completed" and t["epochs"] == 2
                                               for t in results["trials"])
    assert sorted(results["best"]) == ["0", "0.2", "0.4"]  # the dense control's search among them
    assert not list((run_dir / "models").glob("prune-*.pt")) and not RunFolder(run_dir).model(CONTROL).exists()

    # SIGTERM during the evaluation.
    fourth = Driver(resume, tmp_path / "4.log")
    wait_for(run_dir, fourth, "evaluate")
    fourth.proc.send_signal(signal.SIGTERM)
    assert_stopped(run_dir, "evaluate", fourth.wait(), signal.SIGTERM)
    assert not (run_dir / "report" / "report.md").exists()

    # The last resume finishes the run; the search trials that had finished before the stop never ran again.
    last = Driver(resume, tmp_path / "5.log")
    assert last.wait(timeout=400) == 0, last.output()[-3000:]
    status = read_status(RunFolder(run_dir))
    assert status["state"] == "finished" and set(status["stages"].values()) <= {"done", "reused"}
    assert (run_dir / "report" / "report.md").exists()
    assert [p.name for p in RunFolder(run_dir).evaluation_files()] == [
        "baseline.json", "dense-ft.json", "prune-20.json", "prune-40.json"]
    after = result_rows(run_dir, "search")
    assert all(after[k] == v for k, v in rows_before.items()), "a finished trial ran again"
    assert json.loads((run_dir / "status" / "run.json").read_text())["runs"] == 5


@pytest.mark.timeout(600)
def test_one_driver_per_run_folder_and_a_dead_ones_lease_is_taken_over(config, tmp_path):
    run_dir = tmp_path / "run"
    # a baseline long enough to still be training when the second driver comes
    args = ["run", "--config", str(config), "--out", str(run_dir), "--stages", "prepare,baseline",
            "--set", "train.max_epochs=12", "--set", "train.patience=12"]
    first = Driver(args, tmp_path / "1.log")
    wait_for(run_dir, first, "baseline")

    # A second driver on the same folder exits at once, naming the first, and starts nothing.
    t0 = time.monotonic()
    second = Driver(args, tmp_path / "2.log")
    assert second.wait(timeout=60) == 2
    assert time.monotonic() - t0 < 30
    assert f"another driver works on this run folder: pid {first.proc.pid}" in second.output()
    assert read_status(RunFolder(run_dir))["state"] == "running"

    # The first dies without a word (SIGKILL, like a lost node): the next driver takes its lease over.
    first.signal_group(signal.SIGKILL)
    first.proc.wait()
    for pid in processes_with(first.ray_tmp):  # what SIGKILL left of its embedded Ray
        os.kill(pid, signal.SIGKILL)
    status = read_status(RunFolder(run_dir))
    assert status["state"] == "stopped" and "driver is gone" in status["message"]
    third = Driver(args, tmp_path / "3.log")
    assert third.wait(timeout=400) == 0, third.output()[-3000:]
    assert f"taking over the lease of a driver that is gone: pid {first.proc.pid}" in third.output()
    assert RunFolder(run_dir).model(BASELINE).exists()
    assert not RunFolder(run_dir).lease.exists()  # released at the end
