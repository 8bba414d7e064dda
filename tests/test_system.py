"""How many CPUs the import pools may use: the cgroup quota a container runs under, not the host's cores."""

from __future__ import annotations

import os

import pytest

from detector.system import usable_cpus

HOST = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, min(HOST, 2)),  # cgroup v2: a pod limited to 2 CPUs
    ({"cpu.max": "150000 100000\n"}, min(HOST, 2)),  # 1.5 CPUs: two processes keep it busy
    ({"cpu.max": "max 100000\n"}, HOST),  # no limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1, 1 CPU
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, HOST),  # v1, no limit
    ({}, HOST),  # no cgroup files at all (macOS, or not mounted)
    ({"cpu.max": "garbage"}, HOST),
])
def test_the_quota_caps_the_cpus(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == expected
