"""cluster/local_cluster.py: a head and two workers on this machine, a job that runs to the end, a clean stop."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "local_cluster.py"


def _load_script():
    # cluster/ holds scripts, not a package: load the module from its file, as `python cluster/...` does.
    spec = importlib.util.spec_from_file_location("local_cluster", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_cluster"] = module
    spec.loader.exec_module(module)
    return module


local_cluster = _load_script()


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# A job that proves the cluster is three nodes and that tasks run on the workers, not on the head
# (which, as on Kubernetes, offers no CPUs).
PROBE_JOB = textwrap.dedent(
    """
    import time
    import ray

    ray.init(address="auto")
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) >= 3, f"expected a head and two workers, got {len(alive)} nodes"
    head_ids = {n["NodeID"] for n in alive if n["Resources"].get("CPU", 0) == 0}
    assert len(head_ids) == 1, head_ids

    @ray.remote(num_cpus=1)
    def node_of_task(i):
        time.sleep(0.5)  # long enough that one worker cannot take every task
        return ray.get_runtime_context().get_node_id()

    used = set(ray.get([node_of_task.remote(i) for i in range(6)]))
    assert len(used) == 2 and not used & head_ids, used
    print(f"PROBE OK nodes={len(alive)} task_nodes={len(used)}")
    """
)


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_head_and_two_workers_run_a_submitted_job_then_stop_completely():
    from ray.job_submission import JobStatus, JobSubmissionClient

    temp = Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))  # short: Ray's socket paths live under it
    state = temp / "cluster.json"
    try:
        started = time.monotonic()
        up = run_cli("up", "--workers", "2", "--cpus-per-worker", "1", "--object-store-mb", "80",
                     "--temp-dir", str(temp), "--state", str(state), timeout=130)
        assert up.returncode == 0, up.stderr
        assert f"state: {state}" in up.stdout
        cluster = local_cluster.load(state)
        assert [n.name for n in cluster.nodes] == ["head", "worker-1", "worker-2"]
        # Every node has its own ports: two Ray instances on one machine must not meet.
        ports = [p for n in cluster.nodes for p in n.ports.values()]
        assert len(ports) == len(set(ports))

        job_dir = temp / "job"
        job_dir.mkdir()
        (job_dir / "probe.py").write_text(PROBE_JOB)
        client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token()}"})
        job_id = client.submit_job(entrypoint="python probe.py", runtime_env={"working_dir": str(job_dir)})
        deadline = time.monotonic() + 90
        while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.monotonic() < deadline, f"job {job_id} still {status} after 90 s"
            time.sleep(1)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs
        assert "PROBE OK nodes=3 task_nodes=2" in logs

        # Without the token the cluster refuses the same request.
        anonymous = subprocess.run(
            [sys.executable, "-c", f"from ray.job_submission import JobSubmissionClient as C; C({cluster.dashboard_url!r}).list_jobs()"],
            capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": str(temp), "RAY_AUTH_MODE": "disabled"},
        )
        assert anonymous.returncode != 0 and "Authentication" in anonymous.stderr

        down = run_cli("down", "--state", str(state), timeout=60)
        assert down.returncode == 0, down.stderr
        recorded = {n.pid: n.start_ticks for n in cluster.nodes} | cluster.processes
        assert len(recorded) > 3  # the nodes and what they started: GCS, raylets, dashboard, agents
        alive = [pid for pid, ticks in recorded.items() if local_cluster.is_running(pid, ticks)]
        assert alive == [], f"still running after down: {alive}"
        assert not state.exists()
        assert time.monotonic() - started < 120
    finally:
        if state.exists():  # the test failed half-way: stop what it started
            run_cli("down", "--state", str(state), timeout=60)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_up_refuses_a_temp_dir_too_long_for_rays_sockets(tmp_path):
    long_dir = tmp_path / ("x" * 40)
    with pytest.raises(local_cluster.ClusterError, match="107-character limit"):
        local_cluster.up(workers=1, temp_dir=long_dir)
    assert not long_dir.exists()


def test_up_refuses_to_start_over_a_running_cluster_state(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))
    try:
        (short / "cluster.json").write_text("{}")
        with pytest.raises(local_cluster.ClusterError, match="run `down --state"):
            local_cluster.up(workers=1, temp_dir=short)
    finally:
        subprocess.run(["rm", "-rf", str(short)], check=False)


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such state file"), ("not json", "not a state file"), ('{"nodes": []}', "not a state file")],
)
def test_down_names_the_state_file_it_cannot_use(tmp_path, content, message):
    state = tmp_path / "cluster.json"
    if content is not None:
        state.write_text(content)
    result = run_cli("down", "--state", str(state), timeout=30)
    assert result.returncode == 1
    assert str(state) in result.stderr and message in result.stderr
