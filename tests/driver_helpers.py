"""A real `detector` command line in its own process group with its own Ray temp dir, and a run stopped
with SIGTERM during its search (as `kill` or `ray job stop` stop it), for the tests of what happens to a run
folder between runs: copied, moved, damaged."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detector.job.runfolder import RunFolder
from detector.job.status import read_status
from process_helpers import end_processes_with


class Driver:
    """``detector ARGS`` as a terminal would start it; its embedded Ray lives under a temp dir of its own, so
    that whatever Ray left behind is found and ended by that marker alone."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths live under it
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "detector.cli", *args],
                                         env={**os.environ, "RAY_TMPDIR": self.ray_tmp}, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._reap()

    def _reap(self) -> None:
        """Once the driver has exited, wait for its Ray to shut down; end what is left (by pid) and say so."""
        left = end_processes_with(self.ray_tmp)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        assert not left, f"the driver left {len(left)} Ray processes running"

    def signal_group(self, sig: int) -> None:
        """What Ctrl-C in a terminal does: the signal goes to the driver and every process it started."""
        os.killpg(self.proc.pid, sig)


def stop_during_search(config: Path, run_dir: Path, log: Path, *, timeout: float = 300) -> list[dict]:
    """Run the search of ``config`` into ``run_dir`` and stop it with SIGTERM once a trial has trained an
    epoch and is still running: the run is left resumable. The search's trials as the stopped run left them."""
    driver = Driver(["run", "--config", str(config), "--out", str(run_dir), "--stages", "search"], log)
    deadline = time.monotonic() + timeout
    while True:
        assert driver.proc.poll() is None, f"the driver ended early:\n{driver.output()[-3000:]}"
        assert time.monotonic() < deadline, f"no search trial trained an epoch in {timeout} s"
        trials = read_status(RunFolder(run_dir))["trial_stages"].get("search", {}).get("trials", [])
        if any(t["epochs"] >= 1 and t["state"] == "running" for t in trials):
            break
        time.sleep(0.3)
    driver.proc.send_signal(signal.SIGTERM)
    assert driver.wait() == 128 + signal.SIGTERM, driver.output()[-3000:]
    status = read_status(RunFolder(run_dir))
    assert status["state"] == "stopped"
    return status["trial_stages"]["search"]["trials"]


def resume_search(run_dir: Path, log: Path) -> Driver:
    """``detector run --resume --out RUN --stages search``, run to its end."""
    driver = Driver(["run", "--resume", "--out", str(run_dir), "--stages", "search"], log)
    driver.wait(timeout=400)
    return driver


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (and link) under ``root``: relative path -> sha256 of its bytes (a link: its target)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = ("-> " + os.readlink(path) if path.is_symlink()
                        else hashlib.sha256(path.read_bytes()).hexdigest())
    return out
