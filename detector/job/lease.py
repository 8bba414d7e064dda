"""One driver per run folder: a lease that a second driver cannot take while the first one lives.

Two drivers on one run folder would resume each other's Tune experiments and overwrite each other's
models and evaluations. So ``detector run`` takes the folder's lease first, and holds it to the end:

- ``RUN/.driver.lock``: an exclusive ``fcntl`` lock, held open by the driver. The kernel drops it when the
  process dies, however it dies (SIGKILL too); on a local disk, and on network file systems that honour
  POSIX locks (NFSv4), a second driver is refused by it alone.
- ``RUN/driver.json``: who holds the folder (host, pid, the process's start time, command) and a heartbeat
  the holder rewrites every ``HEARTBEAT_S`` seconds. It answers where locks do not reach (another host on a
  file system that ignores them): a lease whose heartbeat is fresh is held; one whose heartbeat is older
  than ``STALE_AFTER_S``, or whose process is gone from this host, is stale and is taken over, with a
  message that says whose it was.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detector.io import atomic_write_json

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0


class RunFolderBusy(ValueError):
    """Another driver holds the run folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start (wall clock), so a reused pid is not taken for the holder
    command: str
    token: str
    heartbeat: float

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"pid {self.pid} on {self.host} (`{self.command}`, last heartbeat {age:.0f} s ago)"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (Unix time), from /proc; None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks since boot
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _alive_here(holder: Holder) -> bool:
    """Whether the holder's process still runs on this host (the same process, not a reused pid)."""
    start = _process_start(holder.pid)
    if start is None:
        return False
    return abs(start - holder.started) < 2.0


def read_holder(path: Path) -> Holder | None:
    """The lease in ``RUN/driver.json``, or None when there is none (or it cannot be read as a lease)."""
    try:
        data = json.loads(path.read_text())
        return Holder(host=str(data["host"]), pid=int(data["pid"]), started=float(data["started"]),
                      command=str(data["command"]), token=str(data["token"]), heartbeat=float(data["heartbeat"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder_state(holder: Holder, *, now: float | None = None) -> str:
    """``live`` or ``stale``: what a lease says about its driver, seen from this host."""
    now = time.time() if now is None else now
    if holder.host == socket.gethostname():
        return "live" if _alive_here(holder) else "stale"
    return "live" if now - holder.heartbeat < STALE_AFTER_S else "stale"


def wait_while_silent(path: Path, holder: Holder, poll_s: float = 1.0) -> Holder | None:
    """Watch a lease held from another host until it shows its driver alive or gone.

    A fresh heartbeat from another host is what a live driver leaves, and also what a driver leaves whose host
    was lost a moment ago: KubeRay's retry of a RayJob, or Kueue re-admitting a preempted one, starts the next
    driver within seconds. A heartbeat that moves while watched is a live driver (refused at once); one that
    stays still until ``STALE_AFTER_S`` is a lost one, taken over. Returns the lease as last read (None: it was
    released meanwhile)."""
    wait = STALE_AFTER_S - (time.time() - holder.heartbeat)
    log.warning("%s: the lease is held by %s; waiting up to %.0f s for its heartbeat to move (a live driver) or to "
                "go stale (a lost host)", path.parent, holder.describe(), wait)
    current: Holder | None = holder
    while current is not None and holder_state(current) == "live":
        time.sleep(poll_s)
        current = read_holder(path)
        if current is not None and (current.token != holder.token or current.heartbeat != holder.heartbeat):
            return current
    return current


class DriverLease:
    """The run folder's lease, held by this process from ``acquire()`` to ``release()``.

    >>> with DriverLease(run.lease, run.lock):  # doctest: +SKIP
    ...     run_the_stages()
    """

    def __init__(self, path: Path, lock: Path) -> None:
        self.path, self.lock_path = Path(path), Path(lock)
        self._lock_file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder: Holder | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.lock_path, "a+")
        try:
            fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another process"
            raise RunFolderBusy(f"{self.path.parent}: another driver works on this run folder: {who}; "
                                "wait for it, or stop it first (Ctrl-C, or kill its pid)") from None
        previous = read_holder(self.path)
        if previous is not None:
            try:
                if holder_state(previous) == "live" and previous.host != socket.gethostname():
                    previous = wait_while_silent(self.path, previous)
                if previous is not None and holder_state(previous) == "live":
                    raise RunFolderBusy(f"{self.path.parent}: another driver works on this run folder: "
                                        f"{previous.describe()}; wait for it, or stop it first")
            except BaseException:
                lock_file.close()
                raise
        if previous is not None:
            log.warning("%s: taking over the lease of a driver that is gone: %s", self.path.parent,
                        previous.describe())
        self._lock_file = lock_file
        now = time.time()
        self.holder = Holder(host=socket.gethostname(), pid=os.getpid(), started=_process_start(os.getpid()) or now,
                             command=" ".join(["detector", *sys.argv[1:]])[:300], token=uuid.uuid4().hex,
                             heartbeat=now)
        atomic_write_json(self.path, asdict(self.holder))
        # Two hosts that both found a stale lease: the last writer wins, the other one sees it here.
        time.sleep(0.05)
        mine = read_holder(self.path)
        if mine is None or mine.token != self.holder.token:
            self._close()
            raise RunFolderBusy(f"{self.path.parent}: another driver took the lease at the same moment: "
                                f"{mine.describe() if mine else 'unknown'}")
        self._thread = threading.Thread(target=self._beat, name="detector-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            assert self.holder is not None
            current = read_holder(self.path)
            if current is not None and current.token != self.holder.token:
                log.error("%s: the lease was taken by %s; this driver no longer owns the run folder",
                          self.path.parent, current.describe())
                return
            self.holder = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
            try:
                atomic_write_json(self.path, asdict(self.holder))
            except OSError as e:  # a full or briefly unreachable volume: try again next beat
                log.warning("%s: could not renew the lease: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_holder(self.path)
        if current is not None and self.holder is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the fcntl lock
            self._lock_file = None

    def __enter__(self) -> "DriverLease":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
