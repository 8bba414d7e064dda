"""Repair a run folder's damaged Optuna journal, so that the run can resume.

  detector repair RUN [--journal FILE]

A journal cut in the middle of a record (the driver killed while it wrote, a full disk) cannot be loaded,
and resuming refuses it by name. This cuts it back to its last complete record, keeping the damaged file
beside it as ``<journal>.damaged-<UTC time>``, and says what it dropped: the searches' last events, whose
trials the resumed search asks for or fails again. A journal that is whole is left as it is. Stop the run's
driver first: nothing may write to the journal meanwhile.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (the --out of detector run)")
    p.add_argument("--journal", type=Path, default=None, metavar="FILE",
                   help="the journal to repair, where search.storage names one (default: RUN/search/optuna.journal)")


def main(args: argparse.Namespace) -> int:
    from detector.job.lease import DriverLease
    from detector.job.repair import repair_run
    from detector.job.runfolder import RunFolder

    run = RunFolder(args.run)
    if not run.root.is_dir():
        raise FileNotFoundError(f"{args.run}: no such run folder")
    with DriverLease(run.lease, run.lock):  # no driver may append while the journal is cut back
        for line in repair_run(run, args.journal):
            print(line)
    return 0
