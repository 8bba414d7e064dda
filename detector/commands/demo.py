"""The main job on the embedded default: a local Ray started in-process and the built-in demo data,
end to end in minutes on 2 CPU cores (jobs/configs/demo.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from detector.commands.run import add_run_arguments


def demo_config() -> Path:
    from importlib.resources import files

    return Path(str(files("jobs") / "configs" / "demo.yaml"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, config_required=False)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")


def main(args: argparse.Namespace) -> int:
    from detector.commands.run import execute

    return execute(args.config or demo_config(), args.overrides, out=args.out, stages=args.stages,
                   address=args.address)
