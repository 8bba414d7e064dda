"""A frontier search on a real local Ray: its probes are decided on validation data while the test shards
are not even there, against the dense control searched and fine-tuned in round 1, a driver killed mid-search
resumes without repeating a finished probe, and the report states the frontier on the test set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from detector.config import save_yaml
from detector.job.runfolder import CONTROL, RunFolder, model_name
from pipeline_helpers import make_tiny_data, tiny_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def detector(args: list[str], log: Path, ray_tmp: str) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "detector.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_TMPDIR": ray_tmp}, start_new_session=True)


def kill_leftovers(marker: str) -> None:
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                if marker in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(pid_dir.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@pytest.mark.timeout(900)
def test_a_frontier_search_decides_on_validation_resumes_and_reports(tmp_path):
    data = make_tiny_data(tmp_path / "shards")
    run_dir = tmp_path / "run"
    run = RunFolder(run_dir)
    exp = tiny_experiment(data, search={"mode": "frontier", "sparsities": [0.3, 0.6, 0.9], "trials_per_sparsity": 1,
                                        "frontier": {"resolution": 0.15}},
                          resources={"max_concurrent_trials": 1})  # fine-tunes one after another
    config = tmp_path / "frontier.yaml"
    save_yaml(exp, config)
    # The choice may read train and validation data only: the test shards are not there while it is made.
    hidden = tmp_path / "hidden-test-shards"
    shutil.move(str(data / "shards" / "test"), hidden)

    ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    first = detector(["run", "--config", str(config), "--out", str(run_dir), "--stages", "baseline,search"],
                     tmp_path / "1.log", ray_tmp)
    deadline = time.monotonic() + 400
    while not list((run_dir / "models").glob("prune-*.pt")):  # the first probe's fine-tune has finished
        assert first.poll() is None, (tmp_path / "1.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no probe was fine-tuned within 400 s"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kill_leftovers(ray_tmp)
    finished = {p.name: p.stat().st_mtime_ns for p in (run_dir / "models").glob("*.pt")}
    round1 = json.loads(run.round_results(1).read_text())
    rows = {t["trial_id"]: (run_dir / "tune" / "search-r1" / t["trial_id"] / "result.json").read_text()
            for t in round1["trials"]}
    assert not run.search_results.exists()

    ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    resumed = detector(["run", "--resume", "--out", str(run_dir), "--stages", "baseline,search"], tmp_path / "2.log",
                       ray_tmp)
    assert resumed.wait(timeout=600) == 0, (tmp_path / "2.log").read_text()[-3000:]
    kill_leftovers(ray_tmp)
    for name, mtime in finished.items():
        assert (run_dir / "models" / name).stat().st_mtime_ns == mtime, f"{name} was fine-tuned again"
    for trial_id, text in rows.items():
        assert (run_dir / "tune" / "search-r1" / trial_id / "result.json").read_text() == text

    record = json.loads(run.frontier.read_text())
    assert record["complete"] and record["answer"]["stopped_because"]
    probes = [p for r in record["rounds"] for p in r["probes"]]
    assert [p["sparsity"] for p in record["rounds"][0]["probes"]] == [0.3, 0.6, 0.9]
    # judged against the dense control, which round 1 searched and fine-tuned beside its probes
    assert sorted(json.loads(run.round_results(1).read_text())["best"]) == ["0", "0.3", "0.6", "0.9"]
    control = json.loads(run.model_summary(CONTROL).read_text())["best_val_accuracy"]
    assert record["reference"] == {"model": CONTROL, "val_accuracy": control}
    for p in probes:  # each decision is the rule applied to that probe's validation accuracy
        val = json.loads(run.model_summary(model_name(p["sparsity"])).read_text())["best_val_accuracy"]
        assert p["val_accuracy"] == val and p["non_inferior"] == (val >= control - 0.005 - 1e-12)
    ans = record["answer"]
    if ans["first_inferior"] is not None:
        assert ans["first_inferior"] - (ans["sparsity"] or 0.0) <= 0.15 + 1e-9
    results = json.loads(run.search_results.read_text())
    assert sorted(results["best"]) == sorted(["0", *(f"{p['sparsity']:g}" for p in probes)])
    assert not list(run.root.glob("eval/*.json"))  # nothing has looked at test data yet

    # Now the evaluation, with the test shards back, and the report's frontier section.
    shutil.move(str(hidden), data / "shards" / "test")
    assert subprocess.run([sys.executable, "-m", "detector.cli", "run", "--resume", "--out", str(run_dir),
                           "--stages", "evaluate,report"], capture_output=True, text=True, timeout=600).returncode == 0
    assert len(run.evaluation_files()) == 2 + len(probes)  # the baseline, the control and every probe
    md = (run.report / "report.md").read_text()
    assert "The sparsity frontier" in md and (run.report / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert ("Up to" in md and "on the combined test set the accuracy difference" in md) or "found no sparsity" in md
