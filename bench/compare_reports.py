"""Compare the numbers of two runs' report.json, leaving out what changes from run to run by design.

    python bench/compare_reports.py runs/a/report/report.json runs/b/report/report.json \
        [--rename 'REGEX=REPLACEMENT' ...] [--ignore REGEX ...]

Every value is compared by its path (``models[1].metrics.combined_test.accuracy``); timings, paths,
devices and Tune's random trial ids are left out. ``--rename`` rewrites the first file's paths that match
REGEX in full (for a change that renamed keys, not numbers); ``--ignore`` leaves out paths (of either file)
that match. Exit status 0 when every value is identical. Used to show that a refactor changed no result
(same seed, same machine).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

# Differ between two runs of the same experiment whatever the code does.
VOLATILE = {"latency_ms", "batch_latency_ms", "throughput", "start", "end", "trial_start", "time_now", "device",
            "run_dir", "predictions", "checkpoint", "saved_at", "trial_id"}


def flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            if k not in VOLATILE:
                out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(x, list):
        out = {}
        for i, v in enumerate(x):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: x}


def compare(a: dict[str, Any], b: dict[str, Any], renames: list[tuple[str, str]] = (),
            ignore: list[str] = ()) -> list[tuple[str, Any, Any]]:
    fa, fb = flatten(a), flatten(b)
    for pattern, replacement in renames:
        fa = {(re.sub(pattern, replacement, k) if re.fullmatch(pattern, k) else k): v for k, v in fa.items()}
    fa = {k: v for k, v in fa.items() if not any(re.fullmatch(i, k) for i in ignore)}
    fb = {k: v for k, v in fb.items() if not any(re.fullmatch(i, k) for i in ignore)}
    missing = "<absent>"
    return [(k, fa.get(k, missing), fb.get(k, missing)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, missing) != fb.get(k, missing)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--rename", action="append", default=[], metavar="REGEX=REPLACEMENT")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX")
    args = p.parse_args()
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    with open(args.first) as f, open(args.second) as g:
        a, b = json.load(f), json.load(g)
    diffs = compare(a, b, renames, args.ignore)
    for path, x, y in diffs:
        print(f"DIFF {path}: {x!r} -> {y!r}")
    compared = [k for k in flatten(b) if not any(re.fullmatch(i, k) for i in args.ignore)]
    print(f"{len(compared) - sum(1 for d in diffs if d[2] != '<absent>')} values identical, {len(diffs)} differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
