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
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from detector.job.experiment import ExperimentConfig
from detector.job.runfolder import TUNE_STAGES, RunFolder
from detector.job.search_space import Categorical, Domain, LogUniform, param_names, search_space

log = logging.getLogger(__name__)

# Tune's own TensorBoard logger would write a second copy of every scalar beside ours (detector.train
# writes one TensorBoard run per trial under RUN/tensorboard); CSV and JSON stay, the ResultGrid needs them.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

TRIAL_START_FILE = "trial_start.txt"


class SparsitySearcher(Searcher):
    """One Optuna study per sparsity inside a single Tune experiment.

    ``suggest`` picks the sparsity with the fewest trials handed out so far (round-robin), asks that
    sparsity's ``OptunaSearch`` for parameters and adds ``sparsity`` to the trial's config. Results and
    completions go back to the study that proposed the trial, so each study only ever sees its own trials,
    exactly as if the four searches ran as four separate experiments.

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
    ) -> None:
        import optuna

        super().__init__(metric=metric, mode=mode)
        self.sparsities = [float(s) for s in sparsities]
        self.trials_per_sparsity = trials_per_sparsity
        self.studies: dict[float, OptunaSearch] = {}
        # Tune's search-space objects -> Optuna distributions, once, so each study gets a resolved space.
        space = OptunaSearch.convert_search_space(space)
        for i, s in enumerate(self.sparsities):
            sampler = optuna.samplers.TPESampler(seed=seed + i, n_startup_trials=tpe_startup_trials)
            self.studies[s] = OptunaSearch(
                space=dict(space), metric=metric, mode=mode, sampler=sampler, study_name=f"sparsity-{s:g}"
            )
        self.trial_sparsity: dict[str, float] = {}

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
        params = self.studies[sparsity].suggest(trial_id)
        return {**params, "sparsity": sparsity}

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

    def save(self, checkpoint_path: str) -> None:
        state = {
            "trial_sparsity": self.trial_sparsity,
            "studies": {s: st.__dict__.copy() for s, st in self.studies.items()},
            "sparsities": self.sparsities,
            "trials_per_sparsity": self.trials_per_sparsity,
            "metric": self._metric,
            "mode": self._mode,
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state["sparsities"] != self.sparsities:
            raise ValueError(
                f"{checkpoint_path}: the saved search is over sparsities {state['sparsities']}, "
                f"the config asks for {self.sparsities}; use a new --out folder for a different search"
            )
        self.trial_sparsity = state["trial_sparsity"]
        for s, d in state["studies"].items():
            self.studies[s].__dict__.update(d)


# --------------------------------------------------------------------------------------------------
# Trainables: thin wrappers over detector.job.stages.


@dataclass(frozen=True)
class StageContext:
    """What every trial of a stage needs besides its Tune config; shipped once through the object store."""

    run_dir: str
    experiment: ExperimentConfig
    data: str
    # finetune: sparsity -> {"optimizer": ..., "lr": ...}
    best_params: dict[float, dict[str, Any]] | None = None


@contextlib.contextmanager
def _trial_workspace() -> Iterator[tuple[Path, float]]:
    """A node-local scratch folder for the training loop's per-epoch state, and the trial's start time.

    The loop's ``checkpoint/`` folder goes to Tune through ``tune.report`` every epoch; the scratch copy is
    kept out of the trial's folder (which lives in the run's storage) so that it is not stored twice, and
    is removed when the trial ends (or, when its worker was killed, at the next trial start on the node:
    ``detector.job.scratch``). A restarted trial starts from Tune's last checkpoint, copied in here,
    and keeps its original start time, so that the report's timeline stays honest.
    """
    from detector.job.scratch import make_scratch

    out_dir = make_scratch(tune.get_context().get_trial_id())
    try:
        ckpt_dir = out_dir / "checkpoint"
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                shutil.copytree(d, ckpt_dir, dirs_exist_ok=True)
            log.info("trial %s restarts from its checkpoint", tune.get_context().get_trial_name())
        start_file = ckpt_dir / TRIAL_START_FILE
        if start_file.is_file():
            start = float(start_file.read_text())
        else:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            start = time.time()
            start_file.write_text(repr(start))
        yield out_dir, start
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _reporter(extra: dict[str, Any], trial_start: float) -> Callable[[dict[str, float], Path], None]:
    def on_epoch(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        row = {**metrics, **extra, "trial_start": trial_start, "time_now": time.time()}
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    return on_epoch


def _train_or_fail(train: Callable[[], Any], extra: dict[str, Any], trial_start: float) -> None:
    """Run a trial's training; a non-finite loss ends the trial with its reason instead of a retry
    (it would only diverge again) and instead of failing the whole search."""
    from detector.train import NonFiniteLossError

    try:
        train()
    except NonFiniteLossError as e:
        log.error("trial %s: %s", tune.get_context().get_trial_name(), e)
        # Tune insists on the metric in every result; NaN marks it as no value (the searcher records a failure).
        tune.report({**extra, "val_accuracy": float("nan"), "trial_failed": str(e), "trial_start": trial_start,
                     "time_now": time.time()})


def _baseline_trial(config: dict[str, Any], ctx: StageContext) -> None:
    from detector.job import stages

    run = RunFolder(Path(ctx.run_dir))
    with _trial_workspace() as (out_dir, start):
        _train_or_fail(lambda: stages.train_stage(
            ctx.experiment.stage_train("baseline"),
            data=ctx.data,
            out_dir=out_dir,
            tb_dir=run.tensorboard_run("baseline"),
            model_path=run.model(0.0),
            on_epoch=_reporter({"sparsity": 0.0}, start),
        ), {"sparsity": 0.0}, start)


def _train_pruned(ctx: StageContext, sparsity: float, params: dict[str, Any], *, stage: str,
                  save: bool) -> None:
    """Prune the baseline to ``sparsity`` and train it with the searched ``params`` for a stage."""
    from detector.job import stages

    run = RunFolder(Path(ctx.run_dir))
    section = "search_train" if stage == "search" else stage
    searched = {name: params[name] for name in param_names()}
    trial = tune.get_context().get_trial_name() if stage == "search" else None
    with _trial_workspace() as (out_dir, start):
        _train_or_fail(lambda: stages.train_stage(
            ctx.experiment.stage_train(section, **searched),
            data=ctx.data,
            out_dir=out_dir,
            tb_dir=run.tensorboard_run(stage, sparsity, trial),
            init=run.model(0.0),
            sparsity=sparsity,
            method=ctx.experiment.search.method,
            model_path=run.model(sparsity) if save else None,
            on_epoch=_reporter({"sparsity": sparsity}, start),
        ), {"sparsity": sparsity}, start)


def _search_trial(config: dict[str, Any], ctx: StageContext) -> None:
    # A search trial saves nothing but its result; whether it may stop early is search_train.patience.
    _train_pruned(ctx, float(config["sparsity"]), config, stage="search", save=False)


def _finetune_trial(config: dict[str, Any], ctx: StageContext) -> None:
    sparsity = float(config["sparsity"])
    assert ctx.best_params is not None
    _train_pruned(ctx, sparsity, ctx.best_params[sparsity], stage="finetune", save=True)


def _evaluate_trial(config: dict[str, Any], ctx: StageContext) -> None:
    from detector.job import stages

    start = time.time()
    sparsity = float(config["sparsity"])
    run = RunFolder(Path(ctx.run_dir))
    result = stages.evaluate_stage(
        run.model(sparsity), data=ctx.data, cfg=ctx.experiment.evaluate, out=run.evaluation(sparsity),
        predictions=run.predictions(sparsity),
    )
    tune.report({"sparsity": sparsity, "trial_start": start, "time_now": time.time(),
                 "test_accuracy": result["metrics"]["test"]["all"]["accuracy"]})


# --------------------------------------------------------------------------------------------------
# Experiments.


def _resources(exp: ExperimentConfig) -> dict[str, float]:
    res = {"cpu": exp.resources.cpus_per_trial}
    if exp.resources.gpus_per_trial > 0:
        res["gpu"] = exp.resources.gpus_per_trial
    return res


def run_experiment(
    name: str,
    trainable: Callable[[dict[str, Any], StageContext], None],
    ctx: StageContext,
    *,
    param_space: dict[str, Any] | None = None,
    search_alg: Searcher | None = None,
    scheduler: Any = None,
    num_samples: int = 1,
    max_concurrent_trials: int | None = None,
) -> tune.ResultGrid:
    """Run (or resume) the Tune experiment ``RUN/tune/<name>``.

    An experiment folder that Tune can restore is resumed: finished trials keep their results and are not
    run again, unfinished and errored ones continue from their last checkpoint, the searcher's studies
    continue where they stopped.
    """
    exp = ctx.experiment
    run = RunFolder(Path(ctx.run_dir))
    storage = run.tune_root(exp.storage)
    path = run.tune_experiment(name, exp.storage)
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), _resources(exp))
    if tune.Tuner.can_restore(path):
        log.info("resuming the %s experiment from %s", name, path)
        tuner = tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            param_space=param_space or {},
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=max_concurrent_trials or exp.resources.max_concurrent_trials or None,
                trial_dirname_creator=lambda t: f"{t.trial_id}",
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=exp.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
                verbose=1,
            ),
        )
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]
    if errors:
        details = "; ".join(f"{r.path}: {type(r.error).__name__}: {r.error}" for r in errors)
        log.error("%s: %d of %d trials failed: %s", name, len(errors), len(results), details)
    return results


def trial_row(result: tune.Result, *, metric: str) -> dict[str, Any]:
    """One trial as the report lists it: sparsity, params, metric, epochs, start/end (Unix seconds), status."""
    m = result.metrics or {}
    cfg = result.config or {}
    status = "completed"
    if result.error is not None:
        status = f"error: {type(result.error).__name__}: {result.error}"
    elif m.get("trial_failed"):
        status = f"failed: {m['trial_failed']}"
    return {
        "trial_id": m.get("trial_id") or Path(result.path).name,
        "sparsity": float(cfg.get("sparsity", m.get("sparsity", 0.0))),
        "params": {k: cfg[k] for k in param_names() if k in cfg},
        "objective": m.get(metric) if status == "completed" else None,  # the searched metric, last epoch
        "val_accuracy": m.get("val_accuracy") if status == "completed" else None,
        "best_val_accuracy": m.get("best_val_accuracy") if status == "completed" else None,
        "epochs": int(m.get("training_iteration", 0) or 0),
        "start": m.get("trial_start"),
        "end": m.get("time_now"),
        "status": status,
    }


def run_search(ctx: StageContext) -> dict[str, Any]:
    """Stage 1: every sparsity's Optuna search in one Tune experiment; returns trials and best params."""
    from ray.tune.schedulers import ASHAScheduler

    exp = ctx.experiment
    s = exp.search
    max_epochs = exp.stage_train("search_train").max_epochs
    space = {name: _tune_domain(domain) for name, domain in search_space(s).items()}
    searcher = SparsitySearcher(
        s.sparsities, trials_per_sparsity=s.trials_per_sparsity, space=space, metric=s.metric, mode=s.mode,
        seed=s.seed, tpe_startup_trials=s.tpe_startup_trials,
    )
    # With a searcher, Tune keeps one trial pending at a time (so that it can learn from results first);
    # a cluster scaling up from zero GPUs would then start the searches one after another. One pending
    # trial per sparsity lets every search start at once.
    scheduler = None
    if s.scheduler == "asha":
        scheduler = ASHAScheduler(
            metric=s.metric, mode=s.mode, time_attr="training_iteration", max_t=max_epochs,
            grace_period=s.asha_grace_period, reduction_factor=s.asha_reduction_factor,
        )
    with _env_default("TUNE_MAX_PENDING_TRIALS_PG", str(len(s.sparsities))):
        results = run_experiment(
            "search", _search_trial, ctx, search_alg=searcher, scheduler=scheduler,
            num_samples=len(s.sparsities) * s.trials_per_sparsity,
        )
    trials = sorted((trial_row(r, metric=s.metric) for r in results), key=lambda t: (t["sparsity"], t["start"] or 0))
    best: dict[str, Any] = {}
    for sp in s.sparsities:
        done = [t for t in trials if t["sparsity"] == sp and t["status"] == "completed" and t["objective"] is not None]
        if not done:
            raise RuntimeError(
                f"search: no trial at sparsity {sp:g} completed; see "
                f"{RunFolder(Path(ctx.run_dir)).tune_experiment('search', exp.storage)} "
                "and `detector status` for the errors"
            )
        top = (max if s.mode == "max" else min)(done, key=lambda t: t["objective"])
        best[f"{sp:g}"] = {"sparsity": sp, "params": top["params"], "objective": top["objective"],
                           "val_accuracy": top["val_accuracy"], "trial_id": top["trial_id"]}
    return {
        "metric": s.metric,
        "mode": s.mode,
        "scheduler": s.scheduler,
        "epochs_run": sum(t["epochs"] for t in trials),
        "epochs_budget": len(trials) * max_epochs,
        "trials": trials,
        "best": best,
    }


