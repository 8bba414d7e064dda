"""The work of each pipeline stage, as plain functions (no Ray): train a model for a stage, evaluate one.

``detector.job.tune`` runs these inside Tune trials, and ``detector train`` calls ``train_stage`` directly:
one way to build, prune and fit a model, whoever asks. Where a stage's outputs go is the run folder's
business (``detector.job.runfolder``); these functions take the paths they write.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch

from detector import distributed
from detector.checkpoint import load_model, save_checkpoint
from detector.config import to_dict
from detector.data.loader import ReadSpec, ShardLoader, build_loader, manifest_sha256
from detector.device import resolve_device
from detector.io import atomic_write_json
from detector.job.experiment import EvaluateSection
from detector.job.runfolder import BASELINE, model_name
from detector.job.search_space import param_names
from detector.model import build_model
from detector.prune import PruningInfo, measured_sparsity, prune
from detector.prune.schedule import PruningSchedule
from detector.train import TrainConfig, fit

log = logging.getLogger(__name__)


def train_stage(
    cfg: TrainConfig,
    *,
    data: str,
    out_dir: Path,
    tb_dir: Path | None,
    init: Path | None = None,
    sparsity: float = 0.0,
    method: str = "unstructured",
    model_path: Path | None = None,
    on_epoch: Callable[[dict[str, float], Path | None], None] | None = None,
    schedule: PruningSchedule | None = None,
) -> dict[str, Any]:
    """Train one model for a stage and return its fit summary.

    ``init``: start from this checkpoint (the baseline) instead of a fresh model; ``sparsity`` > 0 prunes
    it with ``method`` ("unstructured": global L1, masks kept on; "structured": L1 channel pruning),
    following ``schedule`` (``search.schedule``): once before training (oneshot, the default), or as it
    trains (gradual, iterative: ``detector.prune.schedule``).
    ``out_dir`` holds the loop's state (a ``detector.trial_dir.TrialDir``: checkpoints and history), so the
    same call resumes. ``model_path``: where to save the final (best-epoch) model, with a ``.json``
    summary beside it. Whether the run may stop early is the config's ``patience``.

    Data-parallel: every rank of a process group makes this same call (``detector.distributed``); each
    loader reads the rank's share, in batches of ``cfg.batch_size / world size`` (``batch_size`` is the
    global batch), and only rank 0 writes (``fit``'s files, ``model_path``). Each rank prunes the same
    loaded weights the same way, and DDP starts every rank from rank 0's copy, masks included.
    """
    if init is not None:
        model, init_meta = load_model(init)
        if init_meta["arch"] != cfg.arch:
            raise ValueError(f"{init}: the checkpoint is a {init_meta['arch']}, the config asks for {cfg.arch}")
        if sparsity > 0 and PruningInfo.from_metadata(init_meta, where=str(init)).method != "none":
            raise ValueError(f"{init}: already pruned; prune the unpruned model to {sparsity:g} instead")
    else:
        model = build_model(cfg.arch, seed=cfg.seed)
    schedule = schedule or PruningSchedule()
    hook = schedule.hook(sparsity, method=method, arch=cfg.arch) if sparsity > 0 else None
    # oneshot prunes here; a schedule's hook prunes inside the loop, starting from the unpruned model
    pruning = prune(model, sparsity, method=method, arch=cfg.arch) if hook is None else PruningInfo()
    world_size = distributed.rank_and_world()[1]
    train_loader, val_loader = _stage_loaders(cfg, data, world_size)
    # Only what varies between a run's trainings: TensorBoard's HParams view ticks five hparams (in
    # alphabetical order) by default, and a sixth, constant one (the arch, in every run's config.yaml and in
    # the report's header) would push sparsity out of view. A schedule other than one-shot joins the method.
    method_name = method if hook else pruning.method
    hparams = {"sparsity": sparsity, **{name: getattr(cfg, name) for name in param_names()},
               "method": method_name if not hook else f"{method_name}/{schedule.schedule}",
               "batch_size": cfg.batch_size}
    # world_size: how many data-parallel ranks trained it (1: one process)
    metadata = {"data_manifest_sha256": manifest_sha256(data), "init": str(init) if init else None,
                "pruning": pruning.to_dict(), "world_size": world_size}
    result = fit(model, train_loader, val_loader, cfg, out_dir=out_dir, tb_dir=tb_dir, on_epoch=on_epoch,
                 hparams=hparams, metadata=metadata, schedule=hook)
    if hook is not None:
        metadata["pruning"] = hook.pruning(model).to_dict()  # the model as trained: at the target
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": result.best_val_accuracy,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "best_checkpoint": str(result.best_checkpoint),
    }
    if model_path is not None and distributed.is_primary():
        save_checkpoint(model_path, model.cpu(), metadata={
            **metadata,
            "arch": cfg.arch,
            "image_size": cfg.image_size,
            "metrics": {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch},
            "config": to_dict(cfg),
        })
        # The summary last: it is what says the model is done (RunFolder.has_model), so a stage cut
        # between the two writes trains the model again instead of taking a model without its summary.
        atomic_write_json(model_path.with_suffix(".json"), {"config": to_dict(cfg), **summary,
                                                           "best_checkpoint": str(model_path)})
        log.info("saved %s (best val accuracy %.4f at epoch %d)", model_path, result.best_val_accuracy,
                 result.best_epoch)
    return summary


def _stage_loaders(cfg: TrainConfig, data: str, world_size: int) -> tuple[ShardLoader, ShardLoader]:
    """The train and val loaders of a training run on one of ``world_size`` ranks: uint8 batches of this
    rank's share of ``cfg.batch_size`` (the global batch)."""
    pin = torch.cuda.is_available() and resolve_device(cfg.device).type == "cuda"
    batch = distributed.per_rank_batch(cfg.batch_size, world_size)
    batches = {"batch_size": batch, "num_workers": cfg.num_workers, "pin_memory": pin, "normalize": False}
    train = build_loader(data, "train", ReadSpec(image_size=cfg.image_size, train=True, seed=cfg.seed),
                         drop_last=True, **batches)
    # pad=False: each validation image once over all ranks, so the summed metrics are the whole split's
    val = build_loader(data, "val", ReadSpec(image_size=cfg.image_size, pad=False), **batches)
    return train, val


def evaluate_stage(checkpoint: Path, *, data: str, cfg: EvaluateSection, out: Path, predictions: Path,
                   pruned_from: Path | None = None, name: str | None = None) -> dict[str, Any]:
    """Evaluate a model on the combined validation set and every test set, and measure its efficiency.

    Writes ``out`` (metrics, efficiency, a summary of the data with its shortcut audit) and ``predictions``
    (labels and probabilities per image, for ROC curves, paired tests and video-level scores). Metrics are
    at 0.5 and at a threshold calibrated on the validation set (``cfg.threshold_calibration``; never on
    test). With ``cfg.robustness.enabled`` the model is also scored under every perturbation
    (``detector.evaluate.robustness``), on the primary test set (``cfg.primary_set``). For a fine-tuned model
    (pruned, or the dense control), ``out`` also holds ``before_finetune``: the same sets scored by the
    unpruned model it was fine-tuned from (``pruned_from``; default: the checkpoint's recorded ``init``),
    pruned the same way to the same sparsity and not trained: what pruning alone costs, beside what
    fine-tuning recovers. For the dense control, pruned by nothing, that is the baseline itself, scored again
    here (the same numbers as the baseline's own evaluation: the same model on the same images), so that
    every fine-tuned model's evaluation carries its starting point the same way. A model trained from
    scratch (the baseline) gets the 2:4 semi-structured benchmark instead: it times the dense architecture,
    once per run. ``name``: the model's name in the run (default: the baseline's for a model trained from
    scratch, else that of the fine-tune at its sparsity, ``model_name``).
    """
    from detector.data.loader import read_manifest
    from detector.evaluate.efficiency import efficiency_row
    from detector.evaluate.sets import primary_source

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_model(checkpoint, device=device)
    pruning = PruningInfo.from_metadata(meta, where=str(checkpoint))
    source = pruned_from if pruned_from is not None else meta.get("init")  # None: trained from scratch
    image_size = int(meta["image_size"])
    manifest = read_manifest(data)
    tested = [s for s, c in manifest["splits"].get("test", {}).items() if c.get("real", 0) + c.get("fake", 0)]
    primary = primary_source(tested, cfg.primary_set)

    def score(m: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return _score(m, data, cfg, image_size=image_size, device=device)

    metrics, preds, threshold = score(model)
    eff = efficiency_row(model, device=device, image_size=image_size, repeats=cfg.latency_repeats,
                         throughput_batch=cfg.throughput_batch)
    result = {
        "name": name or (model_name(pruning.sparsity) if source else BASELINE),
        "checkpoint": str(checkpoint),
        "arch": meta["arch"],
        "pruning": pruning.to_dict(),
        # the budget both methods are compared at: the architecture's prunable weights zeroed or removed
        "sparsity": measured_sparsity(model, meta["arch"]),
        "train_config": meta.get("config", {}),
        "data": _data_summary(data, manifest),
        "primary": {"configured": cfg.primary_set, "source": primary},
        "threshold": threshold,
        "metrics": metrics,
        "efficiency": eff,
    }
    if cfg.robustness.enabled:
        from detector.evaluate.robustness import evaluate_robustness

        result["robustness"], preds["robustness"] = evaluate_robustness(
            model, data, cfg.robustness, primary_source=primary, image_size=image_size,
            batch_size=cfg.batch_size, calibrated=threshold["value"], device=device, num_workers=cfg.num_workers)
    if source is None and pruning.method == "none":
        from detector.prune.semistructured import semistructured_benchmark

        result["semistructured"] = semistructured_benchmark(model, image_size=image_size, repeats=cfg.latency_repeats)
    else:
        del model  # one model in memory at a time
        result["before_finetune"] = _before_finetune(Path(source) if source else None, pruning, score,
                                                     device=device)
    # The predictions first: the evaluation file is what says the model is evaluated.
    atomic_write_json(predictions, preds)
    atomic_write_json(out, _finite(result))
    return result


def _score(model: torch.nn.Module, data: str, cfg: EvaluateSection, *, image_size: int, device: str
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metrics, predictions, threshold) of ``model`` on val and test: the threshold is calibrated on the
    whole validation split, then applied to both."""
    from detector.evaluate.metrics import calibrate_threshold
    from detector.evaluate.scoring import score_split

    val, test = (score_split(model, data, split, image_size=image_size, batch_size=cfg.batch_size, device=device,
                             num_workers=cfg.num_workers) for split in ("val", "test"))
    threshold: dict[str, Any] = {"method": cfg.threshold_calibration, "chosen_on": "combined_val", "value": None}
    if len(set(val.labels.tolist())) == 2:
        threshold["value"] = calibrate_threshold(val.labels, val.probs_real, method=cfg.threshold_calibration)
    else:
        threshold["note"] = "not calibrated: the validation split holds one class only"
    t = threshold["value"]
    return ({"val": val.metrics(calibrated=t), "test": test.metrics(calibrated=t)},
            {"val": val.predictions(), "test": test.predictions()}, threshold)


def _data_summary(data: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the numbers are about: counts per split, source and class, how it was imported, and the
    shortcut audit (from the manifest, or measured now for data imported before the audit existed)."""
    from detector.data.audit import audit_dataset

    audit = manifest.get("audit")
    if audit is None:
        from detector.evaluate.robustness import source_data

        try:
            audit = audit_dataset(source_data(data))
        except (OSError, ValueError) as e:  # the original images are not readable from here
            audit = {"status": f"not measured: {e}"}
    return {"path": data, "manifest_sha256": manifest_sha256(data), "audit": audit,
            **{k: manifest.get(k) for k in ("format", "splits", "generators", "pixels")},
            # how each source was imported: Celeb-DF's split protocol and frames per video, SynthBuster's reals
            "import_options": manifest.get("options")}


def _before_finetune(source: Path | None, pruning: PruningInfo, score: Callable[[torch.nn.Module], Any], *,
                     device: str) -> dict[str, Any]:
    """``source`` (the unpruned model) pruned as ``pruning`` says, scored without training; or why not."""
    if source is None:
        return {"status": "not measured: the checkpoint records no model it was pruned from (metadata 'init')"}
    if not source.is_file():
        return {"status": f"not measured: {source}, the model it was pruned from, is missing"}
    model, meta = load_model(source, device=device)
    if PruningInfo.from_metadata(meta, where=str(source)).method != "none":
        return {"status": f"not measured: {source} is itself pruned"}
    # the dense control's "pruning" removed nothing: its starting point is the unpruned model as it is
    again = PruningInfo() if pruning.method == "none" else prune(model, pruning.sparsity, method=pruning.method,
                                                                 arch=meta["arch"])
    metrics, _, threshold = score(model)
    log.info("%s pruned to %g (%s), before fine-tuning: test accuracy %.4f", source, pruning.sparsity,
             pruning.method, metrics["test"]["all"]["accuracy"])
    return {"status": "measured", "pruned_from": str(source), "pruning": again.to_dict(), "threshold": threshold,
            "metrics": metrics}


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write None instead (e.g. AUC on a test set with one class)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def drop_checkpoints(experiment: str) -> int:
    """Remove the trials' checkpoints (``<trial>/checkpoint_*/``) of a Tune experiment folder whose stage
    is complete; returns the bytes freed.

    Once a stage's outputs are in the run folder (models/, search/results.json, eval/), nothing reads
    its trials' weights again: a resumed run skips the stage, ``detector status`` and the report read the
    trials' results (JSON, CSV), which stay. Call it only then; while a stage may still resume, its
    unfinished trials need their last checkpoint. ``experiment`` is a local path or a pyarrow URI
    (``RunFolder.tune_experiment``).
    """
    from pyarrow import fs as pafs

    from detector.paths import is_uri

    if is_uri(experiment):
        filesystem, root = pafs.FileSystem.from_uri(experiment)
    else:
        filesystem, root = pafs.LocalFileSystem(), str(Path(experiment).resolve())
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    freed = 0
    for trial in filesystem.get_file_info(pafs.FileSelector(root)):
        if trial.type != pafs.FileType.Directory:
            continue
        for entry in filesystem.get_file_info(pafs.FileSelector(trial.path)):
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                files = filesystem.get_file_info(pafs.FileSelector(entry.path, recursive=True))
                freed += sum(f.size or 0 for f in files if f.type == pafs.FileType.File)
                filesystem.delete_dir(entry.path)
    log.info("%s: removed the finished trials' checkpoints (%.1f MB)", experiment, freed / 1e6)
    return freed
