"""The experiment config: everything ``detector run`` does, as one validated, saved document.

A YAML file (``jobs/configs/paper.yaml``, ``jobs/configs/demo.yaml``) maps onto ``ExperimentConfig``.
Stage sections hold only what differs from the shared ``train`` section, so the paper's protocol reads
as in the paper: the baseline at batch 16 / lr 1e-4, the searches at batch 64 for 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from detector.config import (
    AtLeastOne,
    ConfigError,
    Items,
    Match,
    NonEmpty,
    NonNegative,
    OneOf,
    Range,
    Seed,
    check_fields,
    fill_saved_defaults,
    from_dict,
    from_dict_with_overrides,
    load_yaml,
    to_dict,
)
from detector.distributed import per_rank_batch
from detector.evaluate.metrics import CALIBRATIONS
from detector.evaluate.robustness import RobustnessSection
from detector.evaluate.sets import PRIMARY_CHOICES
from detector.job.pareto import PARETO_OBJECTIVES
from detector.job.runfolder import model_name
from detector.prune.channels import MAX_SPARSITY as MAX_CHANNEL_SPARSITY
from detector.prune.schedule import PruningSchedule, ScheduleKeys
from detector.train import OBJECTIVES, TrainConfig

STAGES = ("prepare", "baseline", "search", "finetune", "evaluate", "report")
CONTROL_SPARSITY = 0.0  # the dense control's place among the sparsities: nothing pruned (model_name: dense-ft)


@dataclass(frozen=True)
class DataSection:
    # Where the shards live (a local/shared path or a pyarrow URI). Relative paths are taken from the run folder.
    path: NonEmpty = "data"
    # Raw datasets to import when `path` has no manifest.json yet (keys as in `detector prepare`).
    faces140k: NonEmpty | None = None
    celebdf: NonEmpty | None = None
    synthbuster: NonEmpty | None = None
    folder: NonEmpty | None = None
    demo: bool = False
    format: Literal["parquet", "webdataset"] = "parquet"
    seed: Seed = 0
    # Decode once (beyond the paper): derive a dataset of resized pixels from `path` (`detector pixels`,
    # at train.image_size) and train and evaluate from it. Exact, the same batches; ~147 KB per image
    # at 224 px; reused while it matches `path`. See docs/data.md.
    pixels: bool = False
    # Where the pixels go: default "<path>-pixels-<image_size>"; relative paths are taken from the run folder.
    pixels_path: NonEmpty | None = None

    def __post_init__(self) -> None:
        check_fields(self)


# A pruning budget: a fraction of the prunable weights, strictly between none and all.
_Sparsity = Annotated[float, Range(0, 1, low_open=True, high_open=True)]
_LearningRate = Annotated[float, Range(0, low_open=True)]


# A search mode's own keys are a section of their own (search.frontier, search.pareto, search.asha). Their
# values are checked against their declarations (type, range, names) in every mode: a value that no mode
# takes is a mistake wherever it stands, and a saved config holds only valid values. The rules across a
# mode's keys (pareto.models <= pareto.trials, ...) apply only while that mode is on: a grid search does not
# refuse a Pareto setting it never reads.
@dataclass(frozen=True)
class FrontierSection:
    """``search.frontier``: the frontier search's rule (``mode: frontier``; detector.job.frontier)."""

    # non-inferior: a fine-tuned model's val accuracy >= the baseline's - margin
    margin: Annotated[float, Range(0, 0.5, high_open=True)] = 0.005
    # the search stops when the bracket (last non-inferior probe, first inferior one) is this narrow
    resolution: Annotated[float, Range(0, 0.5, low_open=True, high_open=True)] = 0.025
    parallel: AtLeastOne = 1  # probes per refinement round (1: bisection)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ParetoSection:
    """``search.pareto``: the multi-objective search (``mode: pareto``; detector.job.pareto)."""

    # what the front trades off: two or more of PARETO_OBJECTIVES
    objectives: Annotated[tuple[Annotated[str, OneOf(tuple(PARETO_OBJECTIVES))], ...],
                          Items(at_least=2, unique=True)] = ("val_accuracy", "nonzero_params")
    trials: Annotated[int, Range(2)] = 20
    # the sparsity is searched in [sparsity_min, sparsity_max], in steps of SPARSITY_STEP
    sparsity_min: _Sparsity = 0.1
    sparsity_max: Annotated[float, Range(0, 0.95, low_open=True)] = 0.95
    models: AtLeastOne = 3  # models of the front (spread over its sparsities) fine-tuned and evaluated

    def __post_init__(self) -> None:
        check_fields(self)

    def check_mode(self) -> None:
        """The rules across these keys: ``SearchSection.validate`` applies them when mode is pareto."""
        if self.models > self.trials:
            raise ConfigError(f"search.pareto.models: {self.models} is more than search.pareto.trials "
                              f"({self.trials})")
        if not self.sparsity_min < self.sparsity_max:
            raise ConfigError(f"search.pareto.sparsity_min/sparsity_max: need min < max, got {self.sparsity_min}, "
                              f"{self.sparsity_max}")


