"""The experiment config: everything ``detector run`` does, as one validated, saved document.

A YAML file (``jobs/configs/paper.yaml``, ``jobs/configs/demo.yaml``) maps onto ``ExperimentConfig``.
Stage sections hold only what differs from the shared ``train`` section, so the paper's protocol reads
as in the paper: the baseline at batch 16 / lr 1e-4, the searches at batch 64 for 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detector.config import ConfigError, apply_override, from_dict, load_yaml, to_dict
from detector.job.runfolder import model_name
from detector.prune.channels import MAX_SPARSITY as MAX_CHANNEL_SPARSITY
from detector.prune.schedule import PruningSchedule, ScheduleKeys
from detector.train import TrainConfig

STAGES = ("prepare", "baseline", "search", "finetune", "evaluate", "report")


@dataclass(frozen=True)
class DataSection:
    # Where the shards live (a local/shared path or a pyarrow URI). Relative paths are taken from the run folder.
    path: str = "data"
    # Raw datasets to import when `path` has no manifest.json yet (keys as in `detector prepare`).
    faces140k: str | None = None
    celebdf: str | None = None
    synthbuster: str | None = None
    folder: str | None = None
    demo: bool = False
    format: Literal["parquet", "webdataset"] = "parquet"
    seed: int = 0
    # Decode once (beyond the paper): derive a dataset of resized pixels from `path` (`detector pixels`,
    # at train.image_size) and train and evaluate from it. Exact, the same batches; ~147 KB per image
    # at 224 px; reused while it matches `path`. See docs/data.md.
    pixels: bool = False
    # Where the pixels go: default "<path>-pixels-<image_size>"; relative paths are taken from the run folder.
    pixels_path: str | None = None


@dataclass(frozen=True)
class SearchSection(ScheduleKeys):
    # ScheduleKeys: how each trial and fine-tune reaches its sparsity (beyond the paper; docs/pruning.md,
    # "Schedules"): `schedule` "oneshot" (the paper's: prune the baseline once, then train), "gradual" (Zhu &
    # Gupta's cubic ramp over the first `gradual_epochs` epochs, global L1 masks recomputed every
    # `prune_every_steps` steps from `gradual_initial_sparsity`; unstructured only) or "iterative"
    # (`iterative_steps` steps, geometric in the weights kept, `iterative_epochs` epochs of training after
    # each; `rewind_epoch`: rewind the weights to that epoch's after every later step, as in lottery-ticket
    # rewinding; null: no rewinding).
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    # How pruned models lose their weights: "unstructured" (global L1, the paper's: zeros in dense
    # tensors) or "structured" (L1 channel pruning: `sparsities` of the prunable weights removed).
    method: Literal["unstructured", "structured"] = "unstructured"
    trials_per_sparsity: int = 5
    optimizers: tuple[str, ...] = ("adam", "sgd")
    lr_min: float = 1e-6
    lr_max: float = 1e-4
    metric: str = "val_accuracy"
    direction: Literal["max", "min"] = "max"  # "min" for a loss, e.g. metric: val_loss
    seed: int = 0
    # Optuna's TPE samples at random for its first n trials (Optuna's default is 10).
    tpe_startup_trials: int = 10
    # Where the Optuna studies live: null = a journal file in the run folder (RUN/search/optuna.journal), or
    # an RDB URL (sqlite:///..., postgresql://user@host/db) shared by a team's runs; optuna-dashboard reads both.
    storage: str | None = None
    # What the search looks for (beyond the paper, which searches a fixed grid):
    #   grid      the paper's: one Optuna search and fine-tune per sparsity in `sparsities`;
    #   frontier  the largest sparsity whose fine-tuned model is non-inferior to the baseline on validation
    #             data (val accuracy >= the baseline's - frontier_margin), by rounds: first `sparsities`, then
    #             `frontier_parallel` probes inside the bracket until it is `frontier_resolution` wide
    #             (detector.job.frontier).
    #   pareto    accuracy against size: one multi-objective Optuna study over sparsity (in
    #             [pareto_sparsity_min, pareto_sparsity_max], steps of 0.005) beside optimizer and lr,
    #             `pareto_trials` trials, `objectives` from PARETO_OBJECTIVES; `pareto_models` models of the
    #             front (spread over its sparsities) are fine-tuned and evaluated (detector.job.pareto).
    mode: Literal["grid", "frontier", "pareto"] = "grid"
    frontier_margin: float = 0.005
    frontier_resolution: float = 0.025
    frontier_parallel: int = 1
    objectives: tuple[str, ...] = ("val_accuracy", "nonzero_params")
    pareto_trials: int = 20
    pareto_sparsity_min: float = 0.1
    pareto_sparsity_max: float = 0.95
    pareto_models: int = 3
    # Stop weak trials early with ASHA (beyond the paper; off in paper.yaml).
    scheduler: Literal["none", "asha"] = "none"
    asha_grace_period: int = 2
    asha_reduction_factor: int = 2

    def __post_init__(self) -> None:
        if not self.sparsities:
            raise ValueError("search.sparsities: give at least one sparsity")
        for s in self.sparsities:
            if not 0.0 < s < 1.0:
                raise ValueError(f"search.sparsities: {s} is not in (0, 1)")
        if self.method == "structured" and max(self.sparsities) > MAX_CHANNEL_SPARSITY:
            raise ValueError(f"search.sparsities: channel pruning takes budgets up to {MAX_CHANNEL_SPARSITY} "
                             f"(calibrated and tested up to there), got {max(self.sparsities)}")
        try:
            schedule = self.pruning_schedule()
            schedule.check(min(self.sparsities), method=self.method)
        except ValueError as e:
            raise ValueError(f"search.{e}") from None
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"search.sparsities: duplicates in {list(self.sparsities)}")
        names = [model_name(s) for s in self.sparsities]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared:  # each sparsity's model, evaluation and TensorBoard run are named by its whole percent
            raise ValueError(f"search.sparsities: {list(self.sparsities)} give the model name {shared[0]} twice; "
                             "keep sparsities at least one percent apart")
        if self.trials_per_sparsity < 1:
            raise ValueError("search.trials_per_sparsity must be >= 1")
        bad = set(self.optimizers) - {"adam", "sgd"}
        if not self.optimizers or bad:
            raise ValueError(f"search.optimizers: {sorted(bad) or '[]'} not allowed; choose from adam, sgd")
        if not 0.0 <= self.frontier_margin < 0.5:
            raise ValueError(f"search.frontier_margin: {self.frontier_margin} is not in [0, 0.5)")
        if not 0.0 < self.frontier_resolution < 0.5:
            raise ValueError(f"search.frontier_resolution: {self.frontier_resolution} is not in (0, 0.5)")
        if self.frontier_parallel < 1:
            raise ValueError(f"search.frontier_parallel: {self.frontier_parallel} must be >= 1")
        from detector.job.pareto import PARETO_OBJECTIVES

        bad = [o for o in self.objectives if o not in PARETO_OBJECTIVES]
        if bad or len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"search.objectives: {list(self.objectives)}: give two or more distinct objectives from "
                             f"{', '.join(PARETO_OBJECTIVES)}" + (f" ({bad} are not among them)" if bad else ""))
        if self.pareto_trials < 2 or not 1 <= self.pareto_models <= self.pareto_trials:
            raise ValueError(f"search.pareto_trials / pareto_models: need pareto_trials >= 2 and "
                             f"1 <= pareto_models <= pareto_trials, got {self.pareto_trials}, {self.pareto_models}")
        if self.mode == "pareto" and self.scheduler != "none":
            raise ValueError("search.scheduler: ASHA ranks trials on one metric; a Pareto search has several "
                             "(use scheduler: none with mode: pareto)")
        if not 0.0 < self.pareto_sparsity_min < self.pareto_sparsity_max <= 0.95:
            raise ValueError(f"search.pareto_sparsity_min/max: need 0 < min < max <= 0.95, got "
                             f"{self.pareto_sparsity_min}, {self.pareto_sparsity_max}")
        if not 0.0 < self.lr_min < self.lr_max:
            raise ValueError(f"search.lr_min/lr_max: need 0 < lr_min < lr_max, got {self.lr_min}, {self.lr_max}")

    def pruning_schedule(self) -> PruningSchedule:
        """The schedule every search trial and fine-tune follows (``stages.train_stage(schedule=...)``)."""
        return PruningSchedule.from_keys(self)


@dataclass(frozen=True)
class ResourcesSection:
    # Ray resources held by each trial (search trials, the baseline, fine-tunes and evaluations).
    cpus_per_trial: float = 8.0
    gpus_per_trial: float = 1.0
    max_concurrent_trials: int = 0  # 0 = as many as the cluster fits
    max_failures: int = 3  # restarts of a trial whose worker died, from its last checkpoint
    # Embedded local Ray only (no --address): logical CPUs to declare; 0 = the machine's count.
    local_num_cpus: int = 0


@dataclass(frozen=True)
class EvaluateSection:
    # Evaluations run one at a time by default: models timed side by side on shared CPUs would report
    # each other's load as latency. Raise it where every trial has a GPU of its own.
    concurrent_trials: int = 1
    batch_size: int = 128
    latency_repeats: int = 50
    throughput_batch: int = 64
    bootstrap: int = 1000


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataSection = field(default_factory=DataSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Per-stage overrides of `train` (keys are TrainConfig fields).
    baseline: dict[str, Any] = field(default_factory=dict)
    search_train: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    search: SearchSection = field(default_factory=SearchSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    # Where Ray Tune keeps trial checkpoints and results: null = RUN/tune; or an absolute path on shared
    # storage, or a pyarrow URI (s3://bucket/prefix, gs://...); the run's folder name is appended.
    storage: str | None = None

    def __post_init__(self) -> None:
        if self.storage is not None and "://" not in self.storage and not Path(self.storage).is_absolute():
            raise ValueError(f"storage: {self.storage!r} must be an absolute path or a URI such as s3://bucket/runs")
        # Build each stage's TrainConfig now, so a bad override fails before any trial starts.
        for section in ("baseline", "search_train", "finetune"):
            size = self.stage_train(section).image_size  # type: ignore[arg-type]
            if self.data.pixels and size != self.train.image_size:
                raise ValueError(f"{section}.image_size: {size} differs from train.image_size "
                                 f"({self.train.image_size}); data.pixels stores one size")
        for section in ("search_train", "finetune"):  # the stages that prune
            self.search.pruning_schedule().check_epochs(self.stage_train(section).max_epochs,  # type: ignore[arg-type]
                                                        where=f"{section}.max_epochs")

    def stage_train(self, section: Literal["baseline", "search_train", "finetune"], **extra: Any) -> TrainConfig:
        """The TrainConfig of a stage: `train`, then the stage's overrides, then ``extra`` (e.g. a trial's lr)."""
        merged = {**to_dict(self.train), **getattr(self, section), **extra}
        try:
            return from_dict(TrainConfig, merged, where=section)
        except ConfigError as e:
            raise ConfigError(f"{section}: {e}") from e


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``key.sub=value`` overrides, validate; errors name the key."""
    data = load_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
