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
    try:
        text = (root / "cpu.max").read_text().split()  # v2: "<quota> <period>" or "max <period>"
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 when unlimited
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