@dataclass(frozen=True)
class AshaSection:
    """``search.asha``: ASHA's early stopping of weak trials (``scheduler: asha``)."""

    # no trial is stopped before this many epochs (at most search_train.max_epochs, ASHA's max_t)
    grace_period: AtLeastOne = 2
    # 1 in this many trials is kept at each rung; 1 would keep them all
    reduction_factor: Annotated[int, Range(2)] = 2

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SearchSection(ScheduleKeys):
    # ScheduleKeys: how each trial and fine-tune reaches its sparsity (beyond the paper; docs/pruning.md,
    # "Schedules"): `schedule` "oneshot" (the paper's: prune the baseline once, then train), "gradual" (Zhu &
    # Gupta's cubic ramp over the first `gradual_epochs` epochs, global L1 masks recomputed every
    # `prune_every_steps` steps from `gradual_initial_sparsity`; unstructured only) or "iterative"
    # (`iterative_steps` steps, geometric in the weights kept, `iterative_epochs` epochs of training after
    # each; `rewind_epoch`: rewind the weights to that epoch's after every later step, as in lottery-ticket
    # rewinding; null: no rewinding).
    # Each sparsity names its model, evaluation and TensorBoard run: each is given once.
    sparsities: Annotated[tuple[_Sparsity, ...], Items(at_least=1, unique=True)] = (0.1, 0.2, 0.3, 0.4)
    # How pruned models lose their weights: "unstructured" (global L1, the paper's: zeros in dense
    # tensors) or "structured" (L1 channel pruning: `sparsities` of the prunable weights removed).
    method: Literal["unstructured", "structured"] = "unstructured"
    trials_per_sparsity: AtLeastOne = 5
    optimizers: Annotated[tuple[Literal["adam", "sgd"], ...], Items(at_least=1, unique=True)] = ("adam", "sgd")
    lr_min: _LearningRate = 1e-6
    lr_max: _LearningRate = 1e-4
    # What each trial is judged by: a metric every epoch of the training loop reports.
    metric: Annotated[str, OneOf(tuple(OBJECTIVES))] = "val_accuracy"
    direction: Literal["max", "min"] = "max"  # "min" for a loss, e.g. metric: val_loss
    # Which epoch of a trial its objective is taken from: "last" (the paper's "maximize the validation
    # accuracy" of the 10-epoch run as it ends) or "best" (its best epoch; only for metric val_accuracy,
    # the one the training loop tracks per epoch). detector.job.selection.objective_key names the value.
    objective: Literal["last", "best"] = "last"
    seed: Seed = 0
    # Optuna's TPE samples at random for its first n trials (Optuna's default is 10).
    tpe_startup_trials: NonNegative = 10
    # Where the Optuna studies live: null = a journal file in the run folder (RUN/search/optuna.journal), or
    # an RDB URL (sqlite:///..., postgresql://user@host/db) shared by a team's runs; optuna-dashboard reads both.
    storage: NonEmpty | None = None
    # What the search looks for (beyond the paper, which searches a fixed grid):
    #   grid      the paper's: one Optuna search and fine-tune per sparsity in `sparsities`;
    #   frontier  the largest sparsity whose fine-tuned model is non-inferior to the baseline on validation
    #             data (val accuracy >= the baseline's - frontier.margin), by rounds: first `sparsities`, then
    #             `frontier.parallel` probes inside the bracket until it is `frontier.resolution` wide
    #             (detector.job.frontier).
    #   pareto    accuracy against size: one multi-objective Optuna study over sparsity (in
    #             [pareto.sparsity_min, pareto.sparsity_max], steps of 0.005) beside optimizer and lr,
    #             `pareto.trials` trials, `pareto.objectives`; `pareto.models` models of the front (spread
    #             over its sparsities) are fine-tuned and evaluated (detector.job.pareto).
    mode: Literal["grid", "frontier", "pareto"] = "grid"
    frontier: FrontierSection = field(default_factory=FrontierSection)
    pareto: ParetoSection = field(default_factory=ParetoSection)
    # Stop weak trials early with ASHA (beyond the paper; off in paper.yaml), as `asha` says.
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaSection = field(default_factory=AshaSection)
    # The equal-budget dense control (beyond the paper; Liu et al. 2019, Blalock et al. 2020): every pruned
    # model trains more than the baseline did (search trials pick its parameters, then a fine-tune), so the
    # baseline alone would credit pruning with what the extra training did. With `control`, sparsity 0 goes
    # through the same search and fine-tune as every sparsity, from the same baseline weights: the model
    # dense-ft. false: the paper's compute exactly.
    control: bool = True

    # The modes' keys as versions before their sections spelled them, flat in this section: still read (files,
    # --set, saved run folders), as the key each names now; detector.config.from_dict.
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "frontier_margin": "frontier.margin", "frontier_resolution": "frontier.resolution",
        "frontier_parallel": "frontier.parallel", "objectives": "pareto.objectives",
        "pareto_trials": "pareto.trials", "pareto_sparsity_min": "pareto.sparsity_min",
        "pareto_sparsity_max": "pareto.sparsity_max", "pareto_models": "pareto.models",
        "asha_grace_period": "asha.grace_period", "asha_reduction_factor": "asha.reduction_factor",
    }
    # What a run folder saved before a key existed meant by its absence (detector.config.fill_saved_defaults):
    # such a run had no control, and resumes without one.
    SAVED_DEFAULTS: ClassVar[dict[str, Any]] = {"control": False}

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        """The rules across the search's keys; a mode's own section's rules only while that mode is on."""
        if self.method == "structured" and max(self.sparsities) > MAX_CHANNEL_SPARSITY:
            raise ConfigError(f"search.sparsities: channel pruning takes budgets up to {MAX_CHANNEL_SPARSITY} "
                              f"(calibrated and tested up to there), got {max(self.sparsities)}")
        try:
            self.pruning_schedule().check(min(self.sparsities), method=self.method)
        except ValueError as e:
            raise ConfigError(f"search.{e}") from None
        names = [model_name(s) for s in self.sparsities]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared:  # each sparsity's model, evaluation and TensorBoard run are named by it
            raise ConfigError(f"search.sparsities: {list(self.sparsities)} give the model name {shared[0]} twice; "
                              "keep sparsities further apart")
        if not self.lr_min < self.lr_max:
            raise ConfigError(f"search.lr_min/lr_max: need lr_min < lr_max, got {self.lr_min}, {self.lr_max}")
        if self.direction != OBJECTIVES[self.metric]:
            raise ConfigError(f"search.direction: {self.direction} would look for the worst {self.metric}; "
                              f"use direction: {OBJECTIVES[self.metric]}")
        if self.mode == "pareto":
            self.pareto.check_mode()
            if self.scheduler != "none":
                raise ConfigError("search.scheduler: ASHA ranks trials on one metric; a Pareto search has several "
                                  "(use scheduler: none with mode: pareto)")
        if self.objective == "best" and self.metric != "val_accuracy":
            raise ConfigError(f"search.objective: best is tracked for metric val_accuracy only, not {self.metric!r}; "
                              "use objective: last")

    def searched_sparsities(self) -> tuple[float, ...]:
        """What the grid's search and fine-tune stages run: ``sparsities``, then 0 (the dense control, model
        dense-ft) when ``control`` is on. The control comes last, so each pruned search keeps the sampler seed
        it has without it (``seed + i``, by position) and draws the same parameters."""
        return (*self.sparsities, CONTROL_SPARSITY) if self.control else tuple(self.sparsities)

    def pruning_schedule(self) -> PruningSchedule:
        """The schedule every search trial and fine-tune follows (``stages.train_stage(schedule=...)``)."""
        return PruningSchedule.from_keys(self)


