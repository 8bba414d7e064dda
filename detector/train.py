"""The one training loop: the baseline (§2.2), every search trial and every fine-tune (§2.3).

Differences between those runs are config (``TrainConfig``), never copies of this loop. ``fit`` trains
with early stopping on validation accuracy, checkpoints the whole state every epoch into the run folder's
checkpoint folder (``detector.trial_dir.TrialDir``: a self-contained folder that Ray Tune can wrap with
``Checkpoint.from_directory``), resumes from it, and leaves the best epoch's weights in the model. One
epoch's passes over the data (training, validation) are ``detector.passes``.

Metrics are flat dicts with stable names (``train_loss``, ``val_accuracy``, ...); the same dict goes
to TensorBoard (``detector.tensorboard_log``), to ``on_epoch`` (e.g. ``tune.report``) and to the history file.

A pruning schedule (``detector.prune.schedule``) runs inside this loop as a ``PruningHook``: fit calls it
before every epoch and after every optimisation step, and it may re-prune the model there.

Data-parallel: inside a torch.distributed process group (``detector.distributed``: Ray Train's workers, or
``spawn``) the same ``fit`` runs on every rank. The loaders read each rank's share, DDP averages the
gradients, the epoch's metrics are summed over the ranks (so every rank sees the same numbers and takes the
same early-stopping decision), and only rank 0 writes: checkpoints, the history, TensorBoard.
Every rank calls ``fit`` with the same model, config and ``out_dir`` contents (a rank other than 0 reads the
checkpoint folder to resume); ``on_epoch`` runs on every rank, with the checkpoint folder on rank 0 and ``None``
on the others. At the end fit checks that every rank holds the same model (weights, pruning masks) and stopped
at the same epoch, and raises if not.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, Protocol

import torch
from torch import nn

from detector import distributed
from detector.config import AtLeastOne, Match, NonNegative, OneOf, Range, Seed, check_fields, save_yaml, to_dict
from detector.device import Precision, resolve_device, resolve_precision, seed_everything
from detector.model import ARCHITECTURES, build_model
from detector.passes import epoch_length, evaluate, train_one_epoch
from detector.prune import PruningInfo
from detector.prune.unstructured import dense_state_dict
from detector.tensorboard_log import PERF_METRICS, TensorBoardLog
from detector.trial_dir import TrialDir, rng_state, set_rng_state

log = logging.getLogger(__name__)

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
    into the saved state, ``load_state_dict`` takes it back on resume.
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


# --- the optimizer --------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over the model's parameters where they are now (move the model to its device first)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel per step instead of one per tensor group: a few % of step time on a GPU.
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           fused=fused or None)


# --- the loop -------------------------------------------------------------------------------------


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


def _own_device(name: str) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a rank's own GPU (DDP wants the index)
    return device


@dataclass
class _Progress:
    """Where the loop stands between epochs: what the saved state restores."""

    next_epoch: int
    stopper: EarlyStopping
    stopped: bool
    history: list[dict[str, float]]

    def record(self, metrics: dict[str, float], epoch: int, *, counts: bool) -> None:
        """Add an epoch's row, with the running best; ``counts``: whether the epoch may be the best and may
        stop the run."""
        if counts:
            self.stopper = self.stopper.update(metrics["val_accuracy"], epoch)
            self.stopped = self.stopper.should_stop
        if self.stopper.best_epoch:
            metrics.update(best_val_accuracy=self.stopper.best, best_epoch=self.stopper.best_epoch)
        self.history.append(metrics)

    def result(self, best_checkpoint: Path) -> FitResult:
        return FitResult(best_epoch=self.stopper.best_epoch, best_val_accuracy=self.stopper.best,
                         epochs_run=len(self.history), stopped_early=self.stopped, history=self.history,
                         best_checkpoint=best_checkpoint)


@dataclass(eq=False)
class _Trainer:
    """What an epoch trains and validates with: the model, its optimizer and (fp16) gradient scaler, and
    the nets that run the model (``_nets``). A pruning schedule that replaces the parameters asks for new
    ones (``rebuild``)."""

    model: nn.Module
    cfg: TrainConfig
    device: torch.device
    precision: str
    optimizer: torch.optim.Optimizer = field(init=False)
    scaler: torch.amp.GradScaler | None = field(init=False)
    net: nn.Module = field(init=False)  # what trains
    eval_net: nn.Module = field(init=False)  # what validates

    def __post_init__(self) -> None:
        self.new_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def new_optimizer(self) -> None:
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.cfg)

    def new_nets(self) -> None:
        self.net, self.eval_net = _nets(self.model, self.cfg, self.device)

    def rebuild(self) -> None:
        """Channels were removed or the weights rewound: a fresh optimizer over the parameters as they are,
        and a fresh DDP (its buckets were made for the parameters as they were: channel pruning changes
        their shapes in place)."""
        self.new_optimizer()
        self.new_nets()

    def epoch(self, train_loader: Iterable, val_loader: Iterable, epoch: int,
              on_step: Callable[[], None] | None) -> dict[str, float]:
        """One epoch of training, then validation: the epoch's metrics row (the running best is added by fit)."""
        cfg = self.cfg
        train = train_one_epoch(self.net, train_loader, self.optimizer, device=self.device, precision=self.precision,
                                scaler=self.scaler, channels_last=cfg.channels_last, max_batches=cfg.max_train_batches,
                                epoch=epoch, on_step=on_step)
        # The last step's BatchNorm statistics are each rank's own: validate (and save) rank 0's model everywhere.
        distributed.broadcast_buffers(getattr(self.eval_net, "_orig_mod", self.eval_net))
        val = evaluate(self.eval_net, val_loader, device=self.device, precision=self.precision,
                       channels_last=cfg.channels_last, prefix="val", max_batches=cfg.max_val_batches)
        metrics: dict[str, float] = {
            "epoch": epoch,
            "train_loss": train["train_loss"],
            "train_accuracy": train["train_accuracy"],
            "val_loss": val["val_loss"],
            "val_accuracy": val["val_accuracy"],
            "lr": self.optimizer.param_groups[0]["lr"],
            **{k: train[k] for k in PERF_METRICS},
        }
        log.info("epoch %d: train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.0f img/s, wait %.1fs)",
                 epoch, metrics["train_loss"], metrics["train_accuracy"], metrics["val_loss"], metrics["val_accuracy"],
                 metrics["images_per_s"], metrics["data_wait_s"])
        return metrics


