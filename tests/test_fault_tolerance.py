"""The job survives what a shared cluster does to it: a driver that dies, a worker node that disappears,
a trial whose loss diverges; and it runs when submitted as a Ray job to a running head."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, local_cluster_module
from detector.config import save_yaml
from detector.job.pipeline import run
from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline

pytestmark = [pytest.mark.ray, pytest.mark.slow]



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("data") / "shards")


def experiment(data: Path, **sections):
    """The tiny experiment of these tests, which are about surviving faults, not about the dense control:
    without its search."""
    return tiny_experiment(data, control=False, **sections)


def search_trials(run_dir: Path) -> list[dict]:
    return read_status(RunFolder(run_dir))["trial_stages"].get("search", {}).get("trials", [])


def result_rows(run_dir: Path, trial_id: str) -> list[dict]:
    path = run_dir / "tune" / "search" / trial_id / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def remove_scratch_of_killed_trials(run_dir: Path) -> None:
    """A trial killed with its process cannot remove its node-local scratch folder; the test does."""
    for trial in (run_dir / "tune" / "search").iterdir():
        for scratch in Path(tempfile.gettempdir()).glob(f"detector-{trial.name}-*"):
            shutil.rmtree(scratch, ignore_errors=True)


def kill_processes_under(marker: str) -> None:
    """Stop the Ray processes that our killed driver left, found by their own temp dir; nothing else."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(600)
def test_a_killed_driver_resumes_without_running_finished_trials_again(data, tmp_path):
    run_dir = tmp_path / "run"
    exp = experiment(data, search_train={"max_epochs": 2})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    write_untrained_baseline(run_dir, exp)
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "detector.cli", "run", "--config", str(config), "--out", str(run_dir),
           "--stages", "search"]
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no two trials finished within 300 s"
            finished = [t for t in search_trials(run_dir) if t["state"] == "done"]
            if len(finished) >= 2:
                break
            time.sleep(1)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies, with no chance to clean up
        driver.wait()
    finally:
        kill_processes_under(ray_tmp)
    before = {t["trial_id"]: result_rows(run_dir, t["trial_id"]) for t in finished}
    assert not (run_dir / "search" / "results.json").exists()

    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    resumed = subprocess.run([sys.executable, "-m", "detector.cli", "run", "--resume", "--out", str(run_dir),
                              "--stages", "search"], env=env, capture_output=True, text=True, timeout=400)
    kill_processes_under(env["RAY_TMPDIR"])
    shutil.rmtree(ray_tmp, ignore_errors=True)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    remove_scratch_of_killed_trials(run_dir)
    results = json.loads((run_dir / "search" / "results.json").read_text())
    assert len(results["trials"]) == 8 and all(t["status"] == "completed" for t in results["trials"])
    for trial_id, rows in before.items():
        assert result_rows(run_dir, trial_id) == rows, f"finished trial {trial_id} ran again"


def worker_hosting(pid: int, workers: list) -> object | None:
    """The worker node whose raylet started process ``pid`` (trial actors are the raylet's children)."""
    from ray._private import ray_constants

    raylets = {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: n for n in workers}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return None


@pytest.mark.timeout(600)
def test_a_lost_worker_node_costs_no_trial(data, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    run_dir = tmp_path / "run"
    exp = experiment(
        data,
        search={"sparsities": [0.1, 0.2], "trials_per_sparsity": 2},
        search_train={"max_epochs": 4},
        resources={"cpus_per_trial": 1, "max_failures": 3},
    )
    write_untrained_baseline(run_dir, exp)
    # As on Kubernetes: a head that takes no trials, and one-trial worker nodes. (Nodes can only be
    # added from the main thread, so the survivors are there from the start.)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    killed = threading.Event()

    def kill_a_worker_mid_trial() -> None:
        # Wait for a trial that has a checkpoint but has not finished, then kill the node it runs on.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for result in (run_dir / "tune" / "search").glob("*/result.json"):
                rows = result_rows(run_dir, result.parent.name)
                if rows and rows[-1]["training_iteration"] < 4 and not rows[-1].get("done"):
                    node = worker_hosting(rows[-1]["pid"], workers)
                    if node is not None:
                        cluster.remove_node(node)
                        killed.set()
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_mid_trial, daemon=True)
    killer.start()
    try:
        run(exp, run_dir, address=cluster.address, stages=["search"])
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
        remove_scratch_of_killed_trials(run_dir)
    assert killed.is_set(), "the worker node was never killed"
    results = json.loads((run_dir / "search" / "results.json").read_text())
    assert len(results["trials"]) == 4
    assert all(t["status"] == "completed" and t["epochs"] == 4 for t in results["trials"])
    # at least one trial lost its node after a checkpoint and went on from it, not from epoch 1
    restored = [t for t in results["trials"]
                if any(r["iterations_since_restore"] < r["training_iteration"]
                       for r in result_rows(run_dir, t["trial_id"]))]
    assert restored