@dataclass(frozen=True)
class _GpuShare:
    """Ray schedules a share of one GPU (several trials on it) or whole GPUs, no fraction above one."""

    def reason(self, value: float) -> str | None:
        if value <= 1 or value == int(value):
            return None
        return (f"{value!r} is neither a share of one GPU (at most 1, e.g. 0.25) nor a whole number of GPUs "
                "(Ray schedules no fraction above 1)")


# CPUs a trial's process holds: a fraction lets several share one core.
_Cpus = Annotated[float, Range(0, low_open=True)]
# GPUs a trial's process holds: 0.25 lets four trials share one GPU (and its memory: docs/cluster.md).
_Gpus = Annotated[float, Range(0), _GpuShare()]
TRAINING_STAGES = ("baseline", "search", "finetune")


@dataclass(frozen=True)
class StageResources:
    """A training stage's resources where they differ from the resources section's (null: the section's)."""

    cpus_per_trial: _Cpus | None = None
    gpus_per_trial: _Gpus | None = None
    workers_per_trial: AtLeastOne | None = None

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class TrialResources:
    """What each trial of a stage holds: ``workers_per_trial`` processes (1: the trial's own; more: a Ray
    Train run of that many data-parallel workers), each with ``cpus_per_trial`` CPUs and ``gpus_per_trial``
    GPUs."""

    cpus_per_trial: float
    gpus_per_trial: float
    workers_per_trial: int = 1

    @property
    def data_parallel(self) -> bool:
        return self.workers_per_trial > 1


