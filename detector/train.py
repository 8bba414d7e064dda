"""The one training loop: the baseline (§2.2), every search trial and every fine-tune (§2.3).

Differences between those runs are config (``TrainConfig``), never copies of this loop. ``fit`` trains
with early stopping on validation accuracy, checkpoints the whole state every epoch into
``out_dir/checkpoint/`` (a self-contained folder that Ray Tune can wrap with
``Checkpoint.from_directory``), resumes from it, and leaves the best epoch's weights in the model.

Metrics are flat dicts with stable names (``train_loss``, ``val_accuracy``, ...); the same dict goes
to TensorBoard, to ``on_epoch`` (e.g. ``tune.report``) and to ``history.jsonl``.

A pruning schedule (``detector.prune.schedule``) runs inside this loop as a ``PruningHook``: fit calls it
before every epoch and after every optimisation step, and it may re-prune the model there.

Data-parallel: inside a torch.distributed process group (``detector.distributed``: Ray Train's workers, or
``spawn``) the same ``fit`` runs on every rank. The loaders read each rank's share, DDP averages the
gradients, the epoch's metrics are summed over the ranks (so every rank sees the same numbers and takes the
same early-stopping decision), and only rank 0 writes: checkpoints, ``history.jsonl``, TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from detector import distributed
from detector.config import AtLeastOne, Match, NonNegative, OneOf, Range, Seed, check_fields, save_yaml, to_dict
from detector.device import Precision, autocast, resolve_device, resolve_precision, seed_everything
from detector.io import atomic_write_text
from detector.model import ARCHITECTURES, build_model
from detector.prune import PruningInfo
from detector.prune.channels import conform_to_state_dict
from detector.prune.unstructured import dense_state_dict

log = logging.getLogger(__name__)

# How many steps may pass between loss checks: checking every step would force a GPU sync per step.
_FINITE_CHECK_EVERY = 25


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


# What every epoch reports that a search may optimise (``search.metric``), and which way is better.
OBJECTIVES: dict[str, Literal["max", "min"]] = {
    "val_accuracy": "max", "val_loss": "min", "best_val_accuracy": "max",
    "train_accuracy": "max", "train_loss": "min",
}

# The largest image size: the largest images of the paper's sources are SynthBuster's 1024 px; above that
# a resize only upsamples, and one decoded image is already 3 MiB (what data.pixels stores per image).
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults are the paper's baseline (§2.2, Table 2).

    Each field's range is declared with it (``detector.config.Range``); a value outside fails at load.
    """

    arch: Annotated[str, OneOf(tuple(ARCHITECTURES))] = "resnet50"
    # 16 px: the smallest input ResNet's five stride-2 stages still reduce to one pixel
    image_size: Annotated[int, Range(16, MAX_IMAGE_SIZE, why="16 px: ResNet's strides; 1024 px: the "
                                     "largest source images, 3 MiB per decoded image")] = 224
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Range(0, low_open=True)] = 1e-4
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9  # SGD only
    weight_decay: Annotated[float, Range(0)] = 0.0
    batch_size: AtLeastOne = 16
    max_epochs: AtLeastOne = 100
    # epochs without a new best val_accuracy before stopping; null: never stop early (a search trial,
    # whose epochs are its budget)
    patience: AtLeastOne | None = 3
    seed: Seed = 0
    num_workers: NonNegative = 2
    device: Annotated[str, Match(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N")] = "auto"
    precision: Precision = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere
    channels_last: bool = True
    compile: bool = False
    max_train_batches: AtLeastOne | None = None  # cap an epoch (smoke runs)
    max_val_batches: AtLeastOne | None = None

    def __post_init__(self) -> None:
        check_fields(self)


class PruningHook(Protocol):
    """A pruning schedule as ``fit`` runs it (``detector.prune.schedule.PruningSchedule.hook``).

    fit calls ``begin`` once it knows the epoch length (fresh or resumed, before the optimizer is built: a
    fresh schedule prunes its first step there), ``before_epoch`` before every epoch (True: the parameters
    were replaced or reset, so fit builds a fresh optimizer) and ``after_step`` after every optimisation
    step; each may re-prune the model in place. Epochs before ``at_target`` are
    trained and validated but neither kept as the best model nor counted for early stopping. ``pruning``
    describes the model as it is now (every checkpoint's ``metadata["pruning"]``); ``state_dict`` goes
    into ``state.pt``, ``load_state_dict`` takes it back on resume.
    """

    def begin(self, model: nn.Module, *, steps_per_epoch: int | None, max_epochs: int) -> None: ...

    def before_epoch(self, model: nn.Module, epoch: int) -> bool: ...

    def after_step(self, model: nn.Module) -> None: ...

    @property
    def at_target(self) -> bool: ...

    def pruning(self, model: nn.Module) -> PruningInfo: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping on a metric to maximise; ``update`` returns the next state (a plain value, so it
    goes into checkpoints as a dict). ``patience=None`` never stops."""

    patience: int | None
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> "EarlyStopping":
        if value > self.best:
            return replace(self, best=value, best_epoch=epoch, bad_epochs=0)
        return replace(self, bad_epochs=self.bad_epochs + 1)

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}


@dataclass(frozen=True)
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    best_checkpoint: Path


# --- optimizer, one step, one epoch, evaluation ---------------------------------------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over the model's parameters where they are now (move the model to its device first)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel per step instead of one per tensor group: a few % of step time on a GPU.
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           fused=fused or None)


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, *, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a batch to ``device``; asynchronous when the loader pinned it.

    uint8 images (a loader built with ``normalize=False``: 4x fewer bytes through shared and pinned
    memory and over PCIe) are normalised here, on the device, with the presets' ImageNet mean/std.
    """
    fmt = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    if images.dtype == torch.uint8:
        from detector.data.transforms import normalize_imagenet

        # into a float tensor of the same layout: no second copy to reach channels_last
        images = normalize_imagenet(images, out=torch.empty_like(images, dtype=torch.float32))
    labels = labels.to(device, non_blocking=True).float()
    return images, labels


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch already on the device; returns (loss, correct) as device tensors
    so that the caller decides when to synchronise."""
    with autocast(images.device, precision):
        logits = model(images).squeeze(1)  # (N, 1) -> (N,)
    # The loss in fp32: BCE on bf16 logits loses the small differences late training depends on.
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    correct = ((logits.detach() >= 0) == (labels >= 0.5)).sum()
    return loss.detach(), correct


def _progress(iterable: Iterable, *, total: int | None, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, disable=not sys.stderr.isatty())


def _batches(loader: Iterable, max_batches: int | None) -> tuple[Iterator, int | None]:
    try:
        total: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = min(total, max_batches) if total is not None else max_batches
    it = iter(loader)
    if max_batches is not None:
        it = (b for _, b in zip(range(max_batches), it))
    return it, total


def _check_finite(losses: list[torch.Tensor], first_step: int, epoch: int) -> None:
    """Raise NonFiniteLossError when a loss of these steps is NaN or infinite, on this rank or any other
    (every rank raises together, so that none waits for the others in the next step)."""
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if distributed.any_rank(len(bad) > 0):
        hint = "(try a lower lr, or precision bf16/fp32 instead of fp16)"
        if not len(bad):
            raise NonFiniteLossError(f"training loss became non-finite on another rank at epoch {epoch}, steps "
                                     f"{first_step}-{first_step + len(losses) - 1} {hint}")
        i = int(bad[0])
        raise NonFiniteLossError(f"training loss became {values[i].item()} at epoch {epoch}, step {first_step + i} "
                                 f"{hint}")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    epoch: int = 1,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (batches of ``(images, labels[, metas])``); ``on_step()`` runs after
    every optimisation step (a pruning schedule's ``after_step``).

    Returns ``train_loss`` (mean per sample), ``train_accuracy``, ``train_samples``, ``images_per_s``
    and ``data_wait_s`` (time spent waiting for the loader; high means the input pipeline is the limit).
    Under a process group these are over every rank's samples (``data_wait_s``: the ranks' mean).
    """
    model.train()
    it, total = _batches(loader, max_batches)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = 0
    pending: list[torch.Tensor] = []
    data_wait = 0.0
    start = time.perf_counter()
    step = 0
    batches = iter(_progress(it, total=total, desc=f"epoch {epoch}"))
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        data_wait += time.perf_counter() - t0
        if batch is None:
            break
        images, labels = to_device(batch[0], batch[1], device, channels_last=channels_last)
        loss, ok = train_step(model, images, labels, optimizer, precision=precision, scaler=scaler)
        if on_step is not None:
            on_step()
        n = labels.shape[0]
        loss_sum += loss * n
        correct += ok
        samples += n
        step += 1
        pending.append(loss)
        if len(pending) == _FINITE_CHECK_EVERY:
            _check_finite(pending, step - len(pending) + 1, epoch)
            pending.clear()
    if pending:
        _check_finite(pending, step - len(pending) + 1, epoch)
    # .item() synchronises, so the timing below covers all queued GPU work; then the sums over the ranks
    totals = torch.tensor([loss_sum.item(), correct.item(), samples, data_wait], dtype=torch.float64)
    elapsed = time.perf_counter() - start
    loss_total, correct_total, samples_total, wait_total = distributed.all_reduce_sum(totals).tolist()
    if samples_total == 0:
        raise ValueError("train loader yielded no batches")
    return {
        "train_loss": loss_total / samples_total,
        "train_accuracy": correct_total / samples_total,
        "train_samples": int(samples_total),
        "images_per_s": samples_total / elapsed,
        "data_wait_s": wait_total / distributed.rank_and_world()[1],
    }


def _forward_all(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    max_batches: int | None,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, list] | None]:
    """(labels (N,), logits (N,), metas as a dict of lists or None), all on the CPU."""
    model.eval()
    it, total = _batches(loader, max_batches)
    all_logits, all_labels = [], []
    metas: dict[str, list] | None = None
    with torch.inference_mode():
        for batch in _progress(it, total=total, desc=desc):
            images, labels = to_device(batch[0], batch[1], device, channels_last=channels_last)
            with autocast(device, precision):
                logits = model(images).squeeze(1)
            all_logits.append(logits.float())
            all_labels.append(labels)
            if len(batch) > 2:
                metas = metas or {}
                for key, values in batch[2].items():
                    metas.setdefault(key, []).extend(list(values))
    if not all_logits:
        raise ValueError(f"{desc}: the loader yielded no batches")
    return torch.cat(all_labels).cpu(), torch.cat(all_logits).cpu(), metas


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    precision: str = "fp32",
    channels_last: bool = False,
    prefix: str = "val",
    max_batches: int | None = None,
) -> dict[str, float]:
    """``{prefix}_loss`` (mean BCE), ``{prefix}_accuracy`` and ``{prefix}_samples`` over ``loader``; under a
    process group over every rank's share (each rank's loader reads its own: ``pad=False`` counts each
    sample once)."""
    device = torch.device(device)
    labels, logits, _ = _forward_all(
        model, loader, device=device, precision=precision, channels_last=channels_last,
        max_batches=max_batches, desc=prefix,
    )
    n = labels.numel()
    dataset = getattr(loader, "dataset", None)
    if max_batches is None and dataset is not None and hasattr(dataset, "__len__") and len(dataset) != n:
        log.warning("%s: evaluated %d samples but the dataset has %d (drop_last?)", prefix, n, len(dataset))
    sums = torch.stack([F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").double(),
                        ((logits >= 0) == (labels >= 0.5)).sum().double(), torch.tensor(float(n), dtype=torch.float64)])
    loss_sum, correct, total = distributed.all_reduce_sum(sums).tolist()
    return {
        f"{prefix}_loss": loss_sum / total,
        f"{prefix}_accuracy": correct / total,
        f"{prefix}_samples": int(total),
    }


