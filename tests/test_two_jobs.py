"""Two users' jobs on one Ray cluster at once, as a shared cluster runs them: two `ray job submit`s of the tiny
job to one local head and worker (cluster/local_cluster.py), each with its own run folder. Stopping one with
`ray job stop` during its search leaves the other running to SUCCEEDED; neither writes outside its own run
folder, nor reads, cleans or locks the other's (Tune's staging folders in the shared Ray session included);
the Ray dashboard tells their jobs and trials apart by the run folder. (Resuming a stopped job:
tests/test_job_stop.py.)"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from detector.config import save_yaml
from detector.job.runfolder import RunFolder
from detector.job.scratch import OWNER_FILE
from detector.job.status import read_status
from pipeline_helpers import make_tiny_data, tiny_experiment
from ray_job_helpers import Job, local_head, stop_wait_s, wait_for_run, wait_for_search_epoch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STAGES = "prepare,baseline,search"


def files_outside(root: Path, runs: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but in ``runs``: path -> (size, mtime)."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(run) for run in runs):
            stat = path.stat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def trial_ids(run: Path) -> set[str]:
    return {t["trial_id"] for stage in read_status(RunFolder(run))["trial_stages"].values() for t in stage["trials"]}


def trial_actors(job: Job) -> dict[str, set[str]]:
    """The Ray dashboard's view: submission id -> the names (repr) of its live trial actors."""
    jobs = json.loads(job.ray_cli("list", "jobs", "--format", "json").stdout)
    actors = json.loads(job.ray_cli("list", "actors", "--detail", "--format", "json", "--filter", "state=ALIVE").stdout)
    by_job = {j["job_id"]: j["submission_id"] for j in jobs if j.get("job_id")}
    found: dict[str, set[str]] = {}
    for actor in actors:
        if actor["class_name"].endswith("ImplicitFunc"):  # Tune's trial actors
            found.setdefault(by_job.get(actor["job_id"], actor["job_id"]), set()).add(actor["repr_name"])
    return found


def tune_staging(temp_dir: str) -> dict[str, list[str]]:
    """Tune's staging folders in the Ray sessions of the cluster's nodes: ``artifacts/<start>/<experiment>``
    by ``<start>``, the second the experiment started and its driver's pid."""
    found: dict[str, list[str]] = {}
    for path in sorted(Path(temp_dir).glob("*/session_latest/artifacts/*/*")):
        found.setdefault(path.parent.name, []).append(f"{path.parts[-5]}: {path.name}")
    return found


def assert_each_keeps_to_its_own(job: Job, runs: dict[str, Path]) -> None:
    """Each run's TensorBoard runs are its own trials', in its own folder; its job's log names its own run
    only; Tune's trial ids (which name the trials' folders, scratch folders and Ray Train runs) are its own."""
    for user, run in runs.items():
        logged = {p.parent.relative_to(RunFolder(run).tensorboard).as_posix()
                  for p in RunFolder(run).tensorboard.rglob("events.out.tfevents.*")}
        assert "baseline" in logged and any(name.startswith("search/s50-t") for name in logged), (user, logged)
        logs, other = job.logs(f"{user}-tiny-1"), "alice" if user == "bob" else "bob"
        assert str(runs[other]) not in logs and f"@{other}-tiny" not in logs, f"{user}'s log names {other}'s run"
        assert f"(detector_search@{user}-tiny pid=" in logs, logs[-3000:]
    assert not trial_ids(runs["alice"]) & trial_ids(runs["bob"])


