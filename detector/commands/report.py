"""(Re)write a run's report (tables 3-6, report.json, CSV, figures) from its run folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (the --out of detector run)")


def main(args: argparse.Namespace) -> int:
    from detector.report import write_report

    print(write_report(args.run))
    return 0