def collect_predictions(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    precision: str = "fp32",
    channels_last: bool = False,
    max_batches: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, list] | None]:
    """Raw outputs for ``detector.evaluate.metrics``: (labels int (N,), probability of Real (N,), metas or None)."""
    labels, logits, metas = _forward_all(
        model, loader, device=torch.device(device), precision=precision, channels_last=channels_last,
        max_batches=max_batches, desc="predict",
    )
    return labels.round().long().numpy(), torch.sigmoid(logits).numpy(), metas


# --- the loop -------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_arch(model: nn.Module, arch: str, pruning: PruningInfo) -> None:
    """Refuse to label a model's checkpoints with the wrong architecture (load_model rebuilds from it).
    A channel-pruned model has the arch's layers at smaller widths: then the layer names must agree."""
    with torch.device("meta"):
        reference = build_model(arch)
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in dense_state_dict(model).items()}
    if pruning.structured:
        want, have = {k: None for k in want}, {k: None for k in have}
    if want != have:
        raise ValueError(f"arch: the model passed to fit is not a {arch} with a single-logit head")


# Metrics that describe the input pipeline and the hardware, not the model: TensorBoard files them under perf/.
PERF_METRICS = ("images_per_s", "data_wait_s")
# In every epoch's row but not plotted per epoch: bookkeeping, or the running best (HParams shows it).
_UNPLOTTED = ("epoch", "best_val_accuracy", "best_epoch")