def _nets(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(what trains, what validates): ``model`` compiled when ``cfg.compile``; under a process group the
    training one in DDP too. Validation runs without DDP, whose forward may start a collective, on each
    rank's share of the data."""
    compiled = torch.compile(model) if cfg.compile else model
    if not distributed.in_group():
        return compiled, compiled
    ddp = distributed.data_parallel(model, device)
    return (torch.compile(ddp) if cfg.compile else ddp), compiled


def _start(resume: Mapping[str, Any] | None, trainer: _Trainer, state_path: Path) -> _Progress:
    """Where the loop starts: at epoch 1 from the config's seed, or after a resumed state's epoch with its
    optimizer, gradient scaler and random number generators."""
    cfg = trainer.cfg
    if resume is None:
        seed_everything(cfg.seed)
        return _Progress(1, EarlyStopping(cfg.patience), False, [])
    state = resume["train_state"]
    trainer.optimizer.load_state_dict(resume["optimizer"])
    for group in trainer.optimizer.param_groups:  # the config may change lr between runs; the config wins
        group["lr"] = cfg.lr
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    stopper = EarlyStopping(**{**state["early_stopping"], "patience": cfg.patience})
    set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d (best val_accuracy %.4f at epoch %d)",
             state_path, state["epoch"], stopper.best, stopper.best_epoch)
    return _Progress(state["epoch"] + 1, stopper, state["stopped_early"], list(state["history"]))


def _begin_schedule(schedule: PruningHook | None, model: nn.Module, resume: Mapping[str, Any] | None,
                    state_path: Path, cfg: TrainConfig, steps_per_epoch: int | None) -> None:
    """Restore a resumed run's schedule (refusing to resume with another one, or with or without one), then
    begin it on the model now on its device.

    Before the optimizer takes the parameters: a fresh schedule prunes its first step here, pruning
    re-registers each weight as weight_orig, and the optimizer's saved state follows their order."""
    if resume is not None:
        saved = resume["train_state"].get("schedule")
        if (saved is None) != (schedule is None):
            raise ValueError(f"{state_path}: the run was trained {'with' if saved else 'without'} a "
                             f"pruning schedule; resume it {'with' if saved else 'without'} one")
        if schedule is not None:
            try:
                schedule.load_state_dict(saved)
            except ValueError as e:
                raise ValueError(f"{state_path}: {e}") from None
    if schedule is not None:
        schedule.begin(model, steps_per_epoch=steps_per_epoch, max_epochs=cfg.max_epochs)


def _train_state(progress: _Progress, epoch: int, scaler: torch.amp.GradScaler | None,
                 schedule: PruningHook | None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "early_stopping": progress.stopper.state(),
        "stopped_early": progress.stopped,
        "history": progress.history,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "schedule": schedule.state_dict() if schedule is not None else None,
    }


