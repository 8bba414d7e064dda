"""A run folder's lease held from another host (detector.job.lease): a driver there that still beats is
refused at once; one whose host was lost (its heartbeat stands still) is taken over once stale, so that the
driver KubeRay's retry starts on a new head finishes the run. tests/test_multi_host.py loses a real head."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict

import pytest

from detector.io import atomic_write_json
from detector.job import lease
from detector.job.lease import DriverLease, Holder, RunFolderBusy, read_holder


def other_host_holder(heartbeat: float) -> Holder:
    return Holder(host="detector-head-7f9c2", pid=77, started=heartbeat - 100, command="detector run --out /runs/a",
                  token="theirs", heartbeat=heartbeat)


@pytest.fixture
def quick_staleness(monkeypatch):
    monkeypatch.setattr(lease, "STALE_AFTER_S", 3.0)


def test_a_lease_whose_heartbeat_moves_is_refused(tmp_path, quick_staleness):
    path = tmp_path / "driver.json"
    atomic_write_json(path, asdict(other_host_holder(time.time())))
    stop = threading.Event()

    def beat():  # the other host's driver, alive
        while not stop.wait(0.3):
            atomic_write_json(path, asdict(other_host_holder(time.time())))

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RunFolderBusy, match="another driver works on this run folder: pid 77 on detector-head"):
            DriverLease(path, tmp_path / ".driver.lock").acquire()
        assert time.monotonic() - t0 < lease.STALE_AFTER_S
    finally:
        stop.set()
        beating.join()


def test_a_silent_lease_from_another_host_is_taken_over_once_stale(tmp_path, quick_staleness, caplog):
    path = tmp_path / "driver.json"
    atomic_write_json(path, asdict(other_host_holder(time.time())))
    caplog.set_level(logging.WARNING, logger="detector.job.lease")
    t0 = time.monotonic()
    with DriverLease(path, tmp_path / ".driver.lock") as mine:
        took = time.monotonic() - t0
        assert read_holder(path).token == mine.holder.token
    assert 2.0 < took < lease.STALE_AFTER_S + 5
    assert "waiting up to 3 s for its heartbeat to move" in caplog.text
    assert "taking over the lease of a driver that is gone: pid 77 on detector-head-7f9c2" in caplog.text
