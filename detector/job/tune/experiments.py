"""The stages' Tune experiments: running (or resuming) one, and what each stage runs and returns.

Every stage is one experiment ``RUN/tune/<name>``; a grid search's sparsities share one (the package's
docstring says why), with a ``SparsitySearcher`` and, with ``search.scheduler: asha``, ASHA.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import Searcher

import detector.job.tune.private_api as private_api
from detector.job.experiment import CONTROL_SPARSITY, ExperimentConfig, TrialResources
from detector.job.runfolder import RunFolder, check_model_name, tune_stage
from detector.job.search_space import Categorical, Domain, LogUniform, search_space
from detector.job.selection import OBJECTIVE_EPOCH, objective_key, select_best
from detector.job.stop import StageIncomplete, StopSignals
from detector.paths import is_uri
import detector.job.tune.private_api as private_api
from detector.job.tune.cluster import apply_tune_defaults, env_default
from detector.job.tune.live_status import LiveStatus, StageSink, registered
from detector.job.tune.progress import StageProgress, quiet_libraries, tune_reporter, tune_verbosity
from detector.job.tune.schedulers import asha
from detector.job.tune.searchers import ParetoSearcher, SparsitySearcher, driving
from detector.job.tune.trainables import StageContext, actor_name, named, trainable
from detector.job.tune.trial_rows import best_entry, control_entry, read_status_rows, trial_name, trial_row

log = logging.getLogger(__name__)

# A data-parallel trial's own process only drives its Ray Train run (the workers hold the resources); Tune
# refuses a trial that holds nothing, so it holds this much of a CPU.
DRIVER_CPUS = 0.01


def _resources(res: TrialResources) -> dict[str, float]:
    """What a trial's own process holds in Tune: all of the trial, or only its driver when the trial is
    data-parallel (its Ray Train workers hold the rest, in a placement group of their own)."""
    if res.data_parallel:
        return {"cpu": DRIVER_CPUS}
    return {"cpu": res.cpus_per_trial, **({"gpu": res.gpus_per_trial} if res.gpus_per_trial > 0 else {})}


def _sink(run: RunFolder, name: str, exp: ExperimentConfig) -> StageSink:
    """The status table of experiment ``name``: epochs planned per trial, what a trial is judged by."""
    section = {"baseline": "baseline", "search": "search_train", "finetune": "finetune"}.get(tune_stage(name))
    epochs_planned = exp.stage_train(section).max_epochs if section else 1
    pareto_search = exp.search.mode == "pareto" and tune_stage(name) == "search"
    return StageSink(run, name, exp.search.metric, epochs_planned,
                     objective=objective_key(exp.search.metric, exp.search.objective),
                     objectives=tuple(exp.search.pareto.objectives) if pareto_search else ())


def _progress(run: RunFolder, name: str, sink: StageSink, trials: int, exp: ExperimentConfig) -> StageProgress:
    """The progress line of experiment ``name`` (``trials`` of them), from the table ``sink`` writes."""
    return StageProgress(run.stage_status(name), name, trials=trials, epochs_per_trial=sink.epochs_planned,
                         objective=sink.objective, maximize=exp.search.direction == "max")


def run_experiment(
    name: str,
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
    """Run (or resume) the Tune experiment ``RUN/tune/<name>``, its stage's ``trainable`` once per trial; the
    final trial rows (``RUN/status/<name>.json``).

    An experiment folder that Tune can restore is resumed: finished trials keep their results and are not
    run again, unfinished and errored ones continue from their last checkpoint, the searcher's studies
    continue where they stopped. A stop signal ends the experiment (Tune saves its state) and raises
    ``RunStopped``; an experiment that ends with fewer than ``expected`` trials done raises
    ``StageIncomplete``: nothing partial is ever returned as the stage's result.
    """
    exp = ctx.experiment
    run = RunFolder(Path(ctx.run_dir))
    path = run.tune_experiment(name, exp.storage)
    apply_tune_defaults()
    quiet_libraries()
    restoring = tune.Tuner.can_restore(path)
    fn = tune.with_resources(tune.with_parameters(_trainable(name, run, path, restoring), ctx=ctx),
                             _resources(exp.resources.stage(tune_stage(name))))
    # driving: a searcher restored with the experiment opens this run folder's studies, wherever it was made
    with (registered(_sink(run, name, exp)) as sink, driving(search_alg, path, restoring=restoring),
          private_api.staging_of_this_process()):
        if restoring:
            log.info("resuming the %s experiment from %s", name, path)
            _check_trusted(path, ctx.trust_run_folder)
            if not is_uri(path) and private_api.rehome_search_state(Path(path), run.tune_root(exp.storage)):
                log.info("%s: the run folder was copied or moved; its new trials are made here", path)
            tuner = tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=True)
            private_api.set_tune_verbosity(tuner, tune_verbosity())  # the saved run's is restored with it
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
                    trial_name_creator=lambda t: trial_name(name, t.config),
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=run.tune_root(exp.storage),
                    failure_config=tune.FailureConfig(max_failures=exp.resources.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), LiveStatus(sink)],
                    verbose=tune_verbosity(),  # progress: StageProgress; Tune's tables with detector -v
                    progress_reporter=tune_reporter(sink.objective),
                ),
            )
        with stop.deferring(sink.ask_stop), _progress(run, name, sink, expected, exp):
            tuner.fit()
        stop.check(name)
    rows = read_status_rows(run, name)
    _raise_if_incomplete(name, rows, expected, ctx.run_dir, path)
    return rows


def _trainable(name: str, run: RunFolder, path: str, restoring: bool) -> Any:
    """Experiment ``name``'s trainable, named after the run folder (``actor_name``); a restored experiment's
    keeps the name it was saved with (one made before trainables were named so, or in a folder renamed
    since, has another), since its trials find their trainable by that name."""
    fn = trainable(tune_stage(name))
    saved = private_api.saved_trainable_name(path) if restoring else None
    return named(fn, saved or actor_name(fn, run.root.name))


def _raise_if_incomplete(name: str, rows: list[dict[str, Any]], expected: int, run_dir: str, path: str) -> None:
    finished = [r for r in rows if r["state"] in ("done", "failed")]
    if len(finished) < expected:
        left = [f"{r['name']} ({r['state']}{': ' + r['reason'] if r.get('reason') else ''})"
                for r in rows if r["state"] not in ("done", "failed")]
        raise StageIncomplete(
            f"{name}: {len(finished)} of {expected} trials finished; not done: {', '.join(left) or 'never started'}."
            f" Nothing is written for this stage; `detector run --resume --out {run_dir}` continues it "
            f"(Tune's experiment: {path})")


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


def _search_space(ctx: StageContext) -> dict[str, Any]:
    """``detector.job.search_space`` as Tune's domains (OptunaSearch converts those into Optuna's)."""
    return {name: _tune_domain(domain) for name, domain in search_space(ctx.experiment.search).items()}


def _run_search_trials(ctx: StageContext, stop: StopSignals, name: str, searcher: Searcher, *, budget: int,
                       pending: int, scheduler: Any = None) -> list[dict[str, Any]]:
    """The ``budget`` trials of a search experiment, ``pending`` of them allowed to wait for resources at
    once; their results rows (``trial_row``), in no particular order."""
    res = ctx.experiment.resources.stage("search")
    with env_default("TUNE_MAX_PENDING_TRIALS_PG", str(pending)):
        rows = run_experiment(name, ctx, stop=stop, expected=budget, search_alg=searcher, scheduler=scheduler,
                              num_samples=budget, max_concurrent_trials=_data_parallel_trials(res, pending))
    return [trial_row(r) for r in rows]


def run_search(ctx: StageContext, stop: StopSignals, sparsities: Sequence[float] | None = None,
               name: str = "search") -> dict[str, Any]:
    """Stage 1: every sparsity's Optuna search in one Tune experiment (``name``: ``search``, or a frontier
    round's ``search-rN`` over its probes); returns trials and best params. ``sparsities`` default to the
    grid's, with the dense control's 0 when ``search.control`` is on: one more search like the others."""
    exp = ctx.experiment
    s = exp.search
    run = RunFolder(Path(ctx.run_dir))
    max_epochs = exp.stage_train("search_train").max_epochs
    sparsities = list(s.searched_sparsities() if sparsities is None else sparsities)
    key = objective_key(s.metric, s.objective)  # what the searcher, ASHA and the pick judge a trial by
    searcher = SparsitySearcher(
        sparsities, trials_per_sparsity=s.trials_per_sparsity, space=_search_space(ctx), metric=key,
        mode=s.direction, seed=s.seed, tpe_startup_trials=s.tpe_startup_trials,
        storage=s.storage or str(run.optuna_journal), study_prefix=f"{run.root.name}/" if s.storage else "",
    )
    scheduler = None
    if s.scheduler == "asha":
        scheduler = asha(metric=key, mode=s.direction, max_t=max_epochs, grace_period=s.asha.grace_period,
                         reduction_factor=s.asha.reduction_factor, control_apart=CONTROL_SPARSITY in sparsities)
    budget = len(sparsities) * s.trials_per_sparsity
    # With a searcher, Tune keeps one trial pending at a time (so that it can learn from results first);
    # a cluster scaling up from zero GPUs would then start the searches one after another. One pending
    # trial per sparsity lets every search start at once; a cluster that already fits more trials gets as
    # many pending as it fits (bench/cluster_schedule.py: trial processes then start in one wave, not in
    # waves of four). TPE's start-up trials are random draws anyway, so nothing is lost to the searcher.
    pending = search_pending(budget, len(sparsities), _trials_that_fit(exp.resources.stage("search")))
    trials = sorted(_run_search_trials(ctx, stop, name, searcher, budget=budget, pending=pending, scheduler=scheduler),
                    key=lambda t: (t["sparsity"], t["trial"]))
    best: dict[str, Any] = {}
    for sp in sparsities:
        done = [t for t in trials if t["sparsity"] == sp and t["status"] == "completed" and t["objective"] is not None]
        if not done:
            raise StageIncomplete(f"{name}: no trial at sparsity {sp:g} completed (all failed: "
                                  f"{'; '.join(t['status'] for t in trials if t['sparsity'] == sp)})")
        top, _ = select_best(done, mode=s.direction)
        best[f"{sp:g}"] = best_entry(top)
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
    space = _search_space(ctx)
    space["sparsity"] = tune.quniform(s.pareto.sparsity_min, s.pareto.sparsity_max, SPARSITY_STEP)
    searcher = ParetoSearcher(trials=s.pareto.trials, space=space, objectives=s.pareto.objectives, seed=s.seed,
                              tpe_startup_trials=s.tpe_startup_trials, storage=s.storage or str(run.optuna_journal),
                              study_name=f"{run.root.name}/pareto" if s.storage else "pareto")
    pending = max(1, min(s.pareto.trials, _trials_that_fit(exp.resources.stage("search"))))
    trials = sorted(_run_search_trials(ctx, stop, "search", searcher, budget=s.pareto.trials, pending=pending),
                    key=lambda t: t["trial"])
    done = [t for t in trials if t["status"] == "completed"]
    if not done:
        raise StageIncomplete("search: no Pareto trial completed")
    front = non_dominated(done, s.pareto.objectives)
    picks = pick_models(front, s.pareto.models)
    best = {f"{t['sparsity']:g}": best_entry(t) for t in picks}
    if s.control:
        # The dense control is the front's fixed dense end: sparsity 0, fine-tuned with the budget of every
        # pick, with the parameters of the front's least pruned trial (the nearest to dense the study went;
        # with val_accuracy among the objectives, its most accurate trial). It has no trials of its own: the
        # study searches sparsity and parameters together, and a dense trial would sit on the front it is
        # there to be compared with.
        best[f"{CONTROL_SPARSITY:g}"] = control_entry(front[0])
    return {
        "mode": "pareto",
        "metric": s.metric,
        "objectives": list(s.pareto.objectives),
        "objective": "each objective at the trial's last epoch (sizes: the pruned model's)",
        "direction": s.direction,
        "scheduler": "none",
        "epochs_run": sum(t["epochs"] for t in trials),
        "epochs_budget": s.pareto.trials * exp.stage_train("search_train").max_epochs,
        "trials": trials,
        "front": [t["trial_id"] for t in front],
        "best": best,
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
    rows = run_experiment("baseline", ctx, stop=stop, expected=1)
    _raise_if_failed("baseline", rows)


def run_finetune(ctx: StageContext, sparsities: Sequence[float], stop: StopSignals,
                 name: str = "finetune") -> list[dict[str, Any]]:
    rows = run_experiment(name, ctx, stop=stop, expected=len(sparsities),
                          param_space={"sparsity": tune.grid_search(list(sparsities))})
    _raise_if_failed(name, rows)
    return rows


def run_evaluate(ctx: StageContext, models: Sequence[str], stop: StopSignals) -> None:
    """The evaluate stage: a trial per model, by name (``baseline``, ``dense-ft``, ``prune-40``)."""
    rows = run_experiment("evaluate", ctx, stop=stop, expected=len(models),
                          param_space={"model": tune.grid_search([check_model_name(m) for m in models])},
                          max_concurrent_trials=ctx.experiment.evaluate.concurrent_trials)
    _raise_if_failed("evaluate", rows)


def _raise_if_failed(name: str, rows: list[dict[str, Any]]) -> None:
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} trial(s) failed, first {failed[0]['name']}: {failed[0]['reason']}")
