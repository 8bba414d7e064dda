"""Node-local scratch folders of trials (``/tmp/detector-<trial>-*``): each records its owner process, and
the next trial that starts on a node removes those whose owner is gone.

A trial's scratch folder holds the training loop's per-epoch state (150-200 MB for a ResNet-50 trial). The
trial removes it when it ends; a worker killed with SIGKILL (out of memory, a lost node, ``kill -9``)
cannot, and its folder would stay until the node's /tmp is wiped. Ray-free, so it is tested with plain
processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from detector.io import atomic_write_json
from detector.system import process_start

log = logging.getLogger(__name__)

PREFIX = "detector-"
OWNER_FILE = "owner.json"
_NAME = re.compile(rf"{PREFIX}[A-Za-z0-9_.-]+-[A-Za-z0-9_]+")  # detector-<trial id>-<mkdtemp's random part>


def make_scratch(trial_id: str, folder: str | Path | None = None) -> Path:
    """A new scratch folder for ``trial_id`` under ``folder`` (default: the system's temp folder), after
    removing the stale ones there."""
    remove_stale_scratch(folder)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{trial_id}-", dir=folder))
    atomic_write_json(path / OWNER_FILE, {"trial": trial_id, "pid": os.getpid(), "start": process_start(os.getpid())})
    return path


def remove_scratch(path: str | Path) -> None:
    """Remove the scratch folder ``path``, its owner record last: a removal cut short (the trial's worker
    killed during it, as a stopped job's are) leaves a folder that still names its owner, which the next trial
    on the node removes; without the record it would stay until the node's /tmp is wiped."""
    path = Path(path)
    with contextlib.suppress(OSError):  # what cannot be removed stays, as with shutil.rmtree(ignore_errors=True)
        for entry in [entry for entry in path.iterdir() if entry.name != OWNER_FILE]:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if any(entry.name != OWNER_FILE for entry in path.iterdir()):
            return  # something is still writing here: the record stays, for the stale-folder sweep
        (path / OWNER_FILE).unlink(missing_ok=True)
        path.rmdir()


def remove_stale_scratch(folder: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``folder`` whose owner process is gone; returns them.

    Only folders of this user, named like ours and holding an owner record, are candidates; one whose
    owner runs (the same pid *and* start time: a reused pid does not count) is another live trial's and
    is left alone, and so is one without a record (not ours, or made this very moment).
    """
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            owner = json.loads((Path(entry.path) / OWNER_FILE).read_text())
            pid, start = int(owner["pid"]), owner["start"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if process_start(pid) == start:
            continue
        remove_scratch(entry.path)
        log.info("removed %s, left by trial %s (process %d is gone)", entry.path, owner.get("trial"), pid)
        removed.append(Path(entry.path))
    return removed