def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable, cfg: TrainConfig, *, out_dir: str | Path,
        tb_dir: str | Path | None = None, on_epoch: Callable[[dict[str, float], Path | None], None] | None = None,
        metadata: Mapping[str, Any] | None = None, hparams: Mapping[str, Any] | None = None,
        schedule: PruningHook | None = None) -> FitResult:
    """Train ``model`` with early stopping on ``val_accuracy``; resume from ``out_dir``'s checkpoint folder.

    ``out_dir`` is a ``TrialDir`` (``detector.trial_dir``: the config, one metrics row per epoch, the whole
    state every epoch and, at the end, the best epoch's weights, a checkpoint ``load_model`` reads).
    ``on_epoch(metrics, checkpoint folder)`` runs when that folder holds what a resume needs, and no more (it is
    what Ray Tune stores every epoch). ``metadata`` (e.g. ``data_manifest_sha256``, ``pruning``) goes into every
    checkpoint; ``hparams`` (e.g. a trial's sparsity/optimizer/lr) into the checkpoints' metadata and
    TensorBoard's HParams view. A model with pruning masks keeps them: pruned weights stay zero throughout.
    ``schedule`` (a ``PruningHook``) prunes the model as it trains: only epochs at its target can be the best,
    every row gets ``current_sparsity``, every checkpoint the schedule's ``pruning``, and the saved state its
    state. On return the model holds the best epoch's weights. Data-parallel: every rank calls it (module doc).
    """
    trial = TrialDir(Path(out_dir))
    primary = distributed.is_primary()  # the one rank that writes
    device = _own_device(cfg.device)
    _check_arch(model, cfg.arch, PruningInfo.from_metadata(metadata or {}, where="fit metadata"))
    resume = trial.load_resume(model, cfg.arch, keep_best=primary)
    model.to(device)
    _begin_schedule(schedule, model, resume, trial.state, cfg, epoch_length(train_loader, cfg.max_train_batches))
    # the optimizer takes the parameters as the schedule's first step left them
    trainer = _Trainer(model, cfg, device, resolve_precision(cfg.precision, device))
    progress = _start(resume, trainer, trial.state)
    if primary:
        save_yaml(cfg, trial.config)
    trainer.new_nets()
    base_meta = {**(metadata or {}), "hparams": dict(hparams or {}), "arch": cfg.arch,
                 "image_size": cfg.image_size, "config": to_dict(cfg)}
    set_epoch = getattr(getattr(train_loader, "dataset", None), "set_epoch", None)
    on_step = (lambda: schedule.after_step(model)) if schedule is not None else None
    # a resumed fit may find epochs past its checkpoint in the run (written before that checkpoint was saved)
    with TensorBoardLog(tb_dir if primary else None,
                        purge_step=progress.next_epoch if resume is not None else None) as tensorboard:
        for epoch in range(progress.next_epoch, cfg.max_epochs + 1):
            if progress.stopped:
                break
            if set_epoch is not None:
                set_epoch(epoch)
            if schedule is not None and schedule.before_epoch(model, epoch):
                trainer.rebuild()
            metrics = trainer.epoch(train_loader, val_loader, epoch, on_step)
            epoch_meta = {**base_meta, "epoch": epoch}
            if schedule is not None:
                pruning = schedule.pruning(model)
                metrics["current_sparsity"] = pruning.achieved
                epoch_meta["pruning"] = pruning.to_dict()
            # Before its target a schedule's model is not the one asked for: it can be neither best nor stop the run.
            progress.record(metrics, epoch, counts=schedule is None or schedule.at_target)
            epoch_meta["metrics"] = metrics
            if primary:
                trial.save_epoch(model, optimizer=trainer.optimizer, metadata=epoch_meta,
                                 train_state=_train_state(progress, epoch, trainer.scaler, schedule))
                tensorboard.epoch(metrics)
            if on_epoch is not None:
                on_epoch(metrics, trial.checkpoint_dir if primary else None)
            if progress.stopped:
                log.info("early stop after epoch %d: no better val_accuracy for %d epochs (best %.4f at epoch %d)",
                         epoch, progress.stopper.bad_epochs, progress.stopper.best, progress.stopper.best_epoch)
        tensorboard.hparams(hparams or {}, progress.history, best=progress.stopper.best,
                            best_epoch=progress.stopper.best_epoch)

    _check_every_rank_agrees(model, progress)
    if not progress.stopper.best_epoch:
        raise _no_model_kept(trial, cfg, schedule)
    if primary:
        trial.finish(model)
    distributed.broadcast_module(model)  # rank 0 read the best epoch's weights: every rank returns them
    return progress.result(trial.best)


def _check_every_rank_agrees(model: nn.Module, progress: _Progress) -> None:
    """Every rank trained the same model: a rank that differs now (masks, weights, where it stopped) is a bug."""
    if distributed.in_group():
        distributed.check_same_on_every_rank(
            {"epochs": len(progress.history), "stopped_early": progress.stopped,
             "best_epoch": progress.stopper.best_epoch, **distributed.fingerprints(model.state_dict())},
            "the ranks' models after training")


def _no_model_kept(trial: TrialDir, cfg: TrainConfig, schedule: PruningHook | None) -> ValueError:
    if schedule is not None and not schedule.at_target:
        return ValueError(f"{trial.root}: the pruning schedule did not reach its target sparsity in "
                          f"max_epochs={cfg.max_epochs} epochs, so no model was kept")
    return ValueError(f"{trial.root}: no epoch was trained (max_epochs={cfg.max_epochs}) and no "
                      f"{trial.best.name} exists")