@pytest.mark.timeout(300)
def test_a_diverging_trial_fails_alone_with_its_reason(data, tmp_path):
    run_dir = tmp_path / "run"
    # Seed 6 draws lr 1.2e12 for sparsity 0.1 (diverges) and 2.4e-3 for sparsity 0.2 (trains).
    exp = experiment(data, search={"sparsities": [0.1, 0.2], "trials_per_sparsity": 1, "seed": 6,
                                   "optimizers": ["sgd"], "lr_min": 1e-4, "lr_max": 1e14})
    write_untrained_baseline(run_dir, exp)
    with pytest.raises(RuntimeError, match="no trial at sparsity 0.1 completed"):
        run(exp, run_dir, stages=["search"])
    trials = {t["sparsity"]: t for t in search_trials(run_dir)}
    assert trials[0.1]["state"] == "failed"
    assert "nan" in trials[0.1]["reason"] or "inf" in trials[0.1]["reason"]
    assert len(result_rows(run_dir, trials[0.1]["trial_id"])) == 1  # ended, not retried
    assert trials[0.2]["state"] == "done" and trials[0.2]["reason"] is None and trials[0.2]["epochs"] == 1
    assert not (run_dir / "search" / "results.json").exists()


@pytest.fixture(scope="module")
def running_head():
    """A running head with 2 workers (cluster/local_cluster.py), as a team's cluster is: the jobs of the tests
    below come and go on it; it is torn down after them."""
    local_cluster = local_cluster_module()
    temp = Path(tempfile.mkdtemp(prefix="job-", dir="/tmp"))
    cluster = local_cluster.up(workers=2, cpus_per_worker=1, object_store_mb=80, temp_dir=temp,
                               state_path=temp / "cluster.json")
    try:
        yield cluster
    finally:
        local_cluster.down(temp / "cluster.json", remove_temp_dir=True)


def _search_job(data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(config file, run folder): a search-only job of 2 sparsities, one trial each."""
    run_dir = tmp_path / "run"
    exp = experiment(data, search={"sparsities": [0.1, 0.2], "trials_per_sparsity": 1},
                     resources={"cpus_per_trial": 1})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    write_untrained_baseline(run_dir, exp)
    return config, run_dir


@pytest.mark.timeout(400)
def test_the_job_submitted_to_a_running_head_runs_to_the_end(data, running_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster = running_head
    config, run_dir = _search_job(data, tmp_path)
    client = JobSubmissionClient(cluster.dashboard_url,
                                 headers={"Authorization": f"Bearer {cluster.token()}"})
    job_id = client.submit_job(
        entrypoint=f"{sys.executable} jobs/run.py --config {config} --out {run_dir} --stages search,report",
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", "runs", "data"]},
    )
    deadline = time.monotonic() + 300
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                            JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job still {status} after 300 s"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    results = json.loads((run_dir / "search" / "results.json").read_text())
    assert sorted(results["best"]) == ["0.1", "0.2"]
    assert "Table 4." in (run_dir / "report" / "report.md").read_text()  # a search-only report


@pytest.mark.timeout(300)
def test_the_job_runs_through_ray_client_against_a_running_head(data, running_head, tmp_path):
    cluster = running_head
    config, run_dir = _search_job(data, tmp_path)
    env = {**os.environ, **cluster.env()}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "detector.cli", "run", "--config", str(config), "--out",
                             str(run_dir), "--stages", "search,report", "--address", cluster.client_address],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "search" / "results.json").read_text())
    assert sorted(results["best"]) == ["0.1", "0.2"]
    # the trials ran on the cluster's workers, not in this process's machine-local Ray
    assert {r["node_ip"] for t in results["trials"] for r in result_rows(run_dir, t["trial_id"])} <= {"127.0.0.3", "127.0.0.4"}
