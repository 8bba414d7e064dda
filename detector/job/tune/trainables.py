"""The trainables: what one trial of each stage runs, a thin wrapper over ``detector.job.stages``.

A trainable translates between Tune (config, checkpoints, reports) and the Ray-free stage functions. A trial
trains in its own process, or, with ``resources.workers_per_trial`` > 1, drives a Ray Train ``TorchTrainer``
whose workers run the same ``stages.train_stage`` (and so the same ``fit``) as one rank each; rank 0's metrics
reach Tune through ``TuneReportCallback``, its checkpoints go into the Tune trial's own folder, and a worker
that dies restarts the workers from the last of them (Ray Train's ``FailureConfig``).

The experiments find a stage's trainable through ``trainable(stage)``; ``replaced_trainables`` runs them with
others for a while (bench/cluster_schedule.py: trials that model the work instead of doing it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ray import tune

import detector.job.tune.private_api as private_api
from detector.job.experiment import ExperimentConfig
from detector.job.fence import StaleAttempt, begin_attempt
from detector.job.runfolder import BASELINE, RunFolder, model_name, sparsity_label, trial_label
from detector.job.search_space import param_names
from detector.job.tune.progress import log_as_trial, trial_log_name
from detector.job.tune.trial_rows import evaluated_model
from detector.paths import is_uri, uri_join

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    """What every trial of a stage needs besides its Tune config; shipped once through the object store."""

    run_dir: str
    experiment: ExperimentConfig
    data: str
    # finetune: sparsity -> the searched parameters (detector.job.search_space) of its best trial
    best_params: dict[float, dict[str, Any]] | None = None
    # resume Tune's state (which is unpickled) even from a folder that others could have written
    trust_run_folder: bool = False


# A stage's trainable: Tune's config of one trial, and the stage's context.
Trainable = Callable[[dict[str, Any], StageContext], None]


@contextlib.contextmanager
def _trial_workspace(name: str, checkpoint: Any) -> Iterator[tuple[Path, float]]:
    """A node-local scratch folder for the training loop's per-epoch state, and the trial's start time.

    The loop's checkpoint folder (``TrialDir.checkpoint_dir``) goes to Tune (or Ray Train) every epoch; the scratch copy is kept out
    of the trial's folder (which lives in the run's storage) so that it is not stored twice, and is removed
    when the trial ends (or, when its worker was killed, at the next trial start on the node:
    ``detector.job.scratch``). A restarted trial starts from ``checkpoint`` (the last one Tune or Ray Train
    stored), copied in here, and keeps its original start time (``TrialDir.start_time``).
    ``name``: the scratch folder's (the trial id, and a data-parallel worker's rank).
    """
    from detector.job.scratch import make_scratch, remove_scratch
    from detector.trial_dir import TrialDir

    out_dir = make_scratch(name)
    try:
        trial = TrialDir(out_dir)
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                shutil.copytree(d, trial.checkpoint_dir, dirs_exist_ok=True)
            log.info("trial %s restarts from its checkpoint", name)
        yield out_dir, trial.start_time()
    finally:
        remove_scratch(out_dir)


# What reports a trial's metrics, a row and the checkpoint folder that goes with it (None: no checkpoint).
Report = Callable[[dict[str, Any], "Path | None"], None]


def _fenced_report(ctx: StageContext, checkpoint: Any) -> Report:
    """``_tune_report`` for this attempt of the trial, which registers as the newest (``detector.job.fence``):
    once Tune restarts the trial elsewhere, this attempt raises ``StaleAttempt`` at its next report instead
    of storing anything. Tune's storage on a URI (s3://) has no folder to fence: there reports go as they are."""
    context = tune.get_context()
    run = RunFolder(Path(ctx.run_dir))
    trial_dir = uri_join(run.tune_experiment(context.get_experiment_name(), ctx.experiment.storage),
                         context.get_trial_id())
    if is_uri(trial_dir):
        return _tune_report
    attempt = begin_attempt(Path(trial_dir), Path(checkpoint.path) if checkpoint is not None else None)

    def report(row: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        attempt.check()
        _tune_report(row, checkpoint_dir)

    return report


def _tune_report(row: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """A trial's own process reports to Tune."""
    tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)


def _train_report(row: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """A rank of a data-parallel trial reports to Ray Train, every rank every epoch (it is a barrier); rank 0's
    row reaches Tune (``TuneReportCallback``), and only rank 0 has a checkpoint folder."""
    import ray.train

    ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir
                     else None)


def _timed(row: dict[str, Any], trial_start: float) -> dict[str, Any]:
    """A reported row with the trial's start and the time now: the report's timeline of every trial."""
    return {**row, "trial_start": trial_start, "time_now": time.time()}


def _train_or_fail(train: Callable[[], Any], extra: dict[str, Any], trial_start: float, report: Report,
                   name: str) -> None:
    """Run a trial's training; a non-finite loss ends the trial with its reason instead of a retry
    (it would only diverge again) and instead of failing the whole search."""
    from detector.passes import NonFiniteLossError

    try:
        train()
    except NonFiniteLossError as e:
        log.error("trial %s: %s", name, e)
        # Tune insists on the metric in every result; NaN marks it as no value (the searcher records a failure).
        from detector.train import OBJECTIVES

        report(_timed({**extra, **{k: float("nan") for k in OBJECTIVES}, "trial_failed": str(e)}, trial_start), None)


def _train_in_process(training: dict[str, Any], extra: dict[str, Any], name: str, checkpoint: Any,
                      report: Report) -> None:
    """``stages.train_stage(**training)`` in this process, in a scratch folder that starts from ``checkpoint``,
    each epoch reported through ``report``: a trial's own process, or one rank of a data-parallel trial."""
    from detector.job import stages

    with _trial_workspace(name, checkpoint) as (out_dir, start):
        def on_epoch(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            report(_timed({**metrics, **extra}, start), checkpoint_dir)

        _train_or_fail(lambda: stages.train_stage(**training, out_dir=out_dir, on_epoch=on_epoch), extra, start, report,
                       name)


def _train_trial(ctx: StageContext, stage: str, training: dict[str, Any], extra: dict[str, Any]) -> None:
    """Train a trial of ``stage``: in the trial's own process, or, with ``workers_per_trial`` > 1, as a Ray
    Train run of that many data-parallel workers that this process drives."""
    from detector.device import limit_gpu_memory

    res = ctx.experiment.resources.stage(stage)
    trial_id = tune.get_context().get_trial_id()
    if not res.data_parallel:
        if limit_gpu_memory(res.gpus_per_trial):
            log.info("trial %s holds %g of a GPU: its memory is capped at that share", trial_id, res.gpus_per_trial)
        checkpoint = tune.get_checkpoint()
        try:
            _train_in_process(training, extra, trial_id, checkpoint, _fenced_report(ctx, checkpoint))
        except StaleAttempt as e:
            log.warning("%s", e)
        return
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from detector.distributed import backend_for

    _require_train_v2()
    context = tune.get_context()
    workers = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if res.gpus_per_trial else {})}
    trainer = TorchTrainer(
        _data_parallel_worker,
        train_loop_config={"training": training, "extra": extra, "trial_id": trial_id, "trial_name": trial_log_name()},
        torch_config=TorchConfig(backend=backend_for("cuda" if res.gpus_per_trial else "cpu")),
        scaling_config=ScalingConfig(num_workers=res.workers_per_trial, use_gpu=res.gpus_per_trial > 0,
                                     resources_per_worker=workers),
        run_config=RunConfig(
            # The Tune trial's own folder: the same name after a restart finds the run's last checkpoint, and
            # stages.drop_checkpoints finds its checkpoint_* folders where it looks for Tune's.
            name=trial_id,
            storage_path=RunFolder(Path(ctx.run_dir)).tune_experiment(context.get_experiment_name(),
                                                                       ctx.experiment.storage),
            failure_config=FailureConfig(max_failures=ctx.experiment.resources.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    log.info("trial %s: %d data-parallel workers (%s each)", trial_id, res.workers_per_trial,
             ", ".join(f"{v:g} {k}" for k, v in workers.items()))
    trainer.fit()


def _data_parallel_worker(config: dict[str, Any]) -> None:
    """One rank of a data-parallel trial (a Ray Train worker, inside the process group Ray Train made)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    log_as_trial(f"{config['trial_name']} rank {rank}")
    _train_in_process(config["training"], config["extra"], f"{config['trial_id']}-rank{rank}",
                      ray.train.get_checkpoint(), _train_report)


def _require_train_v2() -> None:
    """The data-parallel trials use Ray Train's V2 API (the default since Ray 2.51)."""
    enabled, var = private_api.train_v2()
    if not enabled:
        raise RuntimeError(f"{var}={os.environ.get(var)}: data-parallel trials "
                           f"(resources.workers_per_trial > 1) need Ray Train V2; unset it or set it to 1")


def _announce(stage: str, label: str, detail: dict[str, Any]) -> None:
    """One line at a trial's start that names it, after which every line the trial logs names it too (Ray's
    worker logs, the dashboard's actor logs and the driver's output show them: ``progress.log_as_trial``)."""
    log_as_trial(f"{stage}/{label}")
    ctx = tune.get_context()
    log.info("trial %s/%s (Tune %s) starts: %s", stage, label, ctx.get_trial_id(),
             ", ".join(f"{k} {v}" for k, v in detail.items()))


def _already_saved(model: Path, extra: dict[str, Any]) -> bool:
    """A trial restored by ``Tuner.restore`` whose model was saved before the driver stopped (Tune's state
    had not caught up): report what was saved, and never train or write that model again."""
    summary = model.with_suffix(".json")
    if not (model.exists() and summary.exists()):
        return False
    saved = json.loads(summary.read_text())
    log.info("%s is already saved (best val accuracy %.4f at epoch %d): not trained again", model,
             saved["best_val_accuracy"], saved["best_epoch"])
    tune.report(_timed({**saved["history"][-1], **extra}, time.time()))
    return True


def detector_baseline(config: dict[str, Any], ctx: StageContext) -> None:
    """The baseline stage's trainable (its name is what the Ray dashboard shows for the trial's actor)."""
    run = RunFolder(Path(ctx.run_dir))
    cfg = ctx.experiment.stage_train("baseline")
    _announce("baseline", "baseline", {"arch": cfg.arch, "max_epochs": cfg.max_epochs})
    if _already_saved(run.model(BASELINE), {"sparsity": 0.0}):
        return
    _train_trial(ctx, "baseline", {"cfg": cfg, "data": ctx.data, "tb_dir": run.tensorboard_run("baseline"),
                                   "model_path": run.model(BASELINE)}, {"sparsity": 0.0})


def _train_pruned(ctx: StageContext, sparsity: float, params: dict[str, Any], *, stage: str,
                  trial: int | None, save: bool) -> None:
    """Prune the baseline to ``sparsity`` and train it with the searched ``params`` for a stage. At sparsity 0
    (the dense control) pruning removes nothing: the baseline trains as it is, with no masks or schedule."""
    run = RunFolder(Path(ctx.run_dir))
    section = "search_train" if stage == "search" else stage
    searched = {name: params[name] for name in param_names()}
    label = trial_label(sparsity, trial) if stage == "search" else sparsity_label(sparsity)
    method = ctx.experiment.search.method if sparsity > 0 else "none (the dense control)"
    _announce(stage, label, {"sparsity": sparsity, "method": method, **searched})
    if save and _already_saved(run.model(model_name(sparsity)), {"sparsity": sparsity}):
        return
    extra: dict[str, Any] = {"sparsity": sparsity}
    if stage == "search" and ctx.experiment.search.mode == "pareto":
        extra.update(_size_objectives(ctx, run, sparsity))
    _train_trial(ctx, stage, {
        "cfg": ctx.experiment.stage_train(section, **searched),
        "data": ctx.data,
        "tb_dir": run.tensorboard_run(stage, sparsity, trial),
        "init": run.model(BASELINE),
        "sparsity": sparsity,
        "method": ctx.experiment.search.method,
        "schedule": ctx.experiment.search.pruning_schedule(),
        "model_path": run.model(model_name(sparsity)) if save else None,
    }, extra)


def _size_objectives(ctx: StageContext, run: RunFolder, sparsity: float) -> dict[str, float]:
    """A Pareto trial's size objectives, measured on the baseline pruned to its sparsity (training keeps
    the zeros and the shapes, so they hold for the trained model too)."""
    from detector.checkpoint import load_model
    from detector.job.pareto import SIZE_OBJECTIVES, size_objectives
    from detector.prune import prune

    wanted = [o for o in ctx.experiment.search.pareto.objectives if o in SIZE_OBJECTIVES]
    if not wanted:
        return {}
    model, meta = load_model(run.model(BASELINE))
    prune(model, sparsity, method=ctx.experiment.search.method, arch=meta["arch"])
    return size_objectives(model, wanted, image_size=int(meta["image_size"]))


def detector_search(config: dict[str, Any], ctx: StageContext) -> None:
    # A search trial saves nothing but its result; whether it may stop early is search_train.patience.
    _train_pruned(ctx, float(config["sparsity"]), config, stage="search", trial=int(config["trial"]), save=False)


def detector_finetune(config: dict[str, Any], ctx: StageContext) -> None:
    sparsity = float(config["sparsity"])
    assert ctx.best_params is not None
    _train_pruned(ctx, sparsity, ctx.best_params[sparsity], stage="finetune", trial=None, save=True)


def detector_evaluate(config: dict[str, Any], ctx: StageContext) -> None:
    """An evaluation's trainable: the model ``config["model"]`` names. Every model but the baseline was
    fine-tuned from the baseline, pruned (the dense control: by nothing), and is also scored as it was
    before its fine-tune."""
    from detector.job import stages

    start = time.time()
    name = evaluated_model(config)
    run = RunFolder(Path(ctx.run_dir))
    _announce("evaluate", name, {"checkpoint": run.model(name)})
    if run.evaluation(name).exists():  # restored by Tune after the evaluation was written
        result = json.loads(run.evaluation(name).read_text())
    else:
        result = stages.evaluate_stage(
            run.model(name), data=ctx.data, cfg=ctx.experiment.evaluate, out=run.evaluation(name),
            predictions=run.predictions(name), pruned_from=None if name == BASELINE else run.model(BASELINE),
            name=name,
        )
    # the sparsity for display (detector status): the model's target, as its evaluation records it
    tune.report({"sparsity": float(result["pruning"]["sparsity"]), "trial_start": start, "time_now": time.time(),
                 "test_accuracy": result["metrics"]["test"]["all"]["accuracy"]})


# -- the registry ---------------------------------------------------------------------------------------

_TRAINABLES: dict[str, Trainable] = {"baseline": detector_baseline, "search": detector_search,
                                     "finetune": detector_finetune, "evaluate": detector_evaluate}


def trainable(stage: str) -> Trainable:
    """The trainable that runs each trial of ``stage`` (baseline, search, finetune, evaluate)."""
    return _TRAINABLES[stage]


def actor_name(fn: Trainable, run_name: str) -> str:
    """What the Ray dashboard's Actors page and the trials' log lines call the trials of ``fn`` in the run
    folder named ``run_name``: ``detector_search@alice-demo``. Several users' runs share a cluster, and each
    stage's trainable is the same function in all of them."""
    return f"{getattr(fn, '__name__', 'trainable')}@{re.sub(r'[^A-Za-z0-9._-]', '_', run_name)}"


def named(fn: Trainable, name: str) -> Trainable:
    """``fn`` under ``name``: Tune registers a trainable, and names its trials' actors, by ``__name__``."""

    def run_trial(config: dict[str, Any], ctx: StageContext) -> None:
        fn(config, ctx)

    run_trial.__name__ = run_trial.__qualname__ = name
    return run_trial


@contextlib.contextmanager
def replaced_trainables(replacements: Mapping[str, Trainable]) -> Iterator[None]:
    """Run the trials of the named stages with other trainables until the block ends (taking the real ones'
    ``(config, ctx)`` and reporting what they report), e.g. trials that model the work:

    >>> def sleepy(config, ctx): ...
    >>> with replaced_trainables({"evaluate": sleepy}):
    ...     trainable("evaluate") is sleepy
    True
    >>> trainable("evaluate") is detector_evaluate
    True

    A stage with no trainable is refused by name: the caller's replacement would otherwise never run.
    """
    unknown = sorted(set(replacements) - set(_TRAINABLES))
    if unknown:
        raise ValueError(f"no trainable for stage(s) {', '.join(unknown)}; stages: {', '.join(_TRAINABLES)}")
    saved = dict(_TRAINABLES)
    _TRAINABLES.update(replacements)
    try:
        yield
    finally:
        _TRAINABLES.clear()
        _TRAINABLES.update(saved)
