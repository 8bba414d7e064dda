"""A table of a run's trials (stage, sparsity, params, state, epochs, best val accuracy), live or finished,
read from the run folder alone."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (the --out of detector run)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh every SECONDS")


def format_table(rows: list[dict]) -> str:
    header = ["stage", "trial", "sparsity", "optimizer", "lr", "state", "epochs", "best val acc"]
    lines = [header]
    for r in rows:
        p = r["params"]
        acc = r["best_val_accuracy"]
        state = r["state"] if not r.get("failed") else f"FAILED ({r['failed']})"
        lines.append([
            r["stage"], r["trial_id"], f"{r['sparsity']:g}", p.get("optimizer", "-"),
            f"{p['lr']:.3g}" if "lr" in p else "-", state, str(r["epochs"]),
            f"{acc:.4f}" if isinstance(acc, (int, float)) else "-",
        ])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


def main(args: argparse.Namespace) -> int:
    from detector.tune import read_trials

    from detector.pipeline import CONFIG_FILE

    if not (args.run / CONFIG_FILE).is_file():
        print(f"detector status: error: {args.run}: not a run folder (no {CONFIG_FILE})", file=sys.stderr)
        return 2
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
