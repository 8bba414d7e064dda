"""Processes and sockets of this machine, read from /proc (Linux): which processes a command started, and
what they listen on."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from pathlib import Path

from detector.system import process_start


def parent_ids() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            parents[int(entry)] = int(raw[raw.rindex(")") + 2:].split()[1])
    return parents


def children(pid: int) -> dict[int, str]:
    """pid -> start time of the live children of ``pid`` (the start tells a reused pid apart)."""
    return {child: start for child, parent in parent_ids().items()
            if parent == pid and (start := process_start(child))}


def process_tree(root: int) -> set[int]:
    """``root`` and every live descendant of it."""
    parents = parent_ids()
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owner[int(target[8:-1])] = pid
        except OSError:  # a process that ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word of the address in host (little-endian) order
            ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            found.append((str(ip), int(hex_port, 16), owner[inode]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def processes_with(marker: str) -> list[int]:
    """The processes whose command line holds ``marker`` (a Ray temp dir of a test's own: its Ray's)."""
    pids = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                if marker in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(pid_dir.name))
            except OSError:
                pass
    return pids


def end_processes_with(marker: str, timeout: float = 20) -> list[int]:
    """Wait up to ``timeout`` for the processes with ``marker`` to end (Ray's own shutdown ends them shortly
    after its driver), then SIGKILL those left; returns the pids that were left."""
    deadline = time.monotonic() + timeout
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_with(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