@dataclass(frozen=True)
class ResourcesSection:
    # Ray resources held by each process of a trial (search trials, the baseline, fine-tunes, evaluations):
    # one process per trial unless workers_per_trial says more, then each worker holds these. A process
    # always runs on CPUs, so it holds some (a fraction lets several share one core); a GPU share below 1
    # lets several trials share one GPU (its memory too: docs/cluster.md).
    cpus_per_trial: _Cpus = 8.0
    gpus_per_trial: _Gpus = 1.0
    # Data-parallel workers per training trial (baseline, search, fine-tune): 1 = the trial trains in its own
    # process; N > 1 = a Ray Train run of N workers (DDP: NCCL on GPUs, one GPU each; gloo on CPUs), the
    # stage's batch_size split evenly between them (batch_size stays the global batch). Evaluations: 1.
    workers_per_trial: AtLeastOne = 1
    # Per-stage overrides of the three keys above, e.g. `baseline: {workers_per_trial: 4}` for a baseline on
    # four GPUs, `search: {gpus_per_trial: 0.25}` for four search trials per GPU.
    baseline: StageResources = field(default_factory=StageResources)
    search: StageResources = field(default_factory=StageResources)
    finetune: StageResources = field(default_factory=StageResources)
    max_concurrent_trials: NonNegative = 0  # 0 = as many as the cluster fits
    # restarts of a trial whose worker died, from its last checkpoint; -1 = no limit (as in Ray)
    max_failures: Annotated[int, Range(-1)] = 3
    # Embedded local Ray only (no --address): logical CPUs to declare; 0 = the machine's count.
    local_num_cpus: NonNegative = 0

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        for stage in TRAINING_STAGES:
            r = self.stage(stage)
            if r.data_parallel and r.gpus_per_trial not in (0, 1):
                raise ConfigError(
                    f"{self.key(stage, 'gpus_per_trial')}: {r.gpus_per_trial:g} with {r.workers_per_trial} workers per "
                    f"trial ({self.key(stage, 'workers_per_trial')}); each data-parallel worker holds a GPU of its "
                    "own (NCCL runs one rank per GPU) or none (gloo on CPUs): set it to 1 or 0")

    def stage(self, stage: str) -> TrialResources:
        """What each trial of ``stage`` holds: a training stage's own values where it sets them, else the
        section's; ``evaluate`` runs in one process with the section's CPUs and GPUs."""
        if stage == "evaluate":
            return TrialResources(self.cpus_per_trial, self.gpus_per_trial, 1)
        if stage not in TRAINING_STAGES:
            raise ValueError(f"no stage {stage!r} holds resources: {', '.join(TRAINING_STAGES)} or evaluate")
        own: StageResources = getattr(self, stage)
        return TrialResources(
            cpus_per_trial=self.cpus_per_trial if own.cpus_per_trial is None else own.cpus_per_trial,
            gpus_per_trial=self.gpus_per_trial if own.gpus_per_trial is None else own.gpus_per_trial,
            workers_per_trial=self.workers_per_trial if own.workers_per_trial is None else own.workers_per_trial,
        )

    def key(self, stage: str, name: str) -> str:
        """The config key that sets ``name`` for ``stage``: the stage's override, or the section's own."""
        overridden = stage in TRAINING_STAGES and getattr(getattr(self, stage), name) is not None
        return f"resources.{stage}.{name}" if overridden else f"resources.{name}"


