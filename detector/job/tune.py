"""The one module that talks to Ray Tune.

Every stage runs as a Tune experiment, so that each piece of training lands on a worker with the resources
it asked for (the head of a shared cluster takes no trials), restarts from its last checkpoint when its
worker dies, and resumes when the driver dies:

- ``baseline``: one trial that trains the baseline;
- ``search``: all sparsities' Optuna searches in ONE experiment. Ray cannot run several ``Tuner.fit()`` on
  one cluster safely (ray-project/ray#21329, #30091: the trainable registry is not thread-safe), so a
  ``SparsitySearcher`` keeps one Optuna study (through ``OptunaSearch``) per sparsity and hands out
  trials round-robin; the four searches then share the cluster and run concurrently;
- ``finetune``: one trial per sparsity with its best parameters;
- ``evaluate``: one trial per model.

The work itself is done by ``detector.job.stages`` (Ray-free); the trainables here only translate between Tune
(config, checkpoints, reports) and those functions.

A stage whose trials are data-parallel (``resources.workers_per_trial`` > 1, per stage) keeps its trials in the
same Tune experiment and searcher: each trial's own process becomes the driver of a Ray Train ``TorchTrainer``
whose workers run the same ``stages.train_stage`` (and so the same ``fit``) as one rank each; rank 0's
metrics reach Tune through ``TuneReportCallback``, its checkpoints go into the Tune trial's own folder, and a
worker that dies restarts the workers from the last of them (Ray Train's ``FailureConfig``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from detector.job.experiment import TRAINING_STAGES, ExperimentConfig, TrialResources
from detector.job.runfolder import RunFolder, model_name, sparsity_label, trial_label, tune_stage
from detector.job.stop import StageIncomplete, StopSignals
from detector.job.selection import OBJECTIVE_EPOCH, objective_key, select_best
from detector.job.search_space import Categorical, Domain, LogUniform, param_names, search_space

log = logging.getLogger(__name__)

# Tune's own TensorBoard logger would write a second copy of every scalar beside ours (detector.train
# writes one TensorBoard run per trial under RUN/tensorboard); CSV and JSON stay, the ResultGrid needs them.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# The driver handles SIGINT itself (detector.job.stop): the whole job stops, not only the running experiment.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# Every trial checkpoints every epoch and keeps one checkpoint, which forces an experiment snapshot each
# time; with several trials per minute Tune warns that snapshots come often. They are cheap here (small
# JSON state): the warning says nothing a user can act on.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

# A data-parallel trial's own process only drives its Ray Train run (the workers hold the resources); Tune
# refuses a trial that holds nothing, so it holds this much of a CPU.
DRIVER_CPUS = 0.01


SEARCHER_STATE_VERSION = 1


def optuna_storage(url: str) -> Any:
    """An Optuna storage from a URL: a journal file (``journal:///path``, or a plain path) or any RDB URL
    (``sqlite:///...``, ``postgresql://...``). ``optuna-dashboard URL`` shows the studies in it."""
    import optuna

    if url.startswith("journal://"):
        url = url[len("journal://"):]
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


class SparsitySearcher(Searcher):
    """One Optuna study per sparsity inside a single Tune experiment.

    ``suggest`` picks the sparsity with the fewest trials handed out so far (round-robin), asks that
    sparsity's ``OptunaSearch`` for parameters and adds ``sparsity`` (and the trial's number within its
    search, ``trial``) to the trial's config. Results and completions go back to the study that proposed the
    trial, so each study only ever sees its own trials, exactly as if the four searches ran as four
    separate experiments.

    Every study lives in an Optuna storage (``storage``: a journal file on the run folder, or an RDB URL),
    and the searcher's own state is saved as JSON: which Tune trial is which Optuna trial of which study, and
    the samplers' random states. Nothing is pickled, and a resumed search goes on with the same studies.

    >>> from ray import tune
    >>> s = SparsitySearcher([0.1, 0.2], trials_per_sparsity=2,
    ...                      space={"lr": tune.loguniform(1e-6, 1e-4)}, metric="val_accuracy", seed=0)
    >>> s.suggest("t1")["sparsity"], s.suggest("t2")["sparsity"]
    (0.1, 0.2)
    """

    def __init__(
        self,
        sparsities: Sequence[float],
        *,
        trials_per_sparsity: int,
        space: dict[str, Any],
        metric: str,
        mode: str = "max",
        seed: int = 0,
        tpe_startup_trials: int = 10,
        storage: str | None = None,
        study_prefix: str = "",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.sparsities = [float(s) for s in sparsities]
        self.trials_per_sparsity = trials_per_sparsity
        # Tune's search-space objects -> Optuna distributions, once, so each study gets a resolved space.
        self.space = OptunaSearch.convert_search_space(space)
        self.seed = seed
        self.tpe_startup_trials = tpe_startup_trials
        self.storage_url = storage
        self.study_prefix = study_prefix
        self.trial_sparsity: dict[str, float] = {}
        self.trial_number: dict[str, int] = {}  # Tune trial -> its number within its sparsity's search
        self.studies = self._make_studies()

    def study_name(self, sparsity: float) -> str:
        return f"{self.study_prefix}sparsity-{sparsity:g}"

    def _make_studies(self) -> dict[float, OptunaSearch]:
        import optuna

        storage = optuna_storage(self.storage_url) if self.storage_url else None
        studies = {}
        for i, s in enumerate(self.sparsities):
            sampler = optuna.samplers.TPESampler(seed=self.seed + i, n_startup_trials=self.tpe_startup_trials)
            studies[s] = OptunaSearch(space=dict(self.space), metric=self._metric, mode=self._mode, sampler=sampler,
                                      study_name=self.study_name(s), storage=storage)
        return studies

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # The search space and metric come from the constructor; Tune's param_space stays empty.
        return True

    def _launched(self, sparsity: float) -> int:
        return sum(1 for s in self.trial_sparsity.values() if s == sparsity)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.trial_sparsity:
            sparsity = self.trial_sparsity[trial_id]
        else:
            open_ = [s for s in self.sparsities if self._launched(s) < self.trials_per_sparsity]
            if not open_:
                return Searcher.FINISHED
            sparsity = min(open_, key=lambda s: (self._launched(s), self.sparsities.index(s)))
            self.trial_sparsity[trial_id] = sparsity
            self.trial_number[trial_id] = self._launched(sparsity)
        params = self.studies[sparsity].suggest(trial_id)
        return {**params, "sparsity": sparsity, "trial": self.trial_number[trial_id]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_sparsity and not result.get("trial_failed"):
            self.studies[self.trial_sparsity[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trial_sparsity:
            return
        if result and result.get("trial_failed"):
            # A trial that diverged is a failed Optuna trial, not a result of NaN.
            result, error = None, True
        self.studies[self.trial_sparsity[trial_id]].on_trial_complete(trial_id, result, error=error)

    # -- state, as data --------------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state as JSON (Tune names the file ``searcher-state-*.pkl``; it holds JSON)."""
        studies = {f"{s:g}": _study_state(st) for s, st in self.studies.items()}
        state = {"format": "detector-searcher", "version": SEARCHER_STATE_VERSION, "kind": "sparsity",
                 "sparsities": self.sparsities, "trials_per_sparsity": self.trials_per_sparsity,
                 "metric": self._metric, "mode": self._mode, "storage": self.storage_url,
                 "trial_sparsity": self.trial_sparsity, "trial_number": self.trial_number, "studies": studies}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        state = _read_searcher_state(checkpoint_path)
        if state.get("kind", "sparsity") != "sparsity" or state["sparsities"] != self.sparsities:
            raise ValueError(
                f"{checkpoint_path}: the saved search is over sparsities {state['sparsities']}, "
                f"the config asks for {self.sparsities}; use a new --out folder for a different search"
            )
        if not self.storage_url:
            raise ValueError(f"{checkpoint_path}: the studies were kept in memory only; nothing to resume from")
        self.trial_sparsity = {str(k): float(v) for k, v in state["trial_sparsity"].items()}
        self.trial_number = {str(k): int(v) for k, v in state.get("trial_number", {}).items()}
        self.studies = self._make_studies()  # the same studies, loaded from the storage
        for s, st in self.studies.items():
            _restore_study(st, state["studies"][f"{s:g}"])


def _read_searcher_state(checkpoint_path: str) -> dict[str, Any]:
    try:
        with open(checkpoint_path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{checkpoint_path}: not the JSON state this searcher writes ({e}); a run folder "
                         "from an older version cannot be resumed: start it in a new --out folder") from None
    if not isinstance(state, dict) or state.get("format") != "detector-searcher":
        raise ValueError(f"{checkpoint_path}: not a detector searcher state")
    return state


def _study_state(st: OptunaSearch) -> dict[str, Any]:
    """One OptunaSearch's state beside its storage, as data: which Tune trial is which Optuna trial, and the
    sampler's random states."""
    return {"study": st._ot_study.study_name,
            "optuna_trials": {tid: tr.number for tid, tr in st._ot_trials.items()},
            "completed": sorted(st._completed_trials), "rng": _sampler_rng_state(st._sampler)}


def _restore_study(st: OptunaSearch, saved: dict[str, Any]) -> None:
    import optuna

    study = st._ot_study
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    st._ot_trials = {tid: optuna.trial.Trial(study, by_number[n]._trial_id)
                     for tid, n in saved["optuna_trials"].items() if n in by_number}
    st._completed_trials = set(saved["completed"])
    _set_sampler_rng_state(st._sampler, saved.get("rng"))
    # An Optuna trial asked for just before the driver died, never handed to Tune: not a result.
    known = set(saved["optuna_trials"].values())
    for t in by_number.values():
        if t.state == optuna.trial.TrialState.RUNNING and t.number not in known:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            log.warning("study %s: trial %d was asked for but never ran (driver stopped); marked failed",
                        study.study_name, t.number)


class ParetoSearcher(Searcher):
    """One multi-objective Optuna study (TPE) over the sparsity and the training parameters, for
    ``search.mode: pareto``; its storage and JSON state work as ``SparsitySearcher``'s."""

    def __init__(self, *, trials: int, space: dict[str, Any], objectives: Sequence[str], seed: int = 0,
                 tpe_startup_trials: int = 10, storage: str | None = None, study_name: str = "pareto") -> None:
        from detector.job.pareto import directions

        super().__init__(metric=list(objectives), mode=directions(objectives))
        self.trials = trials
        self.space = OptunaSearch.convert_search_space(space)
        self.objectives = list(objectives)
        self.seed, self.tpe_startup_trials = seed, tpe_startup_trials
        self.storage_url, self.name = storage, study_name
        self.trial_number: dict[str, int] = {}
        self.study = self._make_study()

    def _make_study(self) -> OptunaSearch:
        import optuna

        sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.tpe_startup_trials)
        return OptunaSearch(space=dict(self.space), metric=self.objectives, mode=list(self._mode), sampler=sampler,
                            study_name=self.name, storage=optuna_storage(self.storage_url) if self.storage_url else None)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.trial_number:
            if len(self.trial_number) >= self.trials:
                return Searcher.FINISHED
            self.trial_number[trial_id] = len(self.trial_number) + 1
        params = self.study.suggest(trial_id)
        return {**params, "sparsity": round(float(params["sparsity"]), 6), "trial": self.trial_number[trial_id]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # Optuna's multi-objective studies take final values only

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trial_number:
            return
        if result and result.get("trial_failed"):
            result, error = None, True
        self.study.on_trial_complete(trial_id, result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"format": "detector-searcher", "version": SEARCHER_STATE_VERSION, "kind": "pareto",
                       "objectives": self.objectives, "trials": self.trials, "storage": self.storage_url,
                       "trial_number": self.trial_number, "study": _study_state(self.study)}, f)

    def restore(self, checkpoint_path: str) -> None:
        state = _read_searcher_state(checkpoint_path)
        if state.get("kind") != "pareto" or state["objectives"] != self.objectives:
            raise ValueError(f"{checkpoint_path}: not a Pareto search over {self.objectives}; use a new --out folder")
        if not self.storage_url:
            raise ValueError(f"{checkpoint_path}: the study was kept in memory only; nothing to resume from")
        self.trial_number = {str(k): int(v) for k, v in state["trial_number"].items()}
        self.study = self._make_study()
        _restore_study(self.study, state["study"])


def _sampler_rng_state(sampler: Any) -> dict[str, Any]:
    """The TPE sampler's random states as data: a resumed search must not draw its first values again."""
    states = {}
    for key, rng in (("tpe", sampler._rng.rng), ("random", sampler._random_sampler._rng.rng)):
        kind, keys, pos, has_gauss, cached = rng.get_state()
        states[key] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return states


def _set_sampler_rng_state(sampler: Any, states: dict[str, Any] | None) -> None:
    import numpy as np

    if not states:
        return
    for key, rng in (("tpe", sampler._rng.rng), ("random", sampler._random_sampler._rng.rng)):
        kind, keys, pos, has_gauss, cached = states[key]
        rng.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------------------------------
# Trainables: thin wrappers over detector.job.stages.


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


@contextlib.contextmanager
def _trial_workspace(name: str, checkpoint: Any) -> Iterator[tuple[Path, float]]:
    """A node-local scratch folder for the training loop's per-epoch state, and the trial's start time.

    The loop's ``checkpoint/`` folder goes to Tune (or Ray Train) every epoch; the scratch copy is kept out
    of the trial's folder (which lives in the run's storage) so that it is not stored twice, and is removed
    when the trial ends (or, when its worker was killed, at the next trial start on the node:
    ``detector.job.scratch``). A restarted trial starts from ``checkpoint`` (the last one Tune or Ray Train
    stored), copied in here, and keeps its original start time, so that the report's timeline stays honest.
    ``name``: the scratch folder's (the trial id, and a data-parallel worker's rank).
    """
    from detector.job.scratch import make_scratch
    from detector.trial_dir import TrialDir

    out_dir = make_scratch(name)
    try:
        ckpt_dir = TrialDir(out_dir).checkpoint_dir
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                shutil.copytree(d, ckpt_dir, dirs_exist_ok=True)
            log.info("trial %s restarts from its checkpoint", name)
        yield out_dir, TrialDir(out_dir).start_time()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# What reports a trial's metrics, a row and the checkpoint folder that goes with it (None: no checkpoint).
Report = Callable[[dict[str, Any], "Path | None"], None]


def _tune_report(row: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """A trial's own process reports to Tune."""
    tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)


def _train_report(row: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
    """A rank of a data-parallel trial reports to Ray Train, every rank every epoch (it is a barrier); rank 0's
    row reaches Tune (``TuneReportCallback``), and only rank 0 has a checkpoint folder."""
    import ray.train

    ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir
                     else None)


def _reporter(extra: dict[str, Any], trial_start: float,
              report: Report) -> Callable[[dict[str, float], Path | None], None]:
    def on_epoch(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        report({**metrics, **extra, "trial_start": trial_start, "time_now": time.time()}, checkpoint_dir)

    return on_epoch


def _train_or_fail(train: Callable[[], Any], extra: dict[str, Any], trial_start: float, report: Report,
                   name: str) -> None:
    """Run a trial's training; a non-finite loss ends the trial with its reason instead of a retry
    (it would only diverge again) and instead of failing the whole search."""
    from detector.train import NonFiniteLossError

    try:
        train()
    except NonFiniteLossError as e:
        log.error("trial %s: %s", name, e)
        # Tune insists on the metric in every result; NaN marks it as no value (the searcher records a failure).
        from detector.train import OBJECTIVES

        report({**extra, **{k: float("nan") for k in OBJECTIVES}, "trial_failed": str(e),
                "trial_start": trial_start, "time_now": time.time()}, None)


def _train_in_process(training: dict[str, Any], extra: dict[str, Any], name: str, checkpoint: Any,
                      report: Report) -> None:
    """``stages.train_stage(**training)`` in this process, in a scratch folder that starts from ``checkpoint``,
    each epoch reported through ``report``: a trial's own process, or one rank of a data-parallel trial."""
    from detector.job import stages

    with _trial_workspace(name, checkpoint) as (out_dir, start):
        on_epoch = _reporter(extra, start, report)
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
        _train_in_process(training, extra, trial_id, tune.get_checkpoint(), _tune_report)
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
        train_loop_config={"training": training, "extra": extra, "trial_id": trial_id},
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
    _train_in_process(config["training"], config["extra"], f"{config['trial_id']}-rank{rank}",
                      ray.train.get_checkpoint(), _train_report)


def _require_train_v2() -> None:
    """The data-parallel trials use Ray Train's V2 API (the default since Ray 2.51)."""
    from ray.train.v2._internal.constants import V2_ENABLED_ENV_VAR, is_v2_enabled

    if not is_v2_enabled():
        raise RuntimeError(f"{V2_ENABLED_ENV_VAR}={os.environ.get(V2_ENABLED_ENV_VAR)}: data-parallel trials "
                           f"(resources.workers_per_trial > 1) need Ray Train V2; unset it or set it to 1")


def _announce(stage: str, label: str, detail: dict[str, Any]) -> None:
    """One line at a trial's start that names it: the Ray dashboard's actor logs show which trial is which."""
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
    tune.report({**saved["history"][-1], **extra, "trial_start": time.time(), "time_now": time.time()})
    return True


def detector_baseline(config: dict[str, Any], ctx: StageContext) -> None:
    """The baseline stage's trainable (its name is what the Ray dashboard shows for the trial's actor)."""
    run = RunFolder(Path(ctx.run_dir))
    cfg = ctx.experiment.stage_train("baseline")
    _announce("baseline", "baseline", {"arch": cfg.arch, "max_epochs": cfg.max_epochs})
    if _already_saved(run.model(0.0), {"sparsity": 0.0}):
        return
    _train_trial(ctx, "baseline", {"cfg": cfg, "data": ctx.data, "tb_dir": run.tensorboard_run("baseline"),
                                   "model_path": run.model(0.0)}, {"sparsity": 0.0})


def _train_pruned(ctx: StageContext, sparsity: float, params: dict[str, Any], *, stage: str,
                  trial: int | None, save: bool) -> None:
    """Prune the baseline to ``sparsity`` and train it with the searched ``params`` for a stage."""
    run = RunFolder(Path(ctx.run_dir))
    section = "search_train" if stage == "search" else stage
    searched = {name: params[name] for name in param_names()}
    label = trial_label(sparsity, trial) if stage == "search" else sparsity_label(sparsity)
    _announce(stage, label, {"sparsity": sparsity, "method": ctx.experiment.search.method, **searched})
    if save and _already_saved(run.model(sparsity), {"sparsity": sparsity}):
        return
    extra: dict[str, Any] = {"sparsity": sparsity}
    if stage == "search" and ctx.experiment.search.mode == "pareto":
        extra.update(_size_objectives(ctx, run, sparsity))
    _train_trial(ctx, stage, {
        "cfg": ctx.experiment.stage_train(section, **searched),
        "data": ctx.data,
        "tb_dir": run.tensorboard_run(stage, sparsity, trial),
        "init": run.model(0.0),
        "sparsity": sparsity,
        "method": ctx.experiment.search.method,
        "schedule": ctx.experiment.search.pruning_schedule(),
        "model_path": run.model(sparsity) if save else None,
    }, extra)


def _size_objectives(ctx: StageContext, run: RunFolder, sparsity: float) -> dict[str, float]:
    """A Pareto trial's size objectives, measured on the baseline pruned to its sparsity (training keeps
    the zeros and the shapes, so they hold for the trained model too)."""
    from detector.checkpoint import load_model
    from detector.job.pareto import SIZE_OBJECTIVES, size_objectives
    from detector.prune import prune

    wanted = [o for o in ctx.experiment.search.objectives if o in SIZE_OBJECTIVES]
    if not wanted:
        return {}
    model, meta = load_model(run.model(0.0))
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
    from detector.job import stages

    start = time.time()
    sparsity = float(config["sparsity"])
    run = RunFolder(Path(ctx.run_dir))
    _announce("evaluate", model_name(sparsity), {"checkpoint": run.model(sparsity)})
    if run.evaluation(sparsity).exists():  # restored by Tune after the evaluation was written
        result = json.loads(run.evaluation(sparsity).read_text())
        tune.report({"sparsity": sparsity, "trial_start": start, "time_now": time.time(),
                     "test_accuracy": result["metrics"]["test"]["all"]["accuracy"]})
        return
    result = stages.evaluate_stage(
        run.model(sparsity), data=ctx.data, cfg=ctx.experiment.evaluate, out=run.evaluation(sparsity),
        predictions=run.predictions(sparsity), pruned_from=run.model(0.0) if sparsity > 0 else None,
    )
    tune.report({"sparsity": sparsity, "trial_start": start, "time_now": time.time(),
                 "test_accuracy": result["metrics"]["test"]["all"]["accuracy"]})


# --------------------------------------------------------------------------------------------------
# The live trial table, and stopping.


def _trial_state(trial: Any, finished: bool) -> str:
    """A trial's state for the status table. ``finished``: Tune ended it in the experiment's loop. When an
    experiment ends early (a stop, an error), Tune's clean-up marks its running trials TERMINATED too, though
    they stay unfinished in its saved state and resume: those are "stopped", not "done"."""
    last = trial.last_result or {}
    if trial.status == "TERMINATED":
        if not finished:
            return "stopped"
        return "failed" if last.get("trial_failed") else "done"
    return {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "ERROR": "error"}.get(trial.status,
                                                                                             "pending")


def _trial_label(experiment: str, config: dict[str, Any]) -> str:
    stage = tune_stage(experiment)
    sparsity = float(config.get("sparsity", 0.0))
    if stage == "search":
        return trial_label(sparsity, config.get("trial"))
    return model_name(sparsity) if stage == "evaluate" else ("baseline" if stage == "baseline"
                                                             else sparsity_label(sparsity))


class LiveStatus(tune.Callback):
    """Keeps ``RUN/status/<stage>.json`` true while the experiment runs (every trial: state, epochs done of
    planned, last and best val accuracy, restarts, failure reason), and asks Tune to stop when the driver
    was signalled. It runs where Tune's loop runs (the driver; on the cluster through Ray Client). The
    current driver's sink, registered by stage name, wins over the one this callback was created with, so a
    callback restored with Tune's experiment (``Tuner.restore``) writes where the current driver says."""

    def __init__(self, sink: "_Sink") -> None:
        self.stage = sink.stage
        self.sink = sink

    def _sink(self) -> "_Sink | None":
        return _SINKS.get(self.stage, self.sink)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        sink = self._sink()
        if sink is None:
            return
        sink.in_loop = True
        if sink.stop_asked and not sink.stop_sent:
            # Tune's own handler for SIGUSR1 ends the experiment loop and saves its state (trials stay
            # unfinished, so they resume); inside the loop that handler is certainly installed.
            sink.stop_sent = True
            os.kill(os.getpid(), signal.SIGUSR1)
        if time.monotonic() - sink.written > 2.0:
            sink.write(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._write(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sink = self._sink()
        if sink is not None:
            sink.finished.add(trial.trial_id)  # Tune calls this just before it marks the trial TERMINATED
        self._write(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._write(trials, final=True)

    def _write(self, trials: list, final: bool = False) -> None:
        sink = self._sink()
        if sink is not None:
            sink.write(trials, final=final)


def _final_rows(run: RunFolder, stage: str) -> list[dict[str, Any]]:
    """The trial rows as the live-status callback last wrote them (wherever Tune's loop ran)."""
    try:
        return json.loads(run.stage_status(stage).read_text())["trials"]
    except (OSError, ValueError, KeyError):
        return []


@dataclass
class _Sink:
    run: RunFolder
    stage: str
    metric: str
    epochs_planned: int
    written: float = 0.0
    in_loop: bool = False
    stop_asked: bool = False
    stop_sent: bool = False
    objectives: tuple[str, ...] = ()  # a Pareto search's objectives, recorded per trial
    objective: str = "val_accuracy"  # the result key a search trial is judged by (selection.objective_key)
    finished: set[str] = dataclasses.field(default_factory=set)  # trials Tune ended inside its loop

    def ask_stop(self) -> None:
        self.stop_asked = True
        if self.in_loop and not self.stop_sent:
            self.stop_sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def write(self, trials: list, *, final: bool = False) -> None:
        from detector.job.status import write_trials

        if not final:  # until the experiment ends, TERMINATED means Tune ended the trial as done
            self.finished |= {t.trial_id for t in trials if t.status == "TERMINATED"}
        rows = []
        for trial in trials:
            last = trial.last_result or {}
            config = trial.config or {}
            rows.append({
                "trial_id": trial.trial_id,
                "name": f"{self.stage}/{_trial_label(self.stage, config)}",
                "trial": config.get("trial"),
                "sparsity": float(config.get("sparsity", 0.0)),
                "params": {k: config[k] for k in param_names() if k in config},
                "state": _trial_state(trial, trial.trial_id in self.finished),
                # fit's own epoch count: Tune's training_iteration starts again at 1 in a data-parallel trial
                # resumed after its driver died (its checkpoints are Ray Train's, not Tune's)
                "epochs": int(last.get("epoch") or last.get("training_iteration") or 0),
                "epochs_planned": self.epochs_planned,
                "val_accuracy": _finite_or_none(last.get("val_accuracy")),
                "best_val_accuracy": _finite_or_none(last.get("best_val_accuracy")),
                "objective": _finite_or_none(last.get(self.objective)),
                "restarts": int(trial.num_failures),
                **({"objectives": {o: _finite_or_none(last.get(o)) for o in self.objectives}}
                   if self.objectives else {}),
                "reason": last.get("trial_failed") or (_first_line(trial.error_file) if trial.status == "ERROR"
                                                       else None),
                "started": last.get("trial_start"),
                "updated": last.get("time_now"),
            })
        write_trials(self.run, self.stage, rows, metric=self.metric, epochs_planned=self.epochs_planned)
        self.written = time.monotonic()


_SINKS: dict[str, _Sink] = {}


def _finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _first_line(error_file: str | None) -> str | None:
    """The last line of a trial's error file (its exception), which Tune writes as text."""
    if not error_file:
        return None
    try:
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
    except OSError:
        return "error (see the trial's error.txt)"
    return lines[-1][:300] if lines else None


# --------------------------------------------------------------------------------------------------
# Experiments.


def _resources(res: TrialResources) -> dict[str, float]:
    """What a trial's own process holds in Tune: all of the trial, or only its driver when the trial is
    data-parallel (its Ray Train workers hold the rest, in a placement group of their own)."""
    if res.data_parallel:
        return {"cpu": DRIVER_CPUS}
    return {"cpu": res.cpus_per_trial, **({"gpu": res.gpus_per_trial} if res.gpus_per_trial > 0 else {})}


def _epochs_planned(exp: ExperimentConfig, experiment: str) -> int:
    section = {"baseline": "baseline", "search": "search_train", "finetune": "finetune"}.get(tune_stage(experiment))
    return exp.stage_train(section).max_epochs if section else 1


def run_experiment(
    name: str,
    trainable: Callable[[dict[str, Any], StageContext], None],
    ctx: StageContext,
    *,
    stop: StopSignals,
    expected: int,
    param_space: dict[str, Any] | None = None,
    search_alg: Searcher | None = None,
    scheduler: Any = None,
    num_samples: int = 1,
    max_concurrent_trials: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the Tune experiment ``RUN/tune/<name>``; the final trial rows (``RUN/status/<name>.json``).

    An experiment folder that Tune can restore is resumed: finished trials keep their results and are not
    run again, unfinished and errored ones continue from their last checkpoint, the searcher's studies
    continue where they stopped. A stop signal ends the experiment (Tune saves its state) and raises
    ``RunStopped``; an experiment that ends with fewer than ``expected`` trials done raises
    ``StageIncomplete``: nothing partial is ever returned as the stage's result.
    """
    exp = ctx.experiment
    run = RunFolder(Path(ctx.run_dir))
    storage = run.tune_root(exp.storage)
    path = run.tune_experiment(name, exp.storage)
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx),
                             _resources(exp.resources.stage(tune_stage(name))))
    sink = _Sink(run, name, exp.search.metric, _epochs_planned(exp, name),
                 objective=objective_key(exp.search.metric, exp.search.objective),
                 objectives=tuple(exp.search.objectives) if exp.search.mode == "pareto" and
                 tune_stage(name) == "search" else ())
    _SINKS[name] = sink
    try:
        if tune.Tuner.can_restore(path):
            log.info("resuming the %s experiment from %s", name, path)
            _check_trusted(path, ctx.trust_run_folder)
            tuner = tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                fn,
                param_space=param_space or {},
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=scheduler,
                    num_samples=num_samples,
                    # both are limits: the stage's own (evaluate, data-parallel trials) and the config's
                    max_concurrent_trials=min(
                        filter(None, (max_concurrent_trials, exp.resources.max_concurrent_trials)), default=None),
                    trial_dirname_creator=lambda t: f"{t.trial_id}",
                    trial_name_creator=lambda t: _trial_label(name, t.config),
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=exp.resources.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), LiveStatus(sink)],
                    verbose=1,
                ),
            )
        with stop.deferring(sink.ask_stop):
            tuner.fit()
        stop.check(name)
    finally:
        _SINKS.pop(name, None)
    rows = _final_rows(run, name)
    finished = [r for r in rows if r["state"] in ("done", "failed")]
    if len(finished) < expected:
        left = [f"{r['name']} ({r['state']}{': ' + r['reason'] if r.get('reason') else ''})"
                for r in rows if r["state"] not in ("done", "failed")]
        raise StageIncomplete(
            f"{name}: {len(finished)} of {expected} trials finished; not done: {', '.join(left) or 'never started'}."
            f" Nothing is written for this stage; `detector run --resume --out {ctx.run_dir}` continues it "
            f"(Tune's experiment: {path})")
    return rows


def _check_trusted(path: str, trusted: bool) -> None:
    """Refuse to unpickle Tune's state (``Tuner.restore`` does) from files that someone else could have
    written: on a shared volume a teammate, or anyone with write access, could plant code there."""
    from detector.job.runfolder import untrusted_files
    from detector.paths import is_uri

    if trusted:
        return
    if is_uri(path):
        log.warning("%s: resuming from object storage; its objects' writers are not checked (bucket policy decides "
                    "who can write them)", path)
        return
    bad = untrusted_files(Path(path))
    if bad:
        raise ValueError(
            f"{path}: Tune's saved state, which resuming unpickles (it can run code), is writable by others or not "
            f"yours: {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. Check who wrote it, then resume with "
            "--trust-run-folder (or start a new --out folder)")


def run_search(ctx: StageContext, stop: StopSignals, sparsities: Sequence[float] | None = None,
               name: str = "search") -> dict[str, Any]:
    """Stage 1: every sparsity's Optuna search in one Tune experiment (``name``: ``search``, or a frontier
    round's ``search-rN`` over its probes); returns trials and best params."""
    from ray.tune.schedulers import ASHAScheduler

    exp = ctx.experiment
    s = exp.search
    run = RunFolder(Path(ctx.run_dir))
    max_epochs = exp.stage_train("search_train").max_epochs
    space = {name: _tune_domain(domain) for name, domain in search_space(s).items()}
    sparsities = list(s.sparsities if sparsities is None else sparsities)
    key = objective_key(s.metric, s.objective)  # what the searcher, ASHA and the pick judge a trial by
    searcher = SparsitySearcher(
        sparsities, trials_per_sparsity=s.trials_per_sparsity, space=space, metric=key, mode=s.direction,
        seed=s.seed, tpe_startup_trials=s.tpe_startup_trials, storage=s.storage or str(run.optuna_journal),
        study_prefix=f"{run.root.name}/" if s.storage else "",
    )
    scheduler = None
    if s.scheduler == "asha":
        scheduler = ASHAScheduler(
            metric=key, mode=s.direction, time_attr="training_iteration", max_t=max_epochs,
            grace_period=s.asha_grace_period, reduction_factor=s.asha_reduction_factor,
        )
    budget = len(sparsities) * s.trials_per_sparsity
    # With a searcher, Tune keeps one trial pending at a time (so that it can learn from results first);
    # a cluster scaling up from zero GPUs would then start the searches one after another. One pending
    # trial per sparsity lets every search start at once; a cluster that already fits more trials gets as
    # many pending as it fits (bench/cluster_schedule.py: trial processes then start in one wave, not in
    # waves of four). TPE's start-up trials are random draws anyway, so nothing is lost to the searcher.
    res = exp.resources.stage("search")
    pending = search_pending(budget, len(sparsities), _trials_that_fit(res))
    with _env_default("TUNE_MAX_PENDING_TRIALS_PG", str(pending)):
        rows = run_experiment(name, detector_search, ctx, stop=stop, expected=budget, search_alg=searcher,
                              scheduler=scheduler, num_samples=budget,
                              max_concurrent_trials=_data_parallel_trials(res, pending))
    trials = sorted((trial_row(r) for r in rows), key=lambda t: (t["sparsity"], t["trial"]))
    best: dict[str, Any] = {}
    for sp in sparsities:
        done = [t for t in trials if t["sparsity"] == sp and t["status"] == "completed" and t["objective"] is not None]
        if not done:
            raise StageIncomplete(f"{name}: no trial at sparsity {sp:g} completed (all failed: "
                                  f"{'; '.join(t['status'] for t in trials if t['sparsity'] == sp)})")
        top, _ = select_best(done, mode=s.direction)
        best[f"{sp:g}"] = {"sparsity": sp, "params": top["params"], "objective": top["objective"],
                           "val_accuracy": top["val_accuracy"], "trial_id": top["trial_id"], "name": top["name"]}
    return {
        "metric": s.metric,
        "objective": f"{s.metric} {OBJECTIVE_EPOCH[s.objective]}",
        "objective_key": key,
        "direction": s.direction,
        "scheduler": s.scheduler,
        "epochs_run": sum(t["epochs"] for t in trials),
        "epochs_budget": budget * max_epochs,
        "trials": trials,
        "best": best,
    }


def run_pareto(ctx: StageContext, stop: StopSignals) -> dict[str, Any]:
    """``search.mode: pareto``: one multi-objective study over sparsity and the training parameters; returns
    every trial with its objectives, the Pareto front, and the front's models to fine-tune (as ``best``)."""
    from detector.job.pareto import SPARSITY_STEP, non_dominated, pick_models

    exp, s = ctx.experiment, ctx.experiment.search
    run = RunFolder(Path(ctx.run_dir))
    space = {name: _tune_domain(domain) for name, domain in search_space(s).items()}
    space["sparsity"] = tune.quniform(s.pareto_sparsity_min, s.pareto_sparsity_max, SPARSITY_STEP)
    searcher = ParetoSearcher(trials=s.pareto_trials, space=space, objectives=s.objectives, seed=s.seed,
                              tpe_startup_trials=s.tpe_startup_trials, storage=s.storage or str(run.optuna_journal),
                              study_name=f"{run.root.name}/pareto" if s.storage else "pareto")
    res = exp.resources.stage("search")
    pending = max(1, min(s.pareto_trials, _trials_that_fit(res)))
    with _env_default("TUNE_MAX_PENDING_TRIALS_PG", str(pending)):
        rows = run_experiment("search", detector_search, ctx, stop=stop, expected=s.pareto_trials,
                              search_alg=searcher, num_samples=s.pareto_trials,
                              max_concurrent_trials=_data_parallel_trials(res, pending))
    trials = sorted((trial_row(r) for r in rows), key=lambda t: t["trial"])
    done = [t for t in trials if t["status"] == "completed"]
    if not done:
        raise StageIncomplete("search: no Pareto trial completed")
    front = non_dominated(done, s.objectives)
    picks = pick_models(front, s.pareto_models)
    return {
        "mode": "pareto",
        "metric": s.metric,
        "objectives": list(s.objectives),
        "objective": "each objective at the trial's last epoch (sizes: the pruned model's)",
        "direction": s.direction,
        "scheduler": "none",
        "epochs_run": sum(t["epochs"] for t in trials),
        "epochs_budget": s.pareto_trials * exp.stage_train("search_train").max_epochs,
        "trials": trials,
        "front": [t["trial_id"] for t in front],
        "best": {f"{t['sparsity']:g}": {"sparsity": t["sparsity"], "params": t["params"], "objective": t["objective"],
                                        "val_accuracy": t["val_accuracy"], "trial_id": t["trial_id"],
                                        "name": t["name"]} for t in picks},
    }


def trial_row(row: dict[str, Any]) -> dict[str, Any]:
    """One finished search trial as results.json lists it: its parameters, its objective (the metric at its
    last epoch), its val accuracy at the last and at the best epoch, epochs, start/end, status."""
    status = "completed" if row["state"] == "done" else f"failed: {row.get('reason')}"
    ok = status == "completed"
    return {
        "trial_id": row["trial_id"],
        "name": row["name"],
        "trial": row["trial"],
        "sparsity": row["sparsity"],
        "params": row["params"],
        # a row written before search.objective existed holds the last epoch's val accuracy only
        "objective": row.get("objective", row["val_accuracy"]) if ok else None,
        "val_accuracy": row["val_accuracy"] if ok else None,
        "best_val_accuracy": row["best_val_accuracy"] if ok else None,
        "epochs": row["epochs"],
        "start": row["started"],
        "end": row["updated"],
        "status": status,
        **({"objectives": row["objectives"]} if "objectives" in row else {}),
    }


def search_pending(budget: int, sparsities: int, fit: int) -> int:
    """How many of a grid search's ``budget`` trials may wait for resources at once
    (``TUNE_MAX_PENDING_TRIALS_PG``): one per sparsity, or as many as the cluster ``fit``s now if more."""
    return min(budget, max(sparsities, fit))


def _trials_that_fit(res: TrialResources) -> int:
    """How many trials the cluster's resources hold now (GPUs, or CPUs for CPU-only trials), every worker of
    a data-parallel trial counted."""
    total = ray.cluster_resources()
    if res.gpus_per_trial > 0:
        return int(total.get("GPU", 0.0) // (res.gpus_per_trial * res.workers_per_trial))
    return int(total.get("CPU", 0.0) // (res.cpus_per_trial * res.workers_per_trial))


def _data_parallel_trials(res: TrialResources, trials: int) -> int | None:
    """How many data-parallel trials may run at once (None: not data-parallel, Tune's resources decide).

    Tune sees only such a trial's driver (``DRIVER_CPUS``) and would start every trial at once, each then
    waiting for its Ray Train workers; ``trials`` of them (one per search, or what the cluster fits) start
    instead, and the autoscaler sees their workers' demand."""
    return trials if res.data_parallel else None


def _tune_domain(domain: Domain) -> Any:
    """A search-space entry as Tune's domain (OptunaSearch converts those into Optuna distributions)."""
    if isinstance(domain, Categorical):
        return tune.choice(list(domain.choices))
    if isinstance(domain, LogUniform):
        return tune.loguniform(domain.low, domain.high)
    raise TypeError(f"no Tune domain for {domain!r}")


def run_baseline(ctx: StageContext, stop: StopSignals) -> None:
    rows = run_experiment("baseline", detector_baseline, ctx, stop=stop, expected=1)
    _raise_if_failed("baseline", rows)


def run_finetune(ctx: StageContext, sparsities: Sequence[float], stop: StopSignals,
                 name: str = "finetune") -> list[dict[str, Any]]:
    rows = run_experiment(name, detector_finetune, ctx, stop=stop, expected=len(sparsities),
                          param_space={"sparsity": tune.grid_search(list(sparsities))})
    _raise_if_failed(name, rows)
    return rows


def run_evaluate(ctx: StageContext, sparsities: Sequence[float], stop: StopSignals) -> None:
    rows = run_experiment("evaluate", detector_evaluate, ctx, stop=stop, expected=len(sparsities),
                          param_space={"sparsity": tune.grid_search(list(sparsities))},
                          max_concurrent_trials=ctx.experiment.evaluate.concurrent_trials)
    _raise_if_failed("evaluate", rows)


def _raise_if_failed(name: str, rows: list[dict[str, Any]]) -> None:
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} trial(s) failed, first {failed[0]['name']}: {failed[0]['reason']}")


# --------------------------------------------------------------------------------------------------
# Connecting, and reading a run's trials.


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    embedded: bool


def private_token() -> Path | None:
    """Make the token an embedded Ray authenticates with readable by this user only; its path, or None
    where token authentication is off or the token comes from the environment.

    Ray 2.60, starting a local cluster without a token, writes ``~/.ray/auth_token`` with a plain
    ``open()``: 0644 under the usual umask, so every user of a shared host could read it and run code on
    the cluster. The token is written here first instead, 0600 from the start (Ray then finds and uses
    it), and an existing one of ours is made 0600.
    """
    import secrets

    from detector.io import create_text

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not create_text(path, secrets.token_hex(32), private=True):  # Ray's own format: 256 random bits
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            log.warning("%s was readable by others (mode %o); made it 0600", path, st.st_mode & 0o777)
            os.chmod(path, 0o600)
    return path


@contextlib.contextmanager
def _on_loopback() -> Iterator[None]:
    """Start an embedded Ray whose servers (GCS, raylet, object manager, workers, agents) listen on
    127.0.0.1 only.

    Ray binds them to the node's address, and takes 127.0.0.1 for it only where multi-node clusters are
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its default on macOS and Windows); on Linux it picks the
    machine's network address, and the GCS and raylet then listen on every interface. The processes
    ``ray.init`` starts read the variable at start (and the workers the raylet starts later inherit it);
    this process imported Ray already, so its own copy of the flag is set too, for the start only.
    tests/test_embedded_ray.py checks the listening addresses, so a Ray release that changes this shows.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def _client_init(address: str, env: dict[str, str], attempts: int = 3) -> Any:
    """``ray.init`` through Ray Client, tried again when the head's proxy could not start this client's
    server: Ray's proxier reports ``Initialization failure from server`` when that process exits while it
    starts (seen on a loaded 2-core machine: psutil's ZombieProcess), and a new connection gets a new one.
    A failed attempt has already disconnected (``ray.util.client``), so the next one starts clean."""
    for attempt in range(1, attempts):
        try:
            return ray.init(address=address, runtime_env={"env_vars": env})
        except ConnectionAbortedError as e:
            log.warning("Ray Client: the head could not start a server for this driver (attempt %d of %d): "
                        "%s; trying again", attempt, attempts, str(e).splitlines()[0])
            time.sleep(2.0 * attempt)
    return ray.init(address=address, runtime_env={"env_vars": env})


def connect(address: str | None, exp: ExperimentConfig, *, job_name: str = "detector") -> ClusterInfo:
    """Join a running cluster (``address``: "auto", "ray://HOST:10001", or RAY_ADDRESS set, as under
    ``ray job submit``), or start an embedded local Ray sized by ``resources.local_num_cpus``, on the
    loopback only and with a token only this user can read."""
    # `embedded`: this call starts Ray, so the pipeline shuts it down at the end (a Ray the caller started,
    # or a cluster, is left alone).
    embedded = address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    # The Ray dashboard's Jobs table names a job by its metadata's job_name.
    job_config = ray.job_config.JobConfig(metadata={"job_name": job_name})
    if ray.is_initialized():
        ctx = None
    elif embedded:
        private_token()
        with _on_loopback():
            ctx = ray.init(
                # "local": always a new in-process cluster, never one that `ray start` left on this machine
                address="local",
                num_cpus=exp.resources.local_num_cpus or None,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=True,
                job_config=job_config,
            )
    elif address and address.startswith("ray://"):
        # Through Ray Client the Tune driver runs on the cluster, not here: Tune's settings travel with it.
        env = {k: v for k, v in os.environ.items() if k.startswith("TUNE_")}
        env.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(len(exp.search.sparsities)))
        # (Ray Client cannot carry a JobConfig: the job keeps the client's default name)
        ctx = _client_init(address, env)
    else:
        ctx = ray.init(address=address, job_config=job_config)
    resources = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    dashboard = None
    if ctx is not None and getattr(ctx, "dashboard_url", None):
        dashboard = ctx.dashboard_url if "://" in ctx.dashboard_url else f"http://{ctx.dashboard_url}"
    stage, gpus = max(((s, exp.resources.stage(s).gpus_per_trial) for s in (*TRAINING_STAGES, "evaluate")),
                      key=lambda x: x[1])
    if gpus > 0 and resources.get("GPU", 0.0) < gpus:
        if embedded:
            from detector.config import ConfigError

            key = exp.resources.key(stage, "gpus_per_trial")
            raise ConfigError(
                f"{key}={gpus:g} but this machine's Ray has no GPU; "
                f"run with --set {key}=0 (and a small cpus_per_trial) on a CPU machine"
            )
        log.warning("the cluster has %s GPU(s) now; trials wait for GPU workers (autoscaler)",
                    resources.get("GPU", 0.0))
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address, dashboard_url=dashboard, resources=resources,
        embedded=embedded,
    )


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """Set an environment variable unless the user did, for one experiment only: a later experiment in
    the same process (a notebook, the test suite) must not inherit this one's value."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
