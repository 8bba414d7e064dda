"""`ray job stop` as an operator uses it: the tiny job submitted with `ray job submit` to a running local head
(cluster/local_cluster.py), stopped during its search, ends STOPPED with the driver exiting on its own within
Ray's stop wait (not SIGKILLed), and a second submission with --resume finishes it, every trial done once.
Also: every Kubernetes object that can stop a run gives the stop the same time, in the same order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, local_cluster_module
from detector.config import save_yaml
from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from pipeline_helpers import make_tiny_data, tiny_experiment

RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"


def stop_wait_s() -> int:
    return int(yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])


def test_pods_outlive_the_stop_wait_on_every_overlay():
    from test_k8s import OVERLAYS, pod_templates, render

    wait = stop_wait_s()
    assert wait >= 30  # the driver's stop measured 2-6 s on a loaded 2-core machine; a paper run saves more
    for overlay in OVERLAYS:
        for where, template in pod_templates(render(overlay)):
            if "head" in where or "worker group" in where:
                grace = template["spec"].get("terminationGracePeriodSeconds", 30)  # Kubernetes' default: 30
                assert grace > wait, f"{overlay}: {where}: terminationGracePeriodSeconds {grace} <= {wait}"


class Job:
    """`ray job ...` against one local head, as an operator's shell would run it."""

    def __init__(self, cluster) -> None:
        self.env = {**os.environ, **cluster.env()}
        self.session_logs = Path(cluster.temp_dir) / "head" / "session_latest" / "logs"

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        ray = Path(sys.executable).with_name("ray")
        return subprocess.run([str(ray), "job", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def submit(self, submission_id: str, *run_args: str) -> None:
        done = self.ray("submit", "--no-wait", "--submission-id", submission_id, "--runtime-env", str(RUNTIME_ENV),
                        "--", "python", str(REPO / "jobs" / "run.py"), *run_args, "--address", "auto")
        assert done.returncode == 0, done.stderr

    def status(self, submission_id: str) -> str:
        """What `ray job status` prints, as the JobStatus name."""
        done = self.ray("status", submission_id)
        out = done.stdout + done.stderr
        ended = {"was stopped": "STOPPED", "succeeded": "SUCCEEDED", "failed": "FAILED"}
        for words, status in ended.items():
            if f"Job '{submission_id}' {words}" in out:
                return status
        live = re.search(rf"Status for job '{submission_id}': (\w+)", out)
        assert live, out
        return live.group(1)

    def logs(self, submission_id: str) -> str:
        return self.ray("logs", submission_id).stdout

    def supervisor_log(self, submission_id: str) -> str:
        return (self.session_logs / "jobs" / f"supervisor-{submission_id}.log").read_text()

    def wait_until_ended(self, submission_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status(submission_id)) in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, f"{submission_id} still {status}:\n{self.logs(submission_id)[-3000:]}"
            time.sleep(2)
        return status


def wait_for_search_epoch(job: Job, submission_id: str, run_dir: Path, timeout: float = 400) -> None:
    """Until a search trial has trained an epoch and is still running."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"no search epoch after {timeout} s:\n{job.logs(submission_id)[-3000:]}"
        status = read_status(RunFolder(run_dir))
        trials = status["trial_stages"].get("search", {}).get("trials", [])
        if status.get("stage") == "search" and any(t["epochs"] >= 1 and t["state"] == "running" for t in trials):
            return
        assert job.status(submission_id) in ("PENDING", "RUNNING"), job.logs(submission_id)[-3000:]
        time.sleep(0.5)


def search_rows(run_dir: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in (run_dir / "tune" / "search").glob("*/result.json")}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_job_stop_ends_the_job_stopped_and_a_resubmission_with_resume_finishes_it(tmp_path):
    local_cluster = local_cluster_module()
    data = make_tiny_data(tmp_path / "shards")
    # Search trials of 3 epochs: one is still training when its first epoch is seen and the stop comes.
    exp = tiny_experiment(data, control=False, train={"max_epochs": 1}, search_train={"max_epochs": 3},
                          search={"sparsities": [0.5], "trials_per_sparsity": 2})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    run_dir = tmp_path / "run"
    temp = Path(tempfile.mkdtemp(prefix="djs-", dir="/tmp"))  # short: Ray's socket paths live under it
    state = temp / "cluster.json"
    try:
        # The head alone, taking the trials: two CPUs, as this machine has.
        cluster = local_cluster.up(workers=0, head_cpus=2, object_store_mb=80, temp_dir=temp, state_path=state)
        job = Job(cluster)
        job.submit("tiny-1", "--config", str(config), "--out", str(run_dir), "--stages", "prepare,baseline,search")
        wait_for_search_epoch(job, "tiny-1", run_dir)

        t0 = time.monotonic()
        stopped = job.ray("stop", "tiny-1", timeout=stop_wait_s() + 60)  # waits until the job has ended
        took = time.monotonic() - t0
        assert stopped.returncode == 0, stopped.stderr
        assert job.status("tiny-1") == "STOPPED"
        supervisor = job.supervisor_log("tiny-1")
        assert "terminated gracefully with SIGTERM" in supervisor and "SIGKILL" not in supervisor, supervisor
        assert took < stop_wait_s(), f"`ray job stop` took {took:.1f} s"
        print(f"`ray job stop` returned after {took:.1f} s")
        status = read_status(RunFolder(run_dir))
        assert status["state"] == "stopped" and status["stages"]["search"] == "stopped", status
        assert status["message"].startswith("stopped by SIGTERM during the search stage")
        assert "detector run: stopped by SIGTERM during the search stage" in job.logs("tiny-1")
        assert not RunFolder(run_dir).search_results.exists()  # a cut search is never a result
        done_before = {t["trial_id"] for t in status["trial_stages"]["search"]["trials"] if t["state"] == "done"}
        rows_before = {k: v for k, v in search_rows(run_dir).items() if k in done_before}

        job.submit("tiny-2", "--resume", "--out", str(run_dir))
        assert job.wait_until_ended("tiny-2", timeout=600) == "SUCCEEDED", job.logs("tiny-2")[-3000:]
        status = read_status(RunFolder(run_dir))
        assert status["state"] == "finished" and status["runs"] == 2
        results = json.loads(RunFolder(run_dir).search_results.read_text())
        assert len(results["trials"]) == 2 and all(t["status"] == "completed" and t["epochs"] == 3
                                                   for t in results["trials"])
        after = search_rows(run_dir)
        assert all(after[k] == v for k, v in rows_before.items()), "a finished trial ran again"
    finally:
        if state.exists():
            local_cluster.down(state)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
