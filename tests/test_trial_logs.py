"""A trial's log lines reach where Ray users look: the driver's output (what `ray job logs` shows of a job)
and the Ray session's worker log files (what the dashboard shows as the actor's logs), each naming the trial.
Before, Ray's trial processes logged at WARNING only, and `... starts:` and the epochs appeared nowhere."""

from __future__ import annotations

import re

import pytest

from console_helpers import run_detector, tiny_search_config
from detector.job.experiment import load_experiment
from pipeline_helpers import write_untrained_baseline

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # one search trial of one epoch: ~1 min on 2 loaded cores

START = re.compile(r"\[search/s50-t(\d)\] detector\.job\.tune\.trainables: trial search/s50-t\1 \(Tune \w+\) starts: "
                   r"sparsity 0\.5, method unstructured, optimizer \w+, lr [\d.e-]+")
EPOCH = re.compile(r"\[search/s50-t\d\] detector\.train: epoch 1: train_loss [\d.]+ .* val_acc [\d.]+")


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """`detector run --stages search` of one trial, on a baseline written without Ray."""
    root = tmp_path_factory.mktemp("trial-logs")
    config = tiny_search_config(root)
    write_untrained_baseline(root / "run", load_experiment(config, []))
    console = run_detector("run", "--config", str(config), "--out", str(root / "run"), "--stages", "search", cwd=root)
    assert console.returncode == 0, console.output[-4000:]
    return console


def test_the_trials_lines_reach_the_drivers_output(search_run):
    out = search_run.output
    assert START.search(out), out
    assert EPOCH.search(out), out
    # Ray names the process each forwarded line came from: the trainable, and the run folder (`run`)
    assert re.search(r"\(detector_search@run pid=\d+\).*\[search/s50-t\d\]", out), out


def test_the_trials_lines_are_in_the_ray_sessions_worker_logs(search_run):
    assert search_run.ray_logs, "no worker log files in the run's Ray session"
    logs = "\n".join(search_run.ray_logs.values())
    assert START.search(logs), sorted(search_run.ray_logs)
    assert EPOCH.search(logs), sorted(search_run.ray_logs)