@pytest.mark.timeout(1200)
def test_two_users_jobs_share_a_cluster_and_stopping_one_leaves_the_other(tmp_path, monkeypatch):
    t0 = time.monotonic()
    # What a job keeps in ~ (Tune's default ~/ray_results, caches) goes into this home, where all of it is seen.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = make_tiny_data(tmp_path / "shards")  # one dataset, read by both
    runs = {user: tmp_path / user / f"{user}-tiny" for user in ("bob", "alice")}
    # Bob's search trial would train for an hour: it is stopped during it. Alice's search trials take both CPUs
    # of the worker, so they wait for bob's trial: when bob is stopped, alice is in her search, not finished.
    sections = {
        "bob": {"search_train": {"max_epochs": 1000}, "resources": {"max_concurrent_trials": 1}},
        "alice": {"search_train": {"max_epochs": 1}, "resources": {"max_concurrent_trials": 1,
                                                                   "search": {"cpus_per_trial": 2}}},
    }
    for user, run in runs.items():
        save_yaml(tiny_experiment(data, control=False, train={"max_epochs": 1},
                                  search={"sparsities": [0.5], "trials_per_sparsity": 2}, **sections[user]),
                  run.parent / "tiny.yaml")
    before = files_outside(tmp_path, list(runs.values()))

    # The head takes no trials, as on Kubernetes; the worker has two CPUs.
    with local_head(workers=1, cpus_per_worker=2, object_store_mb=80) as cluster:
        job = Job(cluster)

        def submit(user: str) -> None:
            job.submit(f"{user}-tiny-1", "--config", str(runs[user].parent / "tiny.yaml"), "--out", str(runs[user]),
                       "--stages", STAGES)

        submit("bob")
        wait_for_search_epoch(job, "bob-tiny-1", runs["bob"])
        assert trial_actors(job) == {"bob-tiny-1": {"detector_search@bob-tiny"}}  # the dashboard's actors
        submit("alice")  # her baseline trains beside bob's search trial, on the worker's other CPU
        wait_for_run(job, "alice-tiny-1", runs["alice"], lambda s: s.get("stage") == "search", "search stage")
        assert job.status("alice-tiny-1") == "RUNNING" and read_status(RunFolder(runs["alice"]))["state"] == "running"
        # Each run's lease names its own driver.
        leases = {user: json.loads((run / "driver.json").read_text()) for user, run in runs.items()}
        assert leases["alice"]["pid"] != leases["bob"]["pid"]
        assert all(f"--out {run} " in leases[user]["command"] for user, run in runs.items()), leases
        jobs = {j["submission_id"]: j for j in json.loads(job.ray_cli("list", "jobs", "--format", "json").stdout)}
        assert all(f"--out {run} " in jobs[f"{user}-tiny-1"]["entrypoint"] for user, run in runs.items()), jobs

        stopped = job.ray("stop", "bob-tiny-1", timeout=stop_wait_s() + 60)  # returns once bob's job has ended
        assert stopped.returncode == 0, stopped.stderr
        assert job.status("bob-tiny-1") == "STOPPED"
        assert job.wait_until_ended("alice-tiny-1", timeout=600) == "SUCCEEDED", job.logs("alice-tiny-1")[-3000:]

        alice, bob = read_status(RunFolder(runs["alice"])), read_status(RunFolder(runs["bob"]))
        assert alice["state"] == "finished" and alice["runs"] == 1, alice
        assert bob["state"] == "stopped" and bob["message"].startswith("stopped by SIGTERM during the search stage")
        results = json.loads(RunFolder(runs["alice"]).search_results.read_text())
        assert len(results["trials"]) == 2 and all(t["status"] == "completed" and t["epochs"] == 1
                                                   for t in results["trials"])
        assert not RunFolder(runs["bob"]).search_results.exists()
        # Tune staged each experiment in a folder of its driver's own, on every node.
        staging = tune_staging(cluster.temp_dir)
        assert {start.rsplit("_", 1)[-1] for start in staging} == {str(lease["pid"]) for lease in leases.values()}
        assert_each_keeps_to_its_own(job, runs)

    # Outside both run folders the jobs changed nothing of the test's (the shared dataset, the configs, ~).
    after = files_outside(tmp_path, list(runs.values()))
    assert sorted(p for p in after.keys() | before.keys() if after.get(p) != before.get(p)) == []
    # Node-local scratch folders: alice's trials removed theirs; one of bob's stopped trial may be left, and
    # then it still names its owner, so the next trial on the node removes it (here: the test).
    scratch = {user: [p for t in trial_ids(run) for p in Path(tempfile.gettempdir()).glob(f"detector-{t}-*")]
               for user, run in runs.items()}
    assert scratch["alice"] == [] and all((p / OWNER_FILE).is_file() for p in scratch["bob"]), scratch
    for path in scratch["bob"]:
        shutil.rmtree(path)
    print(f"two jobs on one cluster: {time.monotonic() - t0:.0f} s; staging {staging}; bob's scratch {scratch['bob']}")
