"""A table of a run's trials (stage, sparsity, params, state, epochs, best val accuracy), live or finished,
read from the run folder alone."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (the --out of detector run)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS")


def format_table(rows: list[dict]) -> str:
    """The trials as a table: one row each, the searched parameters as columns."""
    from detector.job.search_space import param_names
    from detector.report.tables import Column, markdown

    flat = [{"stage": r["stage"], "trial": r["trial_id"], "sparsity": f"{r['sparsity']:g}", **r["params"],
             "state": r["state"] if not r.get("failed") else f"FAILED ({r['failed']})", "epochs": r["epochs"],
             "best val acc": r["best_val_accuracy"]} for r in rows]
    params = [Column(n, fmt=lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
              for n in param_names()]
    return markdown(flat, ["stage", "trial", "sparsity", *params, "state", "epochs", "best val acc"]).rstrip("\n")


def main(args: argparse.Namespace) -> int:
    from detector.job.runfolder import RunFolder
    from detector.job.tune import read_trials

    run = RunFolder(args.run)
    if not run.config.is_file():
        raise ValueError(f"{args.run}: not a run folder (no {run.config.name})")
    while True:
        rows = read_trials(args.run)
        if args.json:
            for r in rows:
                print(json.dumps(r))
        else:
            print(format_table(rows))
        if not args.watch:
            return 0
        time.sleep(args.watch)
        print()