def tensorboard_tag(key: str) -> str:
    """A metric's TensorBoard tag, from its name: ``train_loss`` -> ``train/loss``, ``val_accuracy`` ->
    ``val/accuracy``, ``images_per_s`` -> ``perf/images_per_s``, ``lr`` -> ``lr``."""
    prefix, _, rest = key.partition("_")
    if prefix in ("train", "val") and rest:
        return f"{prefix}/{rest}"
    return f"perf/{key}" if key in PERF_METRICS else key


class _TensorBoard:
    """One TensorBoard run per fit: every epoch's metrics, and the run's hparams at the end (or nothing
    when ``tb_dir`` is None)."""

    def __init__(self, tb_dir: str | Path | None) -> None:
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tb_dir))

    def __enter__(self) -> "_TensorBoard":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()

    def epoch(self, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key not in _UNPLOTTED:
                self.writer.add_scalar(tensorboard_tag(key), value, int(metrics["epoch"]))
        self.writer.flush()

    def hparams(self, hparams: Mapping[str, Any], history: list[dict[str, float]], stopper: EarlyStopping) -> None:
        """The run's hparams with its val accuracy at the last epoch (a search's objective) and at the best."""
        if self.writer is None or not hparams or not history:
            return
        self.writer.add_hparams(
            {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()},
            {"hparam/val_accuracy": history[-1]["val_accuracy"], "hparam/best_val_accuracy": stopper.best,
             "hparam/best_epoch": stopper.best_epoch},
            run_name=".",
        )


@dataclass
class _Progress:
    """Where the loop stands between epochs: what ``state.pt`` restores."""

    next_epoch: int
    stopper: EarlyStopping
    stopped: bool
    history: list[dict[str, float]]


def _load_resume_state(model: nn.Module, cfg: TrainConfig, state_path: Path) -> dict[str, Any] | None:
    """The saved state of an interrupted fit, its weights (and masks) loaded into ``model``; or None."""
    if not state_path.exists():
        return None
    resume = load_checkpoint(state_path)
    saved_arch = resume["metadata"].get("arch")
    if saved_arch != cfg.arch:
        raise ValueError(f"{state_path}: resuming a {saved_arch} run with arch {cfg.arch}")
    if PruningInfo.from_metadata(resume["metadata"], where=str(state_path)).structured:
        # Channels may have been removed since the model was built (an iterative schedule's later steps).
        conform_to_state_dict(model, resume["model"])
    # Weights (and masks) before the optimizer is built: its parameter order must match the saved one.
    load_state_into(model, resume["model"], source=state_path)
    return resume


def _restore_schedule(resume: Mapping[str, Any], schedule: PruningHook | None, state_path: Path) -> None:
    saved = resume["train_state"].get("schedule")
    if (saved is None) != (schedule is None):
        raise ValueError(f"{state_path}: the run was trained {'with' if saved else 'without'} a "
                         f"pruning schedule; resume it {'with' if saved else 'without'} one")
    if schedule is not None:
        try:
            schedule.load_state_dict(saved)
        except ValueError as e:
            raise ValueError(f"{state_path}: {e}") from None


def _restore(resume: Mapping[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
             cfg: TrainConfig, state_path: Path) -> _Progress:
    state = resume["train_state"]
    optimizer.load_state_dict(resume["optimizer"])
    for group in optimizer.param_groups:  # the config may change lr between runs; the config wins
        group["lr"] = cfg.lr
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    stopper = EarlyStopping(**{**state["early_stopping"], "patience": cfg.patience})
    _set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d (best val_accuracy %.4f at epoch %d)",
             state_path, state["epoch"], stopper.best, stopper.best_epoch)
    return _Progress(state["epoch"] + 1, stopper, state["stopped_early"], list(state["history"]))


def _best_is_state(resume: Mapping[str, Any]) -> bool:
    """Whether the saved state's own weights are the best epoch's (then no best.pt is kept beside it)."""
    state = resume["train_state"]
    return state["early_stopping"]["best_epoch"] == state["epoch"]


def _link(source: Path, target: Path) -> None:
    """``target`` as the same file as ``source``: a hard link, so the bytes are on disk once (a copy on
    file systems without links), replacing ``target`` atomically."""
    if target.exists() and os.path.samefile(source, target):
        return  # (rename() between two links of one file does nothing and would leave the temporary one)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _train_state(progress: _Progress, epoch: int, scaler: torch.amp.GradScaler | None,
                 schedule: PruningHook | None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "early_stopping": progress.stopper.state(),
        "stopped_early": progress.stopped,
        "history": progress.history,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
        "schedule": schedule.state_dict() if schedule is not None else None,
    }


