"""A run's state and its trials, live or finished, read from the run folder alone (plain JSON: nothing in
the folder is executed or unpickled).

  detector status RUN [--watch SECONDS] [--json]

The first lines say what the run is doing: live (its driver's pid and host, heartbeat), stopped (how, and
how to resume), failed (why) or finished, and each stage's state. Then one row per trial of every Tune
stage: its state (pending, running, done, failed, error, stopped), epochs done of planned, and its val
accuracy at the last epoch (the search's objective, what the report uses) and at its best epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (the --out of detector run)")
    p.add_argument("--json", action="store_true", help="print the whole status as one JSON document")
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS")


def format_status(status: dict[str, Any]) -> str:
    """The status as text: the run's state, its stages, then a table of every trial."""
    from detector.job.search_space import param_names
    from detector.report.tables import Column, fixed, markdown

    head = f"run {status['run']}: {status['state']}"
    if status.get("stage"):
        head += f" (stage: {status['stage']})"
    if status.get("driver"):
        head += f"; driver {status['driver']}"
    lines = [head]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    if status.get("note") and status["state"] == "running":
        lines.append(f"  {status['note']}")
    if status.get("stages"):
        lines.append("stages: " + ", ".join(f"{s} {v}" for s, v in status["stages"].items()))
    rows = []
    for stage, table in status["trial_stages"].items():
        for r in table["trials"]:
            epochs = f"{r.get('epochs', 0)}/{r.get('epochs_planned', '?')}"
            sparsity = r.get("sparsity")  # an evaluation's comes with its result
            rows.append({"trial": r.get("name"), "sparsity": "-" if sparsity is None else f"{sparsity:g}",
                         **(r.get("params") or {}),
                         "state": r["state"] + (f" ({r['reason']})" if r.get("reason") else ""),
                         "epochs": epochs, "val_accuracy": r.get("val_accuracy"),
                         "best_val_accuracy": r.get("best_val_accuracy"),
                         "restarts": r.get("restarts") or ""})
    if rows:
        params = [Column(n, fmt=lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
                  for n in param_names()]
        lines += ["", markdown(rows, [
            "trial", "sparsity", *params, "state", Column("epochs", "epochs done/planned"),
            Column("val_accuracy", "val_accuracy (last epoch: the objective)", fixed(4)),
            Column("best_val_accuracy", "best_val_accuracy (best epoch)", fixed(4)), "restarts"]).rstrip("\n")]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from detector.job.runfolder import RunFolder
    from detector.job.status import read_status

    run = RunFolder(args.run)
    if not run.config.is_file():
        raise ValueError(f"{args.run}: not a run folder (no {run.config.name})")
    while True:
        status = read_status(run)
        if args.json:
            print(json.dumps(status))
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")  # clear the terminal: one screen that refreshes
            print(format_status(status))
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)
        if not sys.stdout.isatty():
            print()