@dataclass(frozen=True)
class EvaluateSection:
    # Evaluations run one at a time by default: models timed side by side on shared CPUs would report
    # each other's load as latency. Raise it where every trial has a GPU of its own.
    concurrent_trials: AtLeastOne = 1
    batch_size: AtLeastOne = 128
    latency_repeats: AtLeastOne = 50
    throughput_batch: AtLeastOne = 64
    bootstrap: AtLeastOne = 1000
    # The non-inferiority margin of the report's verdicts, in accuracy (0.01 = 1 pp): a pruned model is
    # non-inferior to the reference (the equal-budget control, else the baseline) when its paired test
    # interval's lower end lies above -margin, inferior when its upper end lies below it.
    margin: Annotated[float, Range(0, 0.5, low_open=True, high_open=True, why="an accuracy difference")] = 0.01
    # DataLoader workers that decode (and perturb) test images beside the model.
    num_workers: NonNegative = 0
    # The set of the paper's Fig 5, Table 5's first column and the headline conclusions: this source's test
    # set when the test split has it beside others (the paper's balanced 140k test set), else the whole test
    # split; "combined" always takes the whole test split.
    primary_set: Annotated[str, OneOf(tuple(PRIMARY_CHOICES))] = "faces140k"
    # How the validation-calibrated threshold is chosen on combined_val (never on test): "eer" (fakes
    # predicted real as often as reals predicted fake) or "accuracy" (the highest val accuracy).
    threshold_calibration: Annotated[str, OneOf(tuple(CALIBRATIONS))] = "eer"
    # Every model also scored on perturbed test images (JPEG, blur, down-scaling, format equalisation).
    robustness: RobustnessSection = field(default_factory=RobustnessSection)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ExperimentConfig:
    # Names the run folder (runs/<name>) and the Tune storage folder: one plain folder name.
    name: Annotated[str, Match(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", "a plain folder name (letters, digits, "
                               "'.', '_', '-'; not starting with '.'; no '/')")] = "experiment"
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
    storage: NonEmpty | None = None

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        """The rules across sections: storage, each stage's training config, the schedule's epochs, ASHA's."""
        if self.storage is not None and "://" not in self.storage and not Path(self.storage).is_absolute():
            raise ConfigError(f"storage: {self.storage!r} must be an absolute path or a URI such as s3://bucket/runs")
        # Build each stage's TrainConfig now, so a bad override fails before any trial starts.
        for section, stage in zip(("baseline", "search_train", "finetune"), TRAINING_STAGES):
            cfg = self.stage_train(section)  # type: ignore[arg-type]
            if self.data.pixels and cfg.image_size != self.train.image_size:
                raise ConfigError(f"{section}.image_size: {cfg.image_size} differs from train.image_size "
                                  f"({self.train.image_size}); data.pixels stores one size")
            workers = self.resources.stage(stage).workers_per_trial
            try:
                per_rank_batch(cfg.batch_size, workers)
            except ValueError as e:
                raise ConfigError(f"{section}.batch_size: {e} ({self.resources.key(stage, 'workers_per_trial')}: "
                                  f"{workers})") from None
        for section in ("search_train", "finetune"):  # the stages that prune
            self.search.pruning_schedule().check_epochs(self.stage_train(section).max_epochs,  # type: ignore[arg-type]
                                                        where=f"{section}.max_epochs")
        max_t = self.stage_train("search_train").max_epochs
        if self.search.scheduler == "asha" and self.search.asha.grace_period > max_t:
            raise ConfigError(f"search.asha.grace_period: {self.search.asha.grace_period} is more than "
                              f"search_train.max_epochs ({max_t}), the most epochs a trial runs")

    def stage_train(self, section: Literal["baseline", "search_train", "finetune"], **extra: Any) -> TrainConfig:
        """The TrainConfig of a stage: `train`, then the stage's overrides, then ``extra`` (e.g. a trial's lr)."""
        merged = {**to_dict(self.train), **getattr(self, section), **extra}
        return from_dict(TrainConfig, merged, where=section)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``key.sub=value`` overrides, validate; an error names the key
    and where its value came from (the file, or the ``--set``)."""
    return from_dict_with_overrides(ExperimentConfig, load_yaml(path), overrides or [], source=str(path))


def load_saved_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A run folder's saved config (``RUN/experiment.yaml``), as ``load_experiment`` reads a config, except
    that a key added since it was saved means what its absence meant then (``SearchSection.SAVED_DEFAULTS``):
    ``detector run --resume``, the config check of a run folder and its report read it so."""
    data = fill_saved_defaults(ExperimentConfig, load_yaml(path))
    return from_dict_with_overrides(ExperimentConfig, data, overrides or [], source=str(path))