def _steps_per_epoch(loader: Iterable, max_batches: int | None) -> int | None:
    """Optimisation steps in one epoch (None when the loader has no length and no cap is set)."""
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return min(total, max_batches) if max_batches is not None else total


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    cfg: TrainConfig,
    *,
    out_dir: str | Path,
    tb_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, float], Path | None], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
    hparams: Mapping[str, Any] | None = None,
    schedule: PruningHook | None = None,
) -> FitResult:
    """Train ``model`` with early stopping on ``val_accuracy``; resume from ``out_dir/checkpoint/``.

    Writes into ``out_dir``: ``config.yaml``, ``history.jsonl`` (one metrics row per epoch) and
    ``checkpoint/`` with ``state.pt`` (the whole state, rewritten every epoch) and, at the end,
    ``best.pt`` (the best epoch's weights, a checkpoint ``load_model`` reads).
    ``on_epoch(metrics, out_dir / "checkpoint")`` runs when the folder holds what a resume needs, and no
    more (it is what Ray Tune stores every epoch): ``state.pt``, and ``best.pt`` only while the best epoch
    is an earlier one (otherwise the state's weights are the best's). ``metadata`` (e.g.
    ``data_manifest_sha256``, ``pruning``) goes into every checkpoint. ``hparams`` (e.g. a trial's sparsity/optimizer/lr) go into the checkpoints' metadata and
    TensorBoard's HParams view. A model with pruning masks keeps them: pruned weights stay zero throughout.
    ``schedule`` (a ``PruningHook``) prunes the model as it trains: only epochs at its target can be the
    best, every row gets ``current_sparsity``, every checkpoint the schedule's ``pruning``, and ``state.pt``
    its state. On return the model holds the best epoch's weights.

    Under a torch.distributed process group (``detector.distributed``) every rank calls ``fit`` with the same
    model, config and ``out_dir`` contents (a rank other than 0 reads ``out_dir/checkpoint/`` to resume and
    writes nothing); ``on_epoch`` runs on every rank, with the checkpoint folder on rank 0 and ``None`` on
    the others. At the end fit checks that every rank holds the same model (weights, pruning masks) and
    stopped at the same epoch, and raises if not.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    state_path, best_path = ckpt_dir / "state.pt", ckpt_dir / "best.pt"
    # The best epoch's weights, kept beside the checkpoint folder while fitting: the folder links to them
    # only while they differ from state.pt's, so that each trial's storage holds one copy of a model.
    best_weights = out_dir / ".best.pt"
    primary = distributed.is_primary()  # the one rank that writes
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a rank's own GPU (DDP wants the index)
    precision = resolve_precision(cfg.precision, device)
    _check_arch(model, cfg.arch, PruningInfo.from_metadata(metadata or {}, where="fit metadata"))

    resume = _load_resume_state(model, cfg, state_path)
    if resume is not None and primary:
        _keep_resumed_best(model, resume, state_path, best_path, best_weights)
    model.to(device)
    if resume is not None:
        _restore_schedule(resume, schedule, state_path)
    if schedule is not None:
        # A fresh schedule prunes its first step here, before the optimizer takes the parameters: pruning
        # re-registers each weight as weight_orig, and the optimizer's saved state follows their order.
        schedule.begin(model, steps_per_epoch=_steps_per_epoch(train_loader, cfg.max_train_batches),
                       max_epochs=cfg.max_epochs)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if resume is not None:
        progress = _restore(resume, optimizer, scaler, cfg, state_path)
    else:
        seed_everything(cfg.seed)
        progress = _Progress(1, EarlyStopping(cfg.patience), False, [])
    if primary:
        save_yaml(cfg, out_dir / "config.yaml")

    net, eval_net = _nets(model, cfg, device)
    base_meta = {**(metadata or {}), "hparams": dict(hparams or {}), "arch": cfg.arch,
                 "image_size": cfg.image_size, "config": to_dict(cfg)}
    set_epoch = getattr(getattr(train_loader, "dataset", None), "set_epoch", None)
    with _TensorBoard(tb_dir if primary else None) as tensorboard:
        for epoch in range(progress.next_epoch, cfg.max_epochs + 1):
            if progress.stopped:
                break
            if set_epoch is not None:
                set_epoch(epoch)
            if schedule is not None and schedule.before_epoch(model, epoch):
                # Channels were removed or the weights rewound: a fresh optimizer over the parameters as they are.
                if cfg.channels_last:
                    model.to(memory_format=torch.channels_last)
                optimizer = build_optimizer(model, cfg)
                # and a fresh DDP: its buckets were made for the parameters as they were (channel pruning
                # changes their shapes in place)
                net, eval_net = _nets(model, cfg, device)
            on_step = (lambda: schedule.after_step(model)) if schedule is not None else None
            metrics = _epoch(net, eval_net, train_loader, val_loader, optimizer, scaler, cfg, device, precision, epoch,
                             on_step)
            epoch_meta = {**base_meta, "epoch": epoch}
            if schedule is not None:
                pruning = schedule.pruning(model)
                metrics["current_sparsity"] = pruning.achieved
                epoch_meta["pruning"] = pruning.to_dict()
            # Before its target a schedule's model is not the one asked for: it can be neither best nor stop the run.
            if schedule is None or schedule.at_target:
                progress.stopper = progress.stopper.update(metrics["val_accuracy"], epoch)
                progress.stopped = progress.stopper.should_stop
            if progress.stopper.best_epoch:
                metrics.update(best_val_accuracy=progress.stopper.best, best_epoch=progress.stopper.best_epoch)
            progress.history.append(metrics)
            epoch_meta["metrics"] = metrics
            if primary:
                _save_epoch(model, optimizer, progress, epoch, scaler, schedule, epoch_meta, out_dir)
                tensorboard.epoch(metrics)
            if on_epoch is not None:
                on_epoch(metrics, ckpt_dir if primary else None)
            if progress.stopped:
                log.info("early stop after epoch %d: no better val_accuracy for %d epochs (best %.4f at epoch %d)",
                         epoch, progress.stopper.bad_epochs, progress.stopper.best, progress.stopper.best_epoch)
        tensorboard.hparams(hparams or {}, progress.history, progress.stopper)

    if distributed.in_group():
        # Every rank trained the same model: a rank that differs now (masks, weights, where it stopped) is a bug.
        distributed.check_same_on_every_rank(
            {"epochs": len(progress.history), "stopped_early": progress.stopped,
             "best_epoch": progress.stopper.best_epoch, **distributed.fingerprints(model.state_dict())},
            "the ranks' models after training")
    if not progress.stopper.best_epoch:
        if schedule is not None and not schedule.at_target:
            raise ValueError(f"{out_dir}: the pruning schedule did not reach its target sparsity in "
                             f"max_epochs={cfg.max_epochs} epochs, so no model was kept")
        raise ValueError(f"{out_dir}: no epoch was trained (max_epochs={cfg.max_epochs}) and no best.pt exists")
    if primary:
        _link(best_weights, best_path)  # after the last report: for the caller, not for the trial's storage
        best_weights.unlink()
        load_state_into(model, load_checkpoint(best_path)["model"], source=best_path)
    distributed.broadcast_module(model)  # rank 0 read the best epoch's weights: every rank returns them
    return FitResult(
        best_epoch=progress.stopper.best_epoch,
        best_val_accuracy=progress.stopper.best,
        epochs_run=len(progress.history),
        stopped_early=progress.stopped,
        history=progress.history,
        best_checkpoint=best_path,
    )


def _keep_resumed_best(model: nn.Module, resume: Mapping[str, Any], state_path: Path, best_path: Path,
                       best_weights: Path) -> None:
    """Put a resumed run's best weights where the loop keeps them while fitting (``best_weights``)."""
    best_epoch = resume["train_state"]["early_stopping"]["best_epoch"]
    if _best_is_state(resume):
        save_checkpoint(best_weights, model, metadata=resume["metadata"])
        best_path.unlink(missing_ok=True)  # a best.pt left by a crash before the state was written
    elif best_epoch:
        if not best_path.is_file():
            raise ValueError(f"{state_path}: its best epoch ({best_epoch}) is not its own, and {best_path} is "
                             "missing; the checkpoint folder is incomplete")
        _link(best_path, best_weights)


