"""Run the whole experiment (import if needed, baseline, the concurrent sparsity searches, fine-tunes,
evaluation, report) or chosen stages, on an embedded local Ray or a running cluster (--address).

Ctrl-C (SIGINT) or SIGTERM stops the whole job: the running stage saves its state and nothing after it
starts (a second Ctrl-C stops at once); `detector run --resume --out RUN` continues where it stopped. One
driver works on a run folder at a time: a second one exits at once, naming the first. While it runs,
`detector status RUN --watch 10` shows every stage and trial.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_run_arguments(p: argparse.ArgumentParser, *, config_required: bool) -> None:
    p.add_argument("--config", required=config_required, type=Path,
                   help="experiment YAML (jobs/configs/paper.yaml, jobs/configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set search.trials_per_sparsity=2 (repeatable)")
    p.add_argument("--stages", default=None,
                   help="comma-separated stages to run, from prepare,baseline,search,finetune,evaluate,report "
                        "(default: all)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or ray://HOST:10001 (default: RAY_ADDRESS, else an "
                        "embedded local Ray)")
    p.add_argument("--trust-run-folder", action="store_true",
                   help="resume Tune's saved state even where others could have written it (it is unpickled)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and print the plan (stages, models, trials, trial-epochs, resources); "
                        "start nothing")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, config_required=False)
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved config (finished trials are kept)")


def main(args: argparse.Namespace) -> int:
    from detector.config import ConfigError
    from detector.job.runfolder import RunFolder

    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN, the folder of the run to continue")
        saved = RunFolder(args.out).config
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found; is {args.out} a run folder?")
        config = args.config or saved
    elif args.config is None:
        raise ConfigError("--config is required (e.g. jobs/configs/paper.yaml), or --resume --out RUN")
    else:
        config = args.config
    return execute(config, args.overrides, out=args.out, stages=args.stages, address=args.address,
                   trust_run_folder=args.trust_run_folder, saved=args.resume and args.config is None,
                   dry_run=args.dry_run)


def execute(config: Path, overrides: list[str], *, out: Path | None, stages: str | None,
            address: str | None, trust_run_folder: bool = False, saved: bool = False, dry_run: bool = False) -> int:
    """``saved``: ``config`` is a run folder's own (``--resume`` without ``--config``), written perhaps by an
    earlier version: a key it lacks means what it meant then (``load_saved_experiment``)."""
    from detector.commands._common import fail
    from detector.job.experiment import STAGES, load_experiment, load_saved_experiment
    from detector.job.pipeline import run
    from detector.job.stop import StageIncomplete

    exp = (load_saved_experiment if saved else load_experiment)(config, overrides)
    out = out or Path("runs") / exp.name
    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else list(STAGES)
    if dry_run:
        from detector.job.plan import format_plan

        print(format_plan(exp, out, chosen, address=address))
        return 0
    try:
        result = run(exp, out, address=address, stages=chosen, trust_run_folder=trust_run_folder)
    except StageIncomplete as e:
        return fail("run", str(e), status=1)
    print()
    print(f"run folder:   {result['run_dir']}")
    if Path(result["report"]).exists():
        print(f"report:       {result['report']}")
    print(f"TensorBoard:  tensorboard --logdir {result['tensorboard']}")
    if result["dashboard"]:
        print(f"Ray dashboard (while the run was live): {result['dashboard']} "
              "(sign in with the token `ray get-auth-token` prints)")
    print(f"trials:       detector status {result['run_dir']}")
    from detector.commands.predict import try_command

    if try_it := try_command(Path(result["run_dir"])):
        print(f"try it:       {try_it}")
    return 0
