"""`ray job ...` against a running local head (cluster/local_cluster.py), as an operator's shell runs it: the
cluster, a submission, its status, its logs, and the run folder's search as the job goes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import yaml

from conftest import REPO, local_cluster_module
from detector.job.runfolder import RunFolder
from detector.job.status import read_status

RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"


def stop_wait_s() -> int:
    return int(yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])


class Job:
    """`ray job ...` against one local head, as an operator's shell would run it."""

    def __init__(self, cluster) -> None:
        self.env = {**os.environ, **cluster.env()}
        self.session_logs = Path(cluster.temp_dir) / "head" / "session_latest" / "logs"

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``ray job <args>``."""
        return self.ray_cli("job", *args, timeout=timeout)

    def ray_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        ray = Path(sys.executable).with_name("ray")
        return subprocess.run([str(ray), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO)

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


def wait_for_run(job: Job, submission_id: str, run_dir: Path, ready: Callable[[dict], bool], what: str,
                 timeout: float = 400) -> None:
    """Until ``ready`` (of the run folder's ``detector status``) holds, while the job runs."""
    deadline = time.monotonic() + timeout
    while not ready(read_status(RunFolder(run_dir))):
        assert time.monotonic() < deadline, f"{submission_id}: no {what} after {timeout} s:\n{job.logs(submission_id)[-3000:]}"
        assert job.status(submission_id) in ("PENDING", "RUNNING"), job.logs(submission_id)[-3000:]
        time.sleep(0.5)


def search_epoch_running(status: dict) -> bool:
    """A search trial has trained an epoch and is still running."""
    trials = status["trial_stages"].get("search", {}).get("trials", [])
    return status.get("stage") == "search" and any(t["epochs"] >= 1 and t["state"] == "running" for t in trials)


def wait_for_search_epoch(job: Job, submission_id: str, run_dir: Path, timeout: float = 400) -> None:
    wait_for_run(job, submission_id, run_dir, search_epoch_running, "running search trial with an epoch", timeout)


def search_rows(run_dir: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in (run_dir / "tune" / "search").glob("*/result.json")}


@contextlib.contextmanager
def local_head(**up: int) -> Iterator[object]:
    """A local cluster (``local_cluster.up(**up)``) in a temp dir of its own, stopped and removed at the end."""
    local_cluster = local_cluster_module()
    temp = Path(tempfile.mkdtemp(prefix="djs-", dir="/tmp"))  # short: Ray's socket paths live under it
    state = temp / "cluster.json"
    try:
        yield local_cluster.up(temp_dir=temp, state_path=state, **up)
    finally:
        if state.exists():
            local_cluster.down(state)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
