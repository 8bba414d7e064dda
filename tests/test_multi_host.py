"""A real multi-host cluster (cluster/netns_cluster.py): each host its own network namespace, address, hostname
and /tmp, sharing only the run folders' volume, started as KubeRay starts its pods. On it the tiny job,
submitted with `ray job submit`, meets what a shared cluster does to a job: a worker host cut off mid-trial
and rejoining later, and the head host lost mid-search with a fresh cluster and driver taking the run over.

Each fault prints what it cost (seconds to detect, to recover, trial-epochs repeated): docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cluster_script
from detector.config import save_yaml
from detector.job.fence import read_attempt
from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from driver_helpers import tree_digest
from pipeline_helpers import make_tiny_data, tiny_experiment
from ray_job_helpers import Job, search_rows

netns = cluster_script("netns_cluster")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")
SEARCH_EPOCHS = 4


def test_every_host_starts_ray_as_the_kuberay_pod_templates_do():
    from test_k8s import OVERLAYS, cluster_specs, render

    head = netns.kuberay_start_args("head", num_cpus=0)
    worker = netns.kuberay_start_args("worker", head_address="10.0.0.2:6379", num_cpus=3)
    assert "--head" in head and "--num-cpus=0" in head and "--block" in head
    assert "--address=10.0.0.2:6379" in worker and "--num-cpus=3" in worker
    for overlay in OVERLAYS:
        for where, spec in cluster_specs(render(overlay)):
            assert [f"--{k}={v}" for k, v in spec["headGroupSpec"]["rayStartParams"].items()] == ["--num-cpus=0"], where
            for group in spec["workerGroupSpecs"]:
                assert all(f"--{k}={v}" in worker for k, v in (group.get("rayStartParams") or {}).items()), where


def tiny_search(volume: Path, epochs: int = SEARCH_EPOCHS, trials: int = 2) -> Path:
    """Data and a config on the shared volume: search trials of ``epochs`` epochs, one per worker at a time."""
    data = make_tiny_data(volume / "shards")
    exp = tiny_experiment(data, control=False, train={"max_epochs": 1}, search_train={"max_epochs": epochs},
                          search={"sparsities": [0.5], "trials_per_sparsity": trials})
    config = volume / "tiny.yaml"
    save_yaml(exp, config)
    return config


def job_on(cluster) -> Job:
    return Job(SimpleNamespace(env=cluster.env, temp_dir="/nonexistent"))


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "volume"  # the PVC: the only folder the hosts share (besides the code)
    path.mkdir()
    return path


@pytest.fixture
def cluster(tmp_path, volume):
    made = netns.up(tmp_path / "hosts", workers=2, cpus_per_worker=1, shared=(volume,))
    try:
        yield made
    finally:
        netns.down(made)


def trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "tune" / "search").glob("*") if p.is_dir())


def wait_for(what: str, ready, timeout: float, job: Job | None = None, submission: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if job is not None:
            assert job.status(submission) in ("PENDING", "RUNNING"), f"no {what}:\n{job.logs(submission)[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.5)
    return value


def running_trial_on(run_dir: Path, hostname: str) -> Path | None:
    """A search trial whose newest attempt runs on ``hostname`` and has reported an epoch."""
    status = read_status(RunFolder(run_dir))
    trials = {t["trial_id"]: t for t in status.get("trial_stages", {}).get("search", {}).get("trials", [])}
    for trial in trial_dirs(run_dir):
        attempt = read_attempt(trial)
        row = trials.get(trial.name)
        if attempt and attempt.host == hostname and row and row["state"] == "running" and row["epochs"] >= 1:
            return trial
    return None


def epochs_logged(log: str, trial: str, ip: str = "") -> list[int]:
    """The epochs ``trial`` logged (only those from the host at ``ip``: the lines Ray forwards name it)."""
    where = rf"ip={re.escape(ip)}\)[^\n]*" if ip else ""
    return [int(e) for e in re.findall(rf"{where}\[{re.escape(trial)}\] detector\.train: epoch (\d+):", log)]


def host_log(host) -> str:
    """Everything the host's trial processes logged to their own disk (Ray's worker-*.err of its sessions)."""
    return "".join(p.read_text(errors="replace") for p in Path(host.root, "tmp", "ray").glob("session_2*/logs/worker-*.err"))


@needs_root
def test_hosts_have_their_own_address_hostname_and_tmp(cluster, volume):
    job = job_on(cluster)
    probe = volume / "probe.py"
    probe.write_text(
        "import json, os, socket, ray\n"
        "ray.init()\n"
        "@ray.remote(num_cpus=1)\n"
        "def where(): return socket.gethostname(), ray.util.get_node_ip_address(), sorted(os.listdir('/tmp/ray'))\n"
        "print(json.dumps(ray.get([where.options(scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(n['NodeID'], soft=False)).remote() for n in ray.nodes() if n['Resources'].get('CPU')])))\n")
    done = job.ray("submit", "--submission-id", "probe", "--", "python", str(probe))
    assert done.returncode == 0, done.stderr
    seen = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[[")))
    workers = cluster.hosts[1:]
    assert sorted(map(tuple, [s[:2] for s in seen])) == sorted((h.hostname, h.address) for h in workers)
    for _, _, tmp_ray in seen:  # one Ray session per host: no host sees another's /tmp
        assert len([name for name in tmp_ray if name.startswith("session_2")]) == 1


def hosts_alive(cluster) -> int:
    return netns._local.alive_node_count(cluster.dashboard_url, cluster.token())


@needs_root
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_cut_off_mid_trial_is_replaced_and_rejoins_harmlessly(cluster, volume):
    """Its trial restarts on the other worker from its last checkpoint; every trial finishes once; what the
    cut-off host could still store is fenced off; back on the network, its stale processes end and change
    nothing in the run folder."""
    config, run_dir, job = tiny_search(volume), volume / "run", job_on(cluster)
    cut_host = cluster.host("worker-1")
    job.submit("cut", "--config", str(config), "--out", str(run_dir), "--stages", "prepare,baseline,search")
    trial = wait_for("trial training on worker-1", lambda: running_trial_on(run_dir, cut_host.hostname), 400,
                     job, "cut")
    first = read_attempt(trial)

    t_cut = time.monotonic()
    netns.cut(cluster, "worker-1")
    wait_for("node marked dead", lambda: hosts_alive(cluster) == 2, 300)
    detected = time.monotonic() - t_cut
    moved = wait_for("the trial restarted elsewhere", lambda: (a := read_attempt(trial)) and a.id != first.id and a, 300)
    recovered = time.monotonic() - t_cut
    assert moved.host == cluster.host("worker-2").hostname
    assert job.wait_until_ended("cut", timeout=600) == "SUCCEEDED", job.logs("cut")[-3000:]

    results = json.loads(RunFolder(run_dir).search_results.read_text())
    assert len(results["trials"]) == 2
    assert all(t["status"] == "completed" and t["epochs"] == SEARCH_EPOCHS for t in results["trials"])
    for rows in search_rows(run_dir).values():  # what the driver recorded: each epoch once, in order
        assert [r["training_iteration"] for r in rows] == list(range(1, SEARCH_EPOCHS + 1))
    name = next(t["name"] for t in results["trials"] if t["trial_id"] == trial.name)
    live = epochs_logged(job.logs("cut"), name, ip=cluster.host("worker-2").address)
    stale = epochs_logged(host_log(cut_host), name)  # the cut-off host's own disk, read after the fact
    print(f"worker cut off: detected after {detected:.0f} s, trial restarted after {recovered:.0f} s, "
          f"{len(set(stale) & set(live))} trial-epoch(s) repeated (stale attempt trained {stale}, new one {live})")
    assert sorted(set(stale) | set(live)) == list(range(1, SEARCH_EPOCHS + 1))
    assert len(set(stale) & set(live)) <= 1  # at most the epoch in flight at the cut
    if set(stale) & set(live):  # the cut-off attempt stored that epoch too: the new attempt removed it
        assert "stored by an earlier attempt after the checkpoint this one starts from" in job.logs("cut")

    before = tree_digest(run_dir)
    netns.reconnect(cluster, "worker-1")
    t_back = time.monotonic()
    wait_for("the rejoined host's processes to end", lambda: not netns.host_pids(cut_host), 120)
    print(f"worker rejoined: its stale processes ended after {time.monotonic() - t_back:.0f} s")
    assert tree_digest(run_dir) == before
    assert hosts_alive(cluster) == 2  # the dead node stays dead: KubeRay would start a new pod


@needs_root
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_head_host_lost_mid_search_a_new_cluster_and_driver_finish_the_run(tmp_path, volume):
    """As KubeRay retries a RayJob whose head is gone: a new cluster (new hosts, new names) and a new driver on
    the same run folder; the driver takes the lease over once the lost driver's heartbeat is stale, and the
    search finishes with no finished trial run again."""
    config, run_dir = tiny_search(volume, epochs=3, trials=3), volume / "run"  # the third waits for a worker
    first = netns.up(tmp_path / "hosts-1", workers=2, cpus_per_worker=1, shared=(volume,), name="dnlost1")
    try:
        job = job_on(first)
        job.submit("lost", "--config", str(config), "--out", str(run_dir), "--stages", "prepare,baseline,search")

        def one_done_one_running() -> bool:
            trials = read_status(RunFolder(run_dir)).get("trial_stages", {}).get("search", {}).get("trials", [])
            return {"done", "running"} <= {t["state"] for t in trials}

        wait_for("a finished and a running search trial", one_done_one_running, 400, job, "lost")
        netns.kill_host(first, "head")
        t_lost = time.monotonic()
    finally:
        netns.down(first)  # KubeRay deletes the whole RayCluster before it starts the next one
    status = read_status(RunFolder(run_dir))
    done_before = {t["trial_id"] for t in status["trial_stages"]["search"]["trials"] if t["state"] == "done"}
    rows_before = {k: v for k, v in search_rows(run_dir).items() if k in done_before}

    second = netns.up(tmp_path / "hosts-2", workers=2, cpus_per_worker=1, shared=(volume,), name="dnlost2")
    try:
        job = job_on(second)
        job.submit("lost-retry", "--resume", "--out", str(run_dir))
        assert job.wait_until_ended("lost-retry", timeout=600) == "SUCCEEDED", job.logs("lost-retry")[-3000:]
        logs = job.logs("lost-retry")
    finally:
        netns.down(second)
    recovered = time.monotonic() - t_lost
    assert "taking over the lease of a driver that is gone: pid" in logs and "dnlost1-head" in logs
    results = json.loads(RunFolder(run_dir).search_results.read_text())
    assert len(results["trials"]) == 3 and all(t["status"] == "completed" for t in results["trials"])
    after = search_rows(run_dir)
    assert all(after[k] == v for k, v in rows_before.items()), "a finished trial ran again"
    unfinished = [t["name"] for t in results["trials"] if t["trial_id"] not in done_before]
    before = {name: {e for h in first.hosts[1:] for e in epochs_logged(host_log(h), name)} for name in unfinished}
    again = {name: sorted(before[name] & set(epochs_logged(logs, name))) for name in unfinished}
    repeated = sum(map(len, again.values()))
    took = re.search(r"waiting up to (\d+) s for its heartbeat", logs)
    print(f"head lost: the new driver waited {took.group(1) if took else 0} s for the lease; the run finished "
          f"{recovered:.0f} s after the loss; the unfinished trials trained {repeated} epochs again after it: {again}")
    assert read_status(RunFolder(run_dir))["state"] == "finished"


def test_the_cluster_script_names_a_missing_state_file_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(netns.REPO / "cluster" / "netns_cluster.py"), "cut", "--state",
                           str(tmp_path / "nope.json"), "worker-1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {tmp_path / 'nope.json'}: no such state file (was the cluster started with " \
                          f"`up --state {tmp_path / 'nope.json'}`?)\n"
