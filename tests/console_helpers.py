"""A `detector` command line run as a user runs it (a subprocess, its own embedded Ray in a temp dir of its
own), and what it left: its console output, and its Ray session's log files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from detector.config import save_yaml
from pipeline_helpers import make_tiny_data, tiny_experiment
from process_helpers import end_processes_with


@dataclass(frozen=True)
class Console:
    returncode: int
    output: str  # stdout and stderr as one stream, as a terminal or `ray job logs` shows them
    ray_logs: dict[str, str]  # the run's own Ray session: logs/worker-*.out|err, by file name


def tiny_search_config(root: Path) -> Path:
    """The tiny experiment with one sparsity of one trial: a baseline, a search, a fine-tune, each a trial."""
    config = root / "tiny.yaml"
    save_yaml(tiny_experiment(make_tiny_data(root / "data"), control=False,
                              search={"sparsities": [0.5], "trials_per_sparsity": 1}), config)
    return config


def run_detector(*args: str, cwd: Path, timeout: float = 540) -> Console:
    """``detector ARGS`` with an embedded Ray under a fresh temp dir; every process of that Ray is gone
    after it (they are found by their temp dir: nothing else is touched)."""
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        done = subprocess.run([sys.executable, "-m", "detector.cli", *args], cwd=cwd, timeout=timeout,
                              env={**os.environ, "RAY_TMPDIR": ray_tmp}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        end_processes_with(ray_tmp, timeout=30)
        logs = {p.name: p.read_text(errors="replace")
                for p in Path(ray_tmp).glob("ray/session_*/logs/worker-*") if p.suffix in (".out", ".err")}
        return Console(done.returncode, done.stdout, logs)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
