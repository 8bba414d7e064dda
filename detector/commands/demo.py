"""The main job on the embedded default: a local Ray started in-process and the built-in demo data,
end to end in minutes on 2 CPU cores (jobs/configs/demo.yaml).

It also leaves a few of the demo's test images in RUN/samples/ (real-0.png, fake-1-bilinear.png, ...: their
labels in their names), and its last lines name the model to use, with the command that tries it on them.
"""

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

    config = args.config or demo_config()
    if not args.dry_run:
        write_samples(config, args.overrides, args.out)
    return execute(config, args.overrides, out=args.out, stages=args.stages, address=args.address,
                   dry_run=args.dry_run)


def write_samples(config: Path, overrides: list[str], out: Path) -> None:
    """Sample images to try ``detector predict`` on: the first of the demo data's test split (never trained
    on), as the run's data generates them (its seed); written before the run, so its last lines can name them."""
    from detector.data.demo import write_demo_samples
    from detector.job.experiment import load_experiment
    from detector.job.runfolder import RunFolder

    exp = load_experiment(config, overrides)
    if exp.data.demo:
        write_demo_samples(RunFolder(out).samples, seed=exp.data.seed)
