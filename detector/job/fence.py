"""Fencing a trial's attempts: only the newest attempt of a trial writes into the run folder.

A node cut off from the cluster is not dead: its trial process runs on. Ray marks the node dead about a minute
later and Tune restarts the trial elsewhere from its last checkpoint, while the old attempt may still be
finishing the epoch it was in and storing it, into the same trial folder on the shared volume. So:

- each attempt registers itself as it starts (``ATTEMPT_FILE`` in its Tune trial folder: a new id, its host
  and process), which makes every earlier attempt stale;
- it then removes the checkpoints of the trial folder that are newer than the one it starts from: Tune never
  learnt of them, they were stored by an attempt that was cut off (keeping them would let a stale file
  survive inside the new attempt's checkpoint of the same number);
- before each of its writes (an epoch's report and checkpoint, the final model), an attempt checks that it is
  still the newest (``check``); a stale one stops there (``StaleAttempt``) and writes nothing more.

Ray-free, so it is tested with plain processes; ``detector.job.tune.trainables`` uses it in every trial.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from detector.io import atomic_write_json

log = logging.getLogger(__name__)

ATTEMPT_FILE = "attempt.json"
_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


class StaleAttempt(RuntimeError):
    """A newer attempt of this trial runs elsewhere: this one must not write again."""


@dataclass(frozen=True)
class Attempt:
    trial_dir: str
    id: str
    host: str
    pid: int
    started: float

    @property
    def record(self) -> Path:
        return Path(self.trial_dir) / ATTEMPT_FILE

    def check(self) -> None:
        """Raise ``StaleAttempt`` unless this is still the trial's newest attempt."""
        newest = read_attempt(Path(self.trial_dir))
        if newest is not None and newest.id != self.id:
            raise StaleAttempt(f"{self.trial_dir}: a newer attempt of this trial started at "
                               f"{time.strftime('%H:%M:%S', time.localtime(newest.started))} on {newest.host} "
                               f"(pid {newest.pid}); this attempt (pid {self.pid} on {self.host}) stops without "
                               "writing")


def read_attempt(trial_dir: Path) -> Attempt | None:
    """The trial's newest attempt, or None before the first one (or when its record cannot be read)."""
    try:
        raw = json.loads((trial_dir / ATTEMPT_FILE).read_text())
        return Attempt(trial_dir=str(trial_dir), id=str(raw["id"]), host=str(raw["host"]), pid=int(raw["pid"]),
                       started=float(raw["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_index(path: Path) -> int | None:
    match = _CHECKPOINT.fullmatch(path.name)
    return int(match.group(1)) if match else None


def begin_attempt(trial_dir: Path, restored: Path | None) -> Attempt:
    """Register a new attempt of the trial whose Tune folder is ``trial_dir``, starting from the checkpoint
    ``restored`` (a ``checkpoint_N`` folder in it, or None for a fresh start); remove the checkpoints an
    earlier attempt stored after that one."""
    trial_dir = Path(trial_dir)
    previous = read_attempt(trial_dir)
    attempt = Attempt(trial_dir=str(trial_dir), id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                      started=time.time())
    trial_dir.mkdir(parents=True, exist_ok=True)
    record = asdict(attempt)
    record.pop("trial_dir")
    atomic_write_json(attempt.record, record)
    if previous is not None:
        log.info("%s: attempt on %s (pid %d) starts; the attempt on %s (pid %d) is fenced off", trial_dir.name,
                 attempt.host, attempt.pid, previous.host, previous.pid)
    start = checkpoint_index(restored) if restored is not None else None
    for path in sorted(trial_dir.iterdir()):
        index = checkpoint_index(path)
        if index is not None and path.is_dir() and (start is None or index > start):
            shutil.rmtree(path, ignore_errors=True)
            log.warning("%s: removed %s, stored by an earlier attempt after the checkpoint this one starts from",
                        trial_dir.name, path.name)
    return attempt
