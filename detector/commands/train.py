"""Train one model with the library's loop: the paper's baseline by default, or a fine-tune of a
(pruned) checkpoint with --init/--sparsity. Resumes if DIR already holds a checkpoint.

  detector train --data DATA --out DIR [--config YAML] [--set key=value ...]

--config takes a TrainConfig YAML, or an experiment YAML (jobs/configs/*.yaml: its `train` section with
the `baseline` overrides). --set overrides one TrainConfig field, e.g. --set lr=3e-4 --set max_epochs=5.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detector.commands._common import fail, user_errors

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared shards (folder with manifest.json)")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoint/, history.jsonl, tb/, result.json)")
    p.add_argument("--config", type=Path, help="TrainConfig or experiment YAML (default: the paper's baseline)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field (value parsed as YAML); repeatable")
    p.add_argument("--init", type=Path, help="start from this checkpoint instead of fresh weights (fine-tune)")
    p.add_argument("--sparsity", type=float, default=0.0, help="prune the model to this sparsity first (global L1)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs to OUT/tb")


def load_train_config(path: Path | None, overrides: list[str]):
    """TrainConfig from a YAML file (plain or experiment) plus ``key=value`` overrides."""
    import yaml

    from detector.config import ConfigError, from_dict, load_yaml, to_dict
    from detector.train import TrainConfig

    data: dict = {}
    if path is not None:
        raw = load_yaml(path)
        if "train" in raw:
            from detector.experiment import load_experiment

            data = to_dict(load_experiment(path).stage_train("baseline"))
        else:
            data = raw
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. lr=3e-4")
        data[key] = yaml.safe_load(value)
    return from_dict(TrainConfig, data, where=str(path) if path else "")


def main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except user_errors() as e:
        log.debug("train failed", exc_info=True)
        return fail("train", str(e))


def _run(args: argparse.Namespace) -> int:
    import torch

    from detector.checkpoint import load_model
    from detector.data.loader import build_loader, manifest_sha256
    from detector.io import atomic_write_json
    from detector.model import build_model
    from detector.pruning import prune_global_l1
    from detector.train import fit

    cfg = load_train_config(args.config, args.overrides)
    if args.init is not None:
        model, meta = load_model(args.init)
        if meta["arch"] != cfg.arch:
            raise ValueError(f"{args.init}: the checkpoint is a {meta['arch']}, the config asks for {cfg.arch}")
    else:
        model = build_model(cfg.arch, seed=cfg.seed)
    if args.sparsity > 0:
        prune_global_l1(model, args.sparsity)
    pin = torch.cuda.is_available() and cfg.device != "cpu"
    train_loader = build_loader(args.data, "train", batch_size=cfg.batch_size, image_size=cfg.image_size,
                                train=True, num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=pin,
                                drop_last=True, normalize=False)
    val_loader = build_loader(args.data, "val", batch_size=cfg.batch_size, image_size=cfg.image_size,
                              num_workers=cfg.num_workers, pin_memory=pin, normalize=False)
    result = fit(
        model, train_loader, val_loader, cfg, out_dir=args.out,
        tb_dir=None if args.no_tensorboard else args.out / "tb",
        metadata={"data_manifest_sha256": manifest_sha256(args.data), "data": str(args.data),
                  "init": str(args.init) if args.init else None, "target_sparsity": args.sparsity},
    )
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_checkpoint": str(result.best_checkpoint),
    }
    atomic_write_json(args.out / "result.json", summary)
    print(f"best val_accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch} "
          f"({result.epochs_run} epochs{', stopped early' if result.stopped_early else ''}); "
          f"model: {result.best_checkpoint}")
    return 0