def _tune_domain(domain: Domain) -> Any:
    """A search-space entry as Tune's domain (OptunaSearch converts those into Optuna distributions)."""
    if isinstance(domain, Categorical):
        return tune.choice(list(domain.choices))
    if isinstance(domain, LogUniform):
        return tune.loguniform(domain.low, domain.high)
    raise TypeError(f"no Tune domain for {domain!r}")


def run_baseline(ctx: StageContext) -> None:
    results = run_experiment("baseline", _baseline_trial, ctx)
    _raise_if_failed("baseline", results)


def run_finetune(ctx: StageContext, sparsities: Sequence[float]) -> list[dict[str, Any]]:
    results = run_experiment("finetune", _finetune_trial, ctx,
                             param_space={"sparsity": tune.grid_search(list(sparsities))})
    _raise_if_failed("finetune", results)
    return [trial_row(r, metric=ctx.experiment.search.metric) for r in results]


def run_evaluate(ctx: StageContext, sparsities: Sequence[float]) -> None:
    results = run_experiment("evaluate", _evaluate_trial, ctx,
                             param_space={"sparsity": tune.grid_search(list(sparsities))},
                             max_concurrent_trials=ctx.experiment.evaluate.concurrent_trials)
    _raise_if_failed("evaluate", results)


def _raise_if_failed(name: str, results: tune.ResultGrid) -> None:
    failed = [r for r in results if r.error is not None or (r.metrics or {}).get("trial_failed")]
    if failed:
        first = failed[0]
        reason = first.error or first.metrics.get("trial_failed")
        raise RuntimeError(f"{name}: {len(failed)} trial(s) failed, first at {first.path}: {reason}")


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


