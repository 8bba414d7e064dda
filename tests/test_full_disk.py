"""A full disk is one clear failure: a run folder on a small tmpfs fills up, and the run ends with one error
line that names what was being written, a status that says failed with that reason, and no cut-short file
left looking like a checkpoint. The tmpfs is real (mounting needs root; CI runs as root)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import torch

from detector.checkpoint import is_whole, load_checkpoint, save_checkpoint
from detector.config import save_yaml
from detector.io import NoSpaceError, atomic_open
from detector.job.runfolder import RunFolder
from detector.job.status import RunState, read_status
from detector.model import build_model
from pipeline_helpers import make_tiny_data, tiny_experiment


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 12 MiB tmpfs at tmp_path/disk: a resnet18 checkpoint (45 MiB) cannot fit, the run's JSON can."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs that fills up needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_atomic_open_leaves_no_temporary_file_when_the_disk_fills(small_disk):
    target = small_disk / "big.bin"
    with pytest.raises(NoSpaceError) as caught:
        with atomic_open(target) as f:
            f.write(os.urandom(16 << 20))  # more than the whole disk
    assert list(small_disk.iterdir()) == []
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {target} (")
    assert f"free of 12 MiB on {small_disk}" in message


def test_a_checkpoint_that_does_not_fit_is_not_left_behind_cut_short(small_disk):
    # torch.save hides the OSError behind a RuntimeError of its own ("unexpected pos"): still a NoSpaceError.
    with pytest.raises(NoSpaceError):
        save_checkpoint(small_disk / "state.pt", build_model("resnet18", seed=0), metadata={"arch": "resnet18",
                                                                                            "image_size": 32})
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("verbose", [False, True])
def test_any_command_that_fills_the_disk_says_so_in_one_line(small_disk, tmp_path, verbose):
    model = tmp_path / "baseline.pt"
    save_checkpoint(model, build_model("resnet18", seed=0), metadata={"arch": "resnet18", "image_size": 32})
    out = small_disk / "pruned.pt"
    result = subprocess.run([sys.executable, "-m", "detector.cli", *(["-v"] if verbose else []), "prune",
                             "--checkpoint", str(model), "--sparsity", "0.5", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    line = result.stderr.rstrip().splitlines()[-1]
    assert line.startswith(f"detector prune: error: no space left on device writing {out} (")
    assert ("Traceback" in result.stderr) == verbose  # -v: the traceback too
    assert list(small_disk.iterdir()) == []


def test_the_record_of_a_runs_end_is_written_on_a_full_disk(small_disk):
    folder = RunFolder(small_disk / "run")
    state = RunState(folder, ["prepare", "baseline"])
    state.stage("baseline", "running")
    with pytest.raises(OSError) as full, open(small_disk / "filler", "wb") as f:
        while True:
            f.write(os.urandom(1 << 20))
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(NoSpaceError):
        state.note("this write finds no space")  # the run fails here ...
    state.end("failed", "no space left")  # ... and its end is recorded all the same
    status = read_status(folder)
    assert status["state"] == "failed" and status["message"] == "no space left"
    assert status["stages"]["baseline"] == "failed"
    assert sorted(p.name for p in (small_disk / "run" / "status").iterdir()) == ["run.json"]


def test_is_whole_tells_a_cut_checkpoint_from_a_whole_one(tmp_path):
    whole = tmp_path / "whole.pt"
    save_checkpoint(whole, torch.nn.Linear(4, 1), metadata={"arch": "resnet18", "image_size": 32})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:-100])
    assert is_whole(whole) and load_checkpoint(whole)
    assert not is_whole(cut)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_a_full_disk_fails_with_one_line_and_says_so_in_its_status(small_disk, tmp_path):
    data = make_tiny_data(tmp_path / "shards")  # on the ordinary disk: only the run folder fills up
    config = tmp_path / "tiny.yaml"
    save_yaml(tiny_experiment(data, control=False), config)
    run_dir = small_disk / "run"
    ray_tmp = tempfile.mkdtemp(prefix="fd", dir="/tmp")  # short: Ray's socket paths live under it
    result = subprocess.run(
        [sys.executable, "-m", "detector.cli", "run", "--config", str(config), "--out", str(run_dir),
         "--stages", "prepare,baseline"],
        env={**os.environ, "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True, timeout=540)

    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"detector run: error: no space left on device writing {small_disk}/")
    assert f"free space on {small_disk}, then `detector run --resume --out {run_dir}`" in errors[0]
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]  # the run ends with it
    # The driver's failure is that line alone: no chained tracebacks (Tune still logs the trial's error).
    assert "During handling of the above exception" not in result.stderr

    status = read_status(RunFolder(run_dir))
    assert status["state"] == "failed" and status["stages"]["baseline"] == "failed"
    assert status["message"].startswith("no space left on device writing ")
    shown = subprocess.run([sys.executable, "-m", "detector.cli", "status", str(run_dir)],
                           capture_output=True, text=True, timeout=60)
    assert "no space left on device" in shown.stdout
    assert [p for p in run_dir.rglob("*.pt") if not is_whole(p)] == []
    assert not any(p.name.endswith(".tmp") for p in run_dir.rglob("*"))
