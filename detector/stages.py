"""The work of each pipeline stage, as plain functions (no Ray): train a model for a stage, evaluate one.

``detector.tune`` runs these inside Tune trials; they can as well run alone on a machine with only torch.
A run folder holds every stage's outputs at fixed places (see ``model_path``, ``eval_path``), on storage
that every worker of the cluster sees.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from detector.checkpoint import load_model, save_checkpoint
from detector.config import to_dict
from detector.experiment import EvaluateSection
from detector.io import atomic_write_json
from detector.model import build_model
from detector.pruning import prune_global_l1, sparsity_report
from detector.structured import METHODS, prune_channels_l1
from detector.train import TrainConfig, fit

log = logging.getLogger(__name__)


def model_name(sparsity: float) -> str:
    return "baseline" if sparsity == 0 else f"prune-{round(sparsity * 100):d}"


def model_path(run_dir: Path, sparsity: float) -> Path:
    """The final model of a stage: the baseline (sparsity 0) or a fine-tuned pruned model."""
    return Path(run_dir) / "models" / f"{model_name(sparsity)}.pt"


def eval_path(run_dir: Path, sparsity: float) -> Path:
    return Path(run_dir) / "eval" / f"{model_name(sparsity)}.json"


def train_stage(
    cfg: TrainConfig,
    *,
    data: str,
    out_dir: Path,
    tb_dir: Path | None,
    init: Path | None = None,
    sparsity: float = 0.0,
    method: str = "unstructured",
    early_stopping: bool = True,
    model_path: Path | None = None,
    on_epoch: Callable[[dict[str, float], Path], None] | None = None,
) -> dict[str, Any]:
    """Train one model for a stage and return its fit summary.

    ``init``: start from this checkpoint (the baseline) instead of a fresh model; ``sparsity`` > 0 prunes
    it first: ``method`` "unstructured" (global L1, masks kept on) or "structured" (L1 channel pruning
    that removes ``sparsity`` of the prunable weights). ``model_path``: where to save the final
    (best-epoch) model.
    A search trial passes ``early_stopping=False``: its epochs are the budget, not a limit.
    """
    from detector.data.loader import build_loader, manifest_sha256

    if init is not None:
        model, init_meta = load_model(init)
        if init_meta["arch"] != cfg.arch:
            raise ValueError(f"{init}: the checkpoint is a {init_meta['arch']}, the config asks for {cfg.arch}")
    else:
        model = build_model(cfg.arch, seed=cfg.seed)
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    pruning: dict[str, Any] = {}
    if sparsity > 0 and method == "structured":
        pruning = prune_channels_l1(model, sparsity, arch=cfg.arch)
    elif sparsity > 0:
        prune_global_l1(model, sparsity)
        pruning = {"pruning_method": "unstructured"}
    if not early_stopping:
        cfg = _replace(cfg, patience=max(cfg.patience, cfg.max_epochs))
    train_loader = build_loader(data, "train", batch_size=cfg.batch_size, image_size=cfg.image_size, train=True,
                                num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=torch.cuda.is_available(),
                                drop_last=True, normalize=False)
    val_loader = build_loader(data, "val", batch_size=cfg.batch_size, image_size=cfg.image_size,
                              num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                              normalize=False)
    hparams = {"arch": cfg.arch, "sparsity": sparsity, "optimizer": cfg.optimizer, "lr": cfg.lr,
               "batch_size": cfg.batch_size, "pruning_method": pruning.get("pruning_method", "none")}
    result = fit(model, train_loader, val_loader, cfg, out_dir=out_dir, tb_dir=tb_dir, on_epoch=on_epoch,
                 hparams=hparams, metadata=pruning)
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "history": result.history,
    }
    if model_path is not None:
        save_checkpoint(
            model_path,
            model.cpu(),
            metadata={
                "arch": cfg.arch,
                "image_size": cfg.image_size,
                "metrics": {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch},
                "data_manifest_sha256": manifest_sha256(data),
                "config": to_dict(cfg),
                "target_sparsity": sparsity,
                "init": str(init) if init else None,
                **pruning,
            },
        )
        atomic_write_json(model_path.with_suffix(".json"), {"config": to_dict(cfg), **summary})
        log.info("saved %s (best val accuracy %.4f at epoch %d)", model_path, result.best_val_accuracy,
                 result.best_epoch)
    return summary


def _replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def evaluate_stage(checkpoint: Path, *, data: str, cfg: EvaluateSection, out: Path) -> dict[str, Any]:
    """Evaluate a model on the combined validation set and every test set, and measure its efficiency.

    Writes ``out`` (metrics, efficiency) and ``out.predictions.json`` beside it (labels and probabilities
    per test set, for ROC curves and paired tests between models).
    """
    from detector.efficiency import efficiency_row
    from detector.metrics import evaluate_split

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_model(checkpoint, device=device)
    image_size = int(meta["image_size"])
    val = evaluate_split(model, data, "val", image_size=image_size, batch_size=cfg.batch_size, device=device)
    test = evaluate_split(model, data, "test", image_size=image_size, batch_size=cfg.batch_size, device=device)
    eff = efficiency_row(model, device=device, image_size=image_size, repeats=cfg.latency_repeats,
                         throughput_batch=cfg.throughput_batch)
    method = meta.get("pruning_method", "unstructured")
    extra: dict[str, Any] = {
        "pruning_method": method,
        # The budget both methods are compared at: prunable weights zeroed (unstructured) or removed.
        "params_removed": meta.get("params_removed", sparsity_report(model)["sparsity"]),
    }
    if float(meta.get("target_sparsity", 0.0)) == 0:
        from detector.semistructured import semistructured_benchmark

        extra["semistructured"] = semistructured_benchmark(model, image_size=image_size, repeats=cfg.latency_repeats)
    result = {
        "name": model_name(float(meta.get("target_sparsity", 0.0))),
        "checkpoint": str(checkpoint),
        "arch": meta["arch"],
        "sparsity": sparsity_report(model)["sparsity"],
        "target_sparsity": float(meta.get("target_sparsity", 0.0)),
        "train_config": meta.get("config", {}),
        "metrics": {"val": val["metrics"], "test": test["metrics"]},
        "efficiency": eff,
        **extra,
    }
    atomic_write_json(out, _finite(result))
    atomic_write_json(out.with_suffix(".predictions.json"), {"val": val["predictions"], "test": test["predictions"]})
    return result


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write None instead (e.g. AUC on a test set with one class)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