def connect(address: str | None, exp: ExperimentConfig) -> ClusterInfo:
    """Join a running cluster (``address``: "auto", "ray://HOST:10001", or RAY_ADDRESS set, as under
    ``ray job submit``), or start an embedded local Ray sized by ``resources.local_num_cpus``, on the
    loopback only and with a token only this user can read."""
    # `embedded`: this call starts Ray, so the pipeline shuts it down at the end (a Ray the caller started,
    # or a cluster, is left alone).
    embedded = address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
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
            )
    elif address and address.startswith("ray://"):
        # Through Ray Client the Tune driver runs on the cluster, not here: Tune's settings travel with it.
        env = {k: v for k, v in os.environ.items() if k.startswith("TUNE_")}
        env.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        env.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(len(exp.search.sparsities)))
        ctx = ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ctx = ray.init(address=address)
    resources = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    dashboard = None
    if ctx is not None and getattr(ctx, "dashboard_url", None):
        dashboard = ctx.dashboard_url if "://" in ctx.dashboard_url else f"http://{ctx.dashboard_url}"
    gpus = exp.resources.gpus_per_trial
    if gpus > 0 and resources.get("GPU", 0.0) < gpus:
        if embedded:
            from detector.config import ConfigError

            raise ConfigError(
                f"resources.gpus_per_trial={gpus:g} but this machine's Ray has no GPU; "
                "run with --set resources.gpus_per_trial=0 (and a small cpus_per_trial) on a CPU machine"
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


def read_trials(run_dir: str | Path) -> list[dict[str, Any]]:
    """The trials of every stage of a run, live or finished, from its storage alone (no cluster)."""
    from ray.tune import ExperimentAnalysis

    from detector.config import from_dict, load_yaml

    run = RunFolder(Path(run_dir))
    exp = from_dict(ExperimentConfig, load_yaml(run.config))
    rows = []
    for stage in TUNE_STAGES:
        path = run.tune_experiment(stage, exp.storage)
        if not tune.Tuner.can_restore(path):
            continue
        try:
            analysis = ExperimentAnalysis(path)
        except Exception as e:  # a state file half-way through its first write
            log.warning("%s: cannot read the experiment state yet (%s)", path, e)
            continue
        for trial in analysis.trials:
            last = trial.last_result or {}
            rows.append({
                "stage": stage,
                "trial_id": trial.trial_id,
                "sparsity": float(trial.config.get("sparsity", 0.0)),
                "params": {k: trial.config[k] for k in param_names() if k in trial.config},
                "state": trial.status,
                "epochs": int(last.get("training_iteration", 0) or 0),
                "best_val_accuracy": last.get("best_val_accuracy"),
                "failed": last.get("trial_failed"),
            })
    return rows
