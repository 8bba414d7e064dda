"""Damaged state in a run folder: named when it is read, never written to, and the one repair that is safe.

A run folder's state is JSON (``RUN/status/*.json``, results, model summaries, the searcher's state), YAML
(``experiment.yaml``) and the Optuna journal. Each is read here or through ``read_state_json``, and a file
that does not parse stops the command with one line: which file, what is wrong with it, what to do.

The journal is an append-only log of JSON records, one a line. A driver killed mid-write, or a full disk,
leaves its last line cut; Optuna's file backend then fails on the next load, after it has opened the file
for appending, and every later record would be glued onto the cut one. So a journal is checked whole before
it is opened (``check_journal``), and ``detector repair RUN`` (``repair_journal``) cuts it back to its last
complete record, keeping the damaged file beside it: the records dropped were the searches' last events
(a trial asked for, a result told), and the resumed search asks or fails those trials again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.job.runfolder import RunFolder


class DamagedState(ValueError):
    """A state file of a run folder that cannot be read as what it should be."""


def read_state_json(path: Path, *, fix: str) -> Any:
    """The JSON document in ``path``; ``FileNotFoundError`` when it is missing, ``DamagedState`` naming the
    file, the fault and ``fix`` (what to do) when it does not parse."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise DamagedState(f"{path}: damaged, not text ({e.reason} at byte {e.start}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DamagedState(f"{path}: damaged, not valid JSON ({e}); {fix}") from None


@dataclass(frozen=True)
class JournalScan:
    """A journal read line by line: how many complete records lead it, where they end, and the first fault."""

    records: int  # complete records before the first fault (all of them when there is none)
    good_bytes: int  # the length of those records, newlines included
    size: int  # the file's length
    fault: str | None  # what is wrong at the first bad line, or None

    @property
    def dropped_bytes(self) -> int:
        return self.size - self.good_bytes


def scan_journal(path: Path) -> JournalScan:
    """Read the Optuna journal ``path`` (JSON records, one a line, each ending in a newline) up to its first
    line that is not a complete record."""
    data = path.read_bytes()
    records = good = 0
    while good < len(data):
        end = data.find(b"\n", good)
        line = data[good:] if end < 0 else data[good:end]
        fault = _record_fault(line)
        if fault is None and end < 0:
            fault = "its last record has no newline (cut while it was written)"
        if fault is not None:
            return JournalScan(records, good, len(data), f"record {records + 1} (byte {good}): {fault}")
        records += 1
        good = end + 1
    return JournalScan(records, good, len(data), None)


def _record_fault(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError as e:  # UnicodeDecodeError is one
        return f"not a JSON record ({e})"
    if not isinstance(record, dict) or "op_code" not in record:
        return "not an Optuna journal record (no op_code)"
    return None


def check_journal(path: Path) -> None:
    """Refuse a damaged journal before anything opens it for appending (a missing one is a new search)."""
    if not path.exists():
        return
    scan = scan_journal(path)
    if scan.fault is not None:
        raise DamagedState(
            f"{path}: the Optuna journal is damaged at {scan.fault}; nothing was written to it. "
            f"`detector repair {_run_of(path)}` cuts it back to its {scan.records} complete records "
            "(keeping a copy), then resume")


def _run_of(journal: Path) -> str:
    """The run folder whose default journal ``journal`` is (``RUN`` where it is another file)."""
    if RunFolder(journal.parent.parent).optuna_journal == journal:
        return str(journal.parent.parent)
    return f"RUN --journal {journal}"


@dataclass(frozen=True)
class JournalRepair:
    journal: Path
    kept: int  # complete records kept
    dropped_bytes: int
    backup: Path | None  # the damaged file as it was; None when nothing needed repair

    def describe(self) -> str:
        if self.backup is None:
            return f"{self.journal}: {self.kept} complete records, nothing to repair"
        return (f"{self.journal}: kept its {self.kept} complete records, dropped the {self.dropped_bytes} bytes "
                f"after them (the damaged file is kept as {self.backup}); the searches ask or fail the trials "
                "those records were about again when the run resumes")


def repair_journal(journal: Path) -> JournalRepair:
    """Cut ``journal`` back to its last complete record, after copying it whole to
    ``<journal>.damaged-<UTC time>`` beside it."""
    if not journal.is_file():
        raise FileNotFoundError(f"{journal}: no Optuna journal there")
    scan = scan_journal(journal)
    if scan.fault is None:
        return JournalRepair(journal, scan.records, 0, None)
    backup = journal.with_name(f"{journal.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    shutil.copy2(journal, backup)
    with open(journal, "r+b") as f:
        f.truncate(scan.good_bytes)
    return JournalRepair(journal, scan.records, scan.dropped_bytes, backup)


def repair_run(run: RunFolder, journal: Path | None = None) -> list[str]:
    """What ``detector repair RUN`` does: repair the run's Optuna journal (``journal``: a journal the config's
    search.storage names instead); one line per thing looked at, saying what was done."""
    if not run.root.is_dir():
        raise FileNotFoundError(f"{run.root}: no such run folder")
    target = journal or run.optuna_journal
    if not target.exists():
        return [f"{target}: no Optuna journal (the run has not searched, or keeps its studies elsewhere)"]
    return [repair_journal(target).describe()]
