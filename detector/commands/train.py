"""Train one model with the library's loop: the paper's baseline by default, or a fine-tune of a
checkpoint with --init and --sparsity (pruned first, --method unstructured or structured). It runs the
same stage function as the job's baseline and fine-tunes. Resumes if DIR already holds a checkpoint.

  detector train --data DATA --out DIR [--config YAML] [--set key=value ...]

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
                          init=args.init, sparsity=args.sparsity, method=args.method)
    atomic_write_json(args.out / "result.json", {k: v for k, v in summary.items() if k != "history"})
    print(f"best val_accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']} "
          f"({summary['epochs_run']} epochs{', stopped early' if summary['stopped_early'] else ''}); "
          f"model: {summary['best_checkpoint']}")
    return 0
