"""What a killed process used to leave behind: a trial's scratch folder (150-200 MB each) after its worker
was SIGKILLed, and `detector prepare`'s pool workers alive after `kill -9` of prepare, re-parented to init."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from process_helpers import children

from detector.job.scratch import OWNER_FILE, make_scratch
from detector.system import process_start
from detector.trial_dir import TrialDir

# A stand-in for a trial's worker: makes its scratch folder as a trial does, says where, then works on.
_TRIAL = ("import sys, time; from detector.job.scratch import make_scratch; "
          "print(make_scratch(sys.argv[1], sys.argv[2]), flush=True); time.sleep(600)")


def start_trial(trial_id: str, folder: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _TRIAL, trial_id, str(folder)], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_trials_scratch_is_removed_at_the_next_start_and_a_live_trials_is_not(tmp_path):
    killed, killed_dir = start_trial("a1b2c_00001", tmp_path)
    live, live_dir = start_trial("a1b2c_00002", tmp_path)
    try:
        state = TrialDir(killed_dir).state  # what the trial's training loop had written
        state.parent.mkdir()
        state.write_bytes(b"\0" * 4096)
        not_ours = tmp_path / "detector-cache"  # someone else's folder with a name like ours
        not_ours.mkdir()
        killed.send_signal(signal.SIGKILL)
        killed.wait()

        mine = make_scratch("a1b2c_00003", tmp_path)  # the next trial starts on this node

        assert not killed_dir.exists()
        assert live_dir.is_dir() and (live_dir / OWNER_FILE).is_file()
        assert not_ours.is_dir() and mine.is_dir()
    finally:
        live.kill()
        live.wait()


def test_killing_prepare_mid_import_leaves_no_worker_alive(tmp_path):
    out = tmp_path / "data"
    prepare = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "prepare", "--out", str(out), "--demo", "--demo-counts", "40000,0,0",
         "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, str] = {}
        # mid-import: both pool workers started and the first shard being written
        while len(workers) < 2 or not list((out / "shards" / "train").glob(".*.tmp")):
            assert prepare.poll() is None and time.monotonic() < deadline, "prepare ended before it was killed"
            workers = {pid: start for pid, start in children(prepare.pid).items()
                       if "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()}
            time.sleep(0.2)
    finally:
        os.kill(prepare.pid, signal.SIGKILL)
        prepare.wait()
    deadline = time.monotonic() + 30
    while alive := [pid for pid, start in workers.items() if process_start(pid) == start]:
        if time.monotonic() > deadline:
            for pid in alive:  # do not leave them to the next test either
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"pool workers {alive} of the killed prepare are still alive")
        time.sleep(0.2)
    assert not (out / "manifest.json").exists()


_REMOVER = "import sys; from detector.job.scratch import remove_scratch; remove_scratch(sys.argv[1])"


def test_a_scratch_removal_cut_short_leaves_the_owner_record_for_the_next_trial(tmp_path):
    """A stopped job's trial is killed while it removes its scratch folder: the folder still names its owner,
    so the next trial on the node removes the rest (removed in any order, the record was often gone)."""
    trial, scratch = start_trial("a1b2c_00001", tmp_path)
    files = 4000  # what the training loop had written: removing it takes a while
    for i in range(files):
        (scratch / f"state-{i}").write_bytes(b"")
    remover = subprocess.Popen([sys.executable, "-c", _REMOVER, str(scratch)])
    deadline = time.monotonic() + 120
    while scratch.exists() and len(os.listdir(scratch)) > files // 10:  # killed once most of it is gone
        assert time.monotonic() < deadline and remover.poll() is None
    remover.send_signal(signal.SIGKILL)
    remover.wait()
    trial.kill()
    trial.wait()
    assert not scratch.exists() or (scratch / OWNER_FILE).is_file(), f"{len(os.listdir(scratch))} left, no record"

    make_scratch("a1b2c_00002", tmp_path)  # the next trial starts on this node
    assert not scratch.exists()
