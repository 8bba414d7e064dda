"""The run's live state as plain data: what the driver writes while it works, and what ``detector status``
reads. JSON only: reading a run folder never unpickles anything, so a teammate's ``detector status RUN``
cannot run code planted in it.

- ``RUN/status/run.json`` (the driver, at every change): ``{"state": running|stopped|failed|finished,
  "stage", "stages": {stage: pending|running|done|reused|stopped|failed}, "message", "started", "updated"}``.
- ``RUN/status/<stage>.json`` (the Ray module, while a Tune stage runs): one row per trial, ``TRIAL_FIELDS``.
- ``RUN/status/.reserve``: 1 MiB of the disk held while a driver works, released to make room for the record of
  its end when the disk is full (``RunState.end``).
- ``RUN/driver.json``: the driver's lease (``detector.job.lease``), whose heartbeat tells a live run from a
  driver that died without a word (SIGKILL, a lost head node).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from detector.io import atomic_write_bytes, atomic_write_json, no_space
from detector.job.lease import holder_state, read_holder
from detector.job.runfolder import RunFolder

# Far more than a run.json (a few KiB) needs, in whole blocks of any file system.
RESERVE_BYTES = 1 << 20
STAGE_STATES = ("pending", "running", "done", "reused", "stopped", "failed")
TRIAL_STATES = ("pending", "running", "done", "failed", "error", "stopped")
# A trial row in RUN/status/<stage>.json. `val_accuracy` is the last reported epoch's (what the search's
# objective and the report use); `best_val_accuracy` the best epoch's so far (what early stopping keeps);
# `objective` the value the search judges the trial by (search.metric at the epoch search.objective names).
TRIAL_FIELDS = ("trial_id", "name", "trial", "sparsity", "params", "state", "epochs", "epochs_planned",
                "val_accuracy", "best_val_accuracy", "objective", "restarts", "reason", "started", "updated",
                "objectives")  # objectives: a Pareto search's, per trial


def _read(path: Path) -> dict[str, Any] | None:
    """The record in ``path``, None where there is none yet; a damaged one is named (``DamagedState``)."""
    from detector.job.repair import DamagedState, read_state_json

    fix = "it is the driver's record of the run: delete it, and the next `detector run --resume` writes it anew"
    try:
        data = read_state_json(path, fix=fix)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise DamagedState(f"{path}: damaged, not a JSON object; {fix}")
    return data


class RunState:
    """The driver's record of the run (``RUN/status/run.json``), rewritten atomically at every change.

    The record of the run's end must be written even when the disk is full, the failure it most often
    records. So while the run works it holds a reserve, a file of real (random, incompressible) bytes beside
    the record; an end that finds no space deletes the reserve and writes again into the space it freed. A
    reserve rather than an in-place overwrite of run.json: the record stays atomic, a reader never sees half
    of it. (On a file system whose deletes free nothing, a snapshot's or a copy-on-write one's, the second
    try fails too, and ``detector status`` then says the driver is gone.)
    """

    def __init__(self, run: RunFolder, stages: Iterable[str]) -> None:
        self.path = run.run_status
        self.reserve = self.path.with_name(".reserve")
        if not self.reserve.is_file() or self.reserve.stat().st_size < RESERVE_BYTES:
            atomic_write_bytes(self.reserve, os.urandom(RESERVE_BYTES))
        previous = _read(self.path) or {}
        now = time.time()
        self.data: dict[str, Any] = {
            "state": "running",
            "stage": None,
            "stages": {s: "pending" for s in stages},
            "message": None,
            "started": now,
            "updated": now,
            "runs": int(previous.get("runs", 0)) + 1,  # how many drivers have worked on this folder
        }
        self._write()

    def _write(self) -> None:
        self.data["updated"] = time.time()
        atomic_write_json(self.path, self.data)

    def stage(self, name: str, state: str) -> None:
        if state not in STAGE_STATES:
            raise ValueError(f"stage state {state!r} is not one of {STAGE_STATES}")
        self.data["stages"][name] = state
        if state == "running":
            self.data["stage"] = name
        self._write()

    def note(self, text: str) -> None:
        """What the running stage is doing now (e.g. a frontier search's round), shown by ``detector status``."""
        self.data["note"] = text
        self._write()

    def end(self, state: str, message: str | None = None) -> None:
        self.data["state"] = state
        self.data["message"] = message
        stage = self.data.get("stage")
        if stage and self.data["stages"].get(stage) == "running" and state in ("stopped", "failed"):
            self.data["stages"][stage] = state
        try:
            self._write()
        except OSError as e:
            if no_space(e) is None:
                raise
            self.reserve.unlink(missing_ok=True)  # its blocks are the room this write needs
            self._write()
        self.reserve.unlink(missing_ok=True)  # a finished run folder keeps nothing it does not need


def write_trials(run: RunFolder, stage: str, rows: list[dict[str, Any]], **info: Any) -> None:
    """The trial table of a Tune stage (the Ray module's live-status callback calls this)."""
    unknown = {k for row in rows for k in row} - set(TRIAL_FIELDS)
    if unknown:
        raise ValueError(f"trial rows carry unknown field(s) {sorted(unknown)}")
    atomic_write_json(run.stage_status(stage), {"stage": stage, **info, "updated": time.time(), "trials": rows})


def read_status(run: RunFolder) -> dict[str, Any]:
    """Everything ``detector status`` shows: the run's state seen from now, and every stage's trials.

    A run whose record says ``running`` but whose driver's lease is stale (the driver was killed, or its node
    lost) is reported as ``stopped`` with that reason; its running trials as ``stopped`` too.
    """
    record = _read(run.run_status)
    holder = read_holder(run.lease)
    live = holder is not None and holder_state(holder) == "live"
    if record is None:
        state = "running" if live else "not started"
        record = {"state": state, "stage": None, "stages": {}, "message": None}
    elif record.get("state") == "running" and not live:
        who = f" ({holder.describe()})" if holder else ""
        record = {**record, "state": "stopped",
                  "message": f"the driver is gone without a word{who}; `detector run --resume --out RUN` continues"}
    stages = {}
    for stage in run.stage_statuses():
        table = _read(run.stage_status(stage))
        if table is None:
            continue
        rows = [dict(r) for r in table.get("trials", []) if isinstance(r, dict)]
        if record["state"] != "running":
            for r in rows:
                if r.get("state") in ("running", "pending"):
                    r["state"] = "stopped"
        stages[stage] = {**{k: v for k, v in table.items() if k != "trials"}, "trials": rows}
    return {"run": str(run.root), **record, "driver": holder.describe() if live and holder else None,
            "trial_stages": stages}
