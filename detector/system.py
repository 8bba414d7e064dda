"""What this process may use of the machine: in a container, the host's core count is not the answer."""

from __future__ import annotations

import math
import os
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
