"""What this process may use of the machine (in a container, the host's core count is not the answer),
and how its helper processes are tied to it."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process can keep busy: its affinity mask, capped by a cgroup CPU quota.

    A Kubernetes pod limited to 2 CPUs on a 64-core node sees 64 cores in ``os.cpu_count()`` and in its
    affinity mask; only the CFS quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) says 2. Sizing a
    process pool by the host count there starts 64 workers in a pod with memory for a few.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    v2 = _read(root / "cpu.max")  # "<quota> <period>", or "max <period>" when unlimited
    if v2:
        parts = v2.split()
        ok = len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0
        return int(parts[0]) / int(parts[1]) if ok else None
    try:  # v1: the quota is -1 when unlimited; a missing file reads "", a ValueError
        q, p = int(_read(root / "cpu" / "cpu.cfs_quota_us")), int(_read(root / "cpu" / "cpu.cfs_period_us"))
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    """The file's text, or "" when it cannot be read (no cgroup file system, another cgroup version)."""
    try:
        return path.read_text()
    except OSError:
        return ""


# --- processes -------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Make this process end when its parent does, even by SIGKILL (a process pool's initializer).

    A pool worker otherwise outlives a ``kill -9`` of ``detector prepare``, re-parented to init, still
    holding memory and a CPU. On Linux the kernel sends SIGKILL when the parent dies
    (``PR_SET_PDEATHSIG``); elsewhere a thread polls the parent id. Pools must be started from the main
    thread: the kernel's "parent" is the thread that forked, and Python's pools fork from the thread
    that submits.
    """
    import multiprocessing

    # the pid the parent had: if it died while this process was starting, getppid() is already init's
    known = multiprocessing.parent_process()
    parent = known.pid if known is not None and known.pid is not None else os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def process_start(pid: int) -> str | None:
    """What tells the live process ``pid`` from a later one with the same id (its start time since boot,
    on Linux; "" where that cannot be read), or None when no such process runs."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): only whether some process has that id
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the name (field 2) may hold spaces and ')'
    if fields[0] in ("Z", "X"):  # a zombie is a dead process
        return None
    return fields[19]  # field 22: start time in clock ticks after boot