def _save_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, progress: _Progress, epoch: int,
                scaler: torch.amp.GradScaler | None, schedule: PruningHook | None, epoch_meta: dict[str, Any],
                out_dir: Path) -> None:
    """An epoch's files: the best weights when this epoch is the best, ``state.pt``, ``history.jsonl``.

    Ordered so that a crash between two writes leaves a folder that resumes: a state whose best is its own
    epoch ignores a best.pt beside it, and a best.pt is in place before a state that needs it."""
    ckpt_dir = out_dir / "checkpoint"
    state_path, best_path, best_weights = ckpt_dir / "state.pt", ckpt_dir / "best.pt", out_dir / ".best.pt"
    new_best = progress.stopper.best_epoch == epoch
    if new_best:
        save_checkpoint(best_weights, model, metadata=epoch_meta)
    elif best_weights.exists() and not best_path.exists():
        _link(best_weights, best_path)
    save_checkpoint(state_path, model, metadata=epoch_meta, optimizer=optimizer,
                    extra={"train_state": _train_state(progress, epoch, scaler, schedule)})
    if new_best:
        best_path.unlink(missing_ok=True)
    _write_history(out_dir / "history.jsonl", progress.history)


def _nets(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(what trains, what validates): ``model`` compiled when ``cfg.compile``; under a process group the
    training one in DDP too. Validation runs without DDP, whose forward may start a collective, on each
    rank's share of the data."""
    compiled = torch.compile(model) if cfg.compile else model
    if not distributed.in_group():
        return compiled, compiled
    ddp = distributed.data_parallel(model, device)
    return (torch.compile(ddp) if cfg.compile else ddp), compiled


def _epoch(net: nn.Module, eval_net: nn.Module, train_loader: Iterable, val_loader: Iterable,
           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, cfg: TrainConfig,
           device: torch.device, precision: str, epoch: int, on_step: Callable[[], None] | None) -> dict[str, float]:
    """One epoch of training, then validation: the epoch's metrics row (the running best is added by fit)."""
    train = train_one_epoch(net, train_loader, optimizer, device=device, precision=precision, scaler=scaler,
                            channels_last=cfg.channels_last, max_batches=cfg.max_train_batches, epoch=epoch,
                            on_step=on_step)
    # The last step's BatchNorm statistics are each rank's own: validate (and save) rank 0's model everywhere.
    distributed.broadcast_buffers(getattr(eval_net, "_orig_mod", eval_net))
    val = evaluate(eval_net, val_loader, device=device, precision=precision, channels_last=cfg.channels_last,
                   prefix="val", max_batches=cfg.max_val_batches)
    metrics: dict[str, float] = {
        "epoch": epoch,
        "train_loss": train["train_loss"],
        "train_accuracy": train["train_accuracy"],
        "val_loss": val["val_loss"],
        "val_accuracy": val["val_accuracy"],
        "lr": optimizer.param_groups[0]["lr"],
        **{k: train[k] for k in PERF_METRICS},
    }
    log.info("epoch %d: train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.0f img/s, wait %.1fs)",
             epoch, metrics["train_loss"], metrics["train_accuracy"], metrics["val_loss"], metrics["val_accuracy"],
             metrics["images_per_s"], metrics["data_wait_s"])
    return metrics
