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
from detector.evaluate.metrics import CALIBRATIONS, PRIMARY_CHOICES
from detector.evaluate.robustness import RobustnessSection
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
class SearchSection:
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    # How pruned models lose their weights: "unstructured" (global L1, the paper's: zeros in dense
    # tensors) or "structured" (L1 channel pruning: `sparsities` of the prunable weights removed).
    method: Literal["unstructured", "structured"] = "unstructured"
    trials_per_sparsity: int = 5
    optimizers: tuple[str, ...] = ("adam", "sgd")
    lr_min: float = 1e-6
    lr_max: float = 1e-4
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"  # "min" for a loss, e.g. metric: val_loss
    # Which epoch of a trial its objective is taken from: "last" (the paper's "maximize the validation
    # accuracy" of the 10-epoch run as it ends) or "best" (its best epoch; only for metric val_accuracy,
    # the one the training loop tracks per epoch). detector.job.selection.objective_key names the value.
    objective: Literal["last", "best"] = "last"
    seed: int = 0
    # Optuna's TPE samples at random for its first n trials (Optuna's default is 10).
    tpe_startup_trials: int = 10
    # Where the Optuna studies live: null = a journal file in the run folder (RUN/search/optuna.journal), or
    # an RDB URL (sqlite:///..., postgresql://user@host/db) shared by a team's runs; optuna-dashboard reads both.
    storage: str | None = None
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
        if self.method == "structured" and max(self.sparsities) >= 0.9:
            raise ValueError(f"search.sparsities: channel pruning takes budgets below 0.9, got {max(self.sparsities)}")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"search.sparsities: duplicates in {list(self.sparsities)}")
        if self.trials_per_sparsity < 1:
            raise ValueError("search.trials_per_sparsity must be >= 1")
        bad = set(self.optimizers) - {"adam", "sgd"}
        if not self.optimizers or bad:
            raise ValueError(f"search.optimizers: {sorted(bad) or '[]'} not allowed; choose from adam, sgd")
        if not 0.0 < self.lr_min < self.lr_max:
            raise ValueError(f"search.lr_min/lr_max: need 0 < lr_min < lr_max, got {self.lr_min}, {self.lr_max}")
        if self.objective == "best" and self.metric != "val_accuracy":
            raise ValueError(f"search.objective: best is tracked for metric val_accuracy only, not {self.metric!r}; "
                             "use objective: last")


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
    # DataLoader workers that decode (and perturb) test images beside the model.
    num_workers: int = 0
    # The set of the paper's Fig 5, Table 5's first column and the headline conclusions: this source's test
    # set when the test split has it beside others (the paper's balanced 140k test set), else the whole test
    # split; "combined" always takes the whole test split.
    primary_set: str = "faces140k"
    # How the validation-calibrated threshold is chosen on combined_val (never on test): "eer" (fakes
    # predicted real as often as reals predicted fake) or "accuracy" (the highest val accuracy).
    threshold_calibration: Literal["eer", "accuracy"] = "eer"
    # Every model also scored on perturbed test images (JPEG, blur, down-scaling, format equalisation).
    robustness: RobustnessSection = field(default_factory=RobustnessSection)

    def __post_init__(self) -> None:
        if self.primary_set not in PRIMARY_CHOICES:
            raise ValueError(f"evaluate.primary_set: {self.primary_set!r} is not one of {', '.join(PRIMARY_CHOICES)}")
        if self.threshold_calibration not in CALIBRATIONS:
            raise ValueError(f"evaluate.threshold_calibration: {self.threshold_calibration!r} is not one of "
                             f"{', '.join(CALIBRATIONS)}")
        if self.num_workers < 0:
            raise ValueError(f"evaluate.num_workers: {self.num_workers} is negative")


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
