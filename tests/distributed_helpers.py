"""What each rank of a Ray-free process group runs in the data-parallel tests (``detector.distributed.spawn``
starts fresh processes, which import these functions by name); the same runs in one process to compare."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from detector import distributed
from detector.checkpoint import load_model
from detector.data.loader import ReadSpec, build_loader
from detector.job.stages import train_stage
from detector.prune.schedule import PruningSchedule
from detector.passes import evaluate
from detector.train import TrainConfig, fit

# resnet18 at 16 px, global batch 16: two ranks take 8 images each per step.
CONFIG = TrainConfig(arch="resnet18", image_size=16, batch_size=16, lr=1e-3, max_epochs=1, patience=None,
                     num_workers=0, channels_last=False, seed=0)
# The schedules that change the model while it trains: gradual recomputes the masks every step, iterative
# removes channels (fit then wraps the smaller model in a new DDP).
SCHEDULES = {
    "gradual": (PruningSchedule(schedule="gradual", gradual_epochs=1, prune_every_steps=1), "unstructured"),
    "iterative": (PruningSchedule(schedule="iterative", iterative_steps=2, iterative_epochs=1), "structured"),
}


def first_epoch(data: str, out: str, init: str) -> dict[str, Any]:
    """On every rank (or one process): score ``init`` on the val split, and train a baseline for one epoch
    as the job's baseline stage does (``train_stage``). Rank r writes into ``out/rank<r>``."""
    folder = Path(out) / f"rank{distributed.rank_and_world()[0]}"
    model, _ = load_model(init)
    scored = evaluate(model, build_loader(data, "val", ReadSpec(image_size=16, pad=False), batch_size=8, num_workers=0),
                      device="cpu")
    baseline = train_stage(CONFIG, data=data, out_dir=folder / "baseline", tb_dir=folder / "baseline-tb")
    return {"val": scored, "baseline": baseline["history"][0]}


def runs(data: str, out: str, init: str) -> dict[str, Any]:
    """On every rank: ``first_epoch``; fine-tune ``init`` pruned once to 50 % (at most 2 epochs, patience 1)
    as the job's fine-tune does (``train_stage``); fine-tune under each of ``SCHEDULES``, recording the model's
    fingerprints after every epoch; last, make the ranks disagree on a mask (``disagreement``). Rank r writes
    into ``out/rank<r>``: only rank 0 may write anything there."""
    folder = Path(out) / f"rank{distributed.rank_and_world()[0]}"
    oneshot = train_stage(dataclasses.replace(CONFIG, max_epochs=2, patience=1), data=data, out_dir=folder / "oneshot",
                          tb_dir=folder / "oneshot-tb", init=Path(init), sparsity=0.5, model_path=folder / "oneshot.pt")
    states = {name: _fit_recording(data, folder / name, init, schedule, method)
              for name, (schedule, method) in SCHEDULES.items()}
    return {**first_epoch(data, out, init), "states": states,
            "oneshot": {k: oneshot[k] for k in ("epochs_run", "stopped_early", "best_epoch", "history")},
            "disagreement": disagreement(init)}


def _fit_recording(data: str, out_dir: Path, init: str, schedule: PruningSchedule, method: str) -> list[dict[str, str]]:
    """Fit ``init`` under ``schedule`` to 50 % for 2 epochs; the fingerprints of this rank's model (weights
    and masks) after every epoch."""
    model, _ = load_model(init)
    hook = schedule.hook(0.5, method=method, arch=CONFIG.arch)
    batch = distributed.per_rank_batch(CONFIG.batch_size, distributed.rank_and_world()[1])
    train = build_loader(data, "train", ReadSpec(image_size=16, train=True), batch_size=batch, num_workers=0,
                         drop_last=True)
    val = build_loader(data, "val", ReadSpec(image_size=16, pad=False), batch_size=batch, num_workers=0)
    seen: list[dict[str, str]] = []
    fit(model, train, val, dataclasses.replace(CONFIG, max_epochs=2), out_dir=out_dir, schedule=hook,
        on_epoch=lambda metrics, checkpoint: seen.append(distributed.fingerprints(model.state_dict())))
    return seen


def disagreement(init: str) -> str | None:
    """Prune ``init`` to 50 % on every rank, change one mask on rank 1, and ask whether the ranks hold the same
    model; the error's message, or None where the ranks agree."""
    from detector.prune import prune

    model, _ = load_model(init)
    prune(model, 0.5, method="unstructured", arch=CONFIG.arch)
    if distributed.rank_and_world()[0] == 1:
        with torch.no_grad():
            model.conv1.weight_mask.view(-1)[0] = 1 - model.conv1.weight_mask.view(-1)[0]
    try:
        distributed.check_same_on_every_rank(distributed.fingerprints(model.state_dict()), "pruned models")
    except RuntimeError as e:
        return str(e)
    return None
