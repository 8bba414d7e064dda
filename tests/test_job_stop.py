"""`ray job stop` as an operator uses it: the tiny job submitted with `ray job submit` to a running local head
(cluster/local_cluster.py), stopped during its search, ends STOPPED with the driver exiting on its own within
Ray's stop wait (not SIGKILLed), and a second submission with --resume finishes it, every trial done once.
Also: every Kubernetes object that can stop a run gives the stop the same time, in the same order."""

from __future__ import annotations

import json
import time

import pytest

from detector.config import save_yaml
from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from pipeline_helpers import make_tiny_data, tiny_experiment
from ray_job_helpers import Job, local_head, search_rows, stop_wait_s, wait_for_search_epoch


def test_pods_outlive_the_stop_wait_on_every_overlay():
    from test_k8s import OVERLAYS, pod_templates, render

    wait = stop_wait_s()
    assert wait >= 30  # the driver's stop measured 2-6 s on a loaded 2-core machine; a paper run saves more
    for overlay in OVERLAYS:
        for where, template in pod_templates(render(overlay)):
            if "head" in where or "worker group" in where:
                grace = template["spec"].get("terminationGracePeriodSeconds", 30)  # Kubernetes' default: 30
                assert grace > wait, f"{overlay}: {where}: terminationGracePeriodSeconds {grace} <= {wait}"


SEARCH_EPOCHS = 8


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_job_stop_ends_the_job_stopped_and_a_resubmission_with_resume_finishes_it(tmp_path):
    data = make_tiny_data(tmp_path / "shards")
    # Search trials of 8 epochs of 1-3 s: once a trial's first epoch is seen, its other 7 leave the stop (the
    # CLI's start included: 1-3 s) its time. With 3 epochs, a fast machine finished the search first.
    exp = tiny_experiment(data, control=False, train={"max_epochs": 1}, search_train={"max_epochs": SEARCH_EPOCHS},
                          search={"sparsities": [0.5], "trials_per_sparsity": 2})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    run_dir = tmp_path / "run"
    # The head alone, taking the trials: two CPUs, as this machine has.
    with local_head(workers=0, head_cpus=2, object_store_mb=80) as cluster:
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
        assert len(results["trials"]) == 2 and all(t["status"] == "completed" and t["epochs"] == SEARCH_EPOCHS
                                                   for t in results["trials"])
        after = search_rows(run_dir)
        assert all(after[k] == v for k, v in rows_before.items()), "a finished trial ran again"
