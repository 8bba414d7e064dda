"""Train one model with the library's loop: the paper's baseline by default, or a fine-tune of a
checkpoint with --init and --sparsity (pruned first, --method unstructured or structured). It runs the
same stage function as the job's baseline and fine-tunes. Resumes if DIR already holds a checkpoint.

  detector train --data DATA --out DIR [--config YAML] [--set key=value ...]
  detector train --data DATA --out DIR --init BASELINE --sparsity 0.9 --schedule gradual --gradual-epochs 3

--schedule prunes as the model trains instead of once before (docs/pruning.md, "Schedules"): gradual
(cubic ramp, unstructured) or iterative (steps with training between them, --rewind-epoch to rewind).

--config takes a TrainConfig YAML, or an experiment YAML (jobs/configs/*.yaml: its `train` section with
the `baseline` overrides). --set overrides one TrainConfig field, e.g. --set lr=3e-4 --set max_epochs=5.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared shards (folder with manifest.json)")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoint/, history.jsonl, tb/, result.json)")
    p.add_argument("--config", type=Path, help="TrainConfig or experiment YAML (default: the paper's baseline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field (value parsed as YAML); repeatable")
    p.add_argument("--init", type=Path, help="start from this checkpoint instead of fresh weights (fine-tune)")
    p.add_argument("--sparsity", type=float, default=0.0, help="prune the model to this sparsity first")
    p.add_argument("--method", choices=["unstructured", "structured"], default="unstructured",
                   help="with --sparsity: zero weights (global L1, the paper's) or remove channels (L1)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")
    g = p.add_argument_group("pruning schedule (with --sparsity; the search section's keys of the same names)")
    g.add_argument("--schedule", choices=["oneshot", "gradual", "iterative"], default="oneshot",
                   help="prune once before training (the paper's), along a cubic ramp, or in steps")
    g.add_argument("--gradual-epochs", type=int, help="gradual: epochs of the ramp (default 5)")
    g.add_argument("--prune-every-steps", type=int, help="gradual: recompute the masks every K steps (default 100)")
    g.add_argument("--gradual-initial-sparsity", type=float, help="gradual: sparsity at step 0 (default 0)")
    g.add_argument("--iterative-steps", type=int, help="iterative: pruning steps (default 3)")
    g.add_argument("--iterative-epochs", type=int, help="iterative: epochs of training after each step (default 2)")
    g.add_argument("--rewind-epoch", type=int, help="iterative: rewind to this epoch's weights after each step")


SCHEDULE_FLAGS = ("gradual_epochs", "prune_every_steps", "gradual_initial_sparsity", "iterative_steps",
                  "iterative_epochs", "rewind_epoch")


def pruning_schedule(args: argparse.Namespace):
    """The PruningSchedule the flags ask for; a flag of another schedule is an error, not ignored."""
    from detector.config import from_dict
    from detector.prune.schedule import PruningSchedule

    given = {name: getattr(args, name) for name in SCHEDULE_FLAGS if getattr(args, name) is not None}
    schedule = from_dict(PruningSchedule, {"schedule": args.schedule, **given}, where="--schedule")
    unused = sorted(set(given) - set(schedule.params()))
    if unused:
        raise ValueError(f"--{unused[0].replace('_', '-')} does not apply to --schedule {args.schedule}")
    if schedule.schedule != "oneshot" and args.sparsity == 0:
        raise ValueError(f"--schedule {schedule.schedule} needs --sparsity > 0")
    return schedule


def load_train_config(path: Path | None, overrides: list[str]):
    """TrainConfig from a YAML file (plain or experiment) plus ``key=value`` overrides; an error names the
    key and where its value came from (the file, or the ``--set``)."""
    from detector.config import from_dict_with_overrides, load_yaml, to_dict
    from detector.train import TrainConfig

    data: dict = {}
    source = "the default TrainConfig"
    if path is not None:
        raw = load_yaml(path)
        source = str(path)
        if "train" in raw:
            from detector.job.experiment import load_experiment

            data = to_dict(load_experiment(path).stage_train("baseline"))
        else:
            data = raw
    return from_dict_with_overrides(TrainConfig, data, overrides, source=source)


def main(args: argparse.Namespace) -> int:
    from detector.io import atomic_write_json
    from detector.job.stages import train_stage

    cfg = load_train_config(args.config, args.overrides)
    summary = train_stage(cfg, data=args.data, out_dir=args.out,
                          tb_dir=None if args.no_tensorboard else args.out / "tb",
                          init=args.init, sparsity=args.sparsity, method=args.method,
                          schedule=pruning_schedule(args))
    atomic_write_json(args.out / "result.json", {k: v for k, v in summary.items() if k != "history"})
    print(f"best val_accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']} "
          f"({summary['epochs_run']} epochs{', stopped early' if summary['stopped_early'] else ''}); "
          f"model: {summary['best_checkpoint']}")
    return 0
