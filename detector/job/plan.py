"""What ``detector run --dry-run`` prints: the plan of a run, from its config and its run folder alone.

For each chosen stage: whether it runs or reuses the outputs already in the run folder, what it does, its
trials and trial-epochs (at most: early stopping and ASHA may stop sooner), and what each trial asks Ray for.
Nothing here starts Ray: the same questions the pipeline asks before it connects (``pending_work``,
``planned_models``, ``check_run_config``) are asked of the folder as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from detector.config import ConfigError
from detector.job.experiment import STAGES, ExperimentConfig, TrialResources
from detector.job.pipeline import check_run_config, pending_work, planned_models
from detector.job.runfolder import BASELINE, RunFolder, model_name


@dataclass(frozen=True)
class StagePlan:
    """One stage of the plan. ``trials`` and ``trial_epochs`` are None for a stage that trains nothing or
    whose work is known only once an earlier stage has run (a frontier's later rounds, a Pareto front)."""

    stage: str
    action: str  # "run", "reuse" (its outputs are in the run folder) or "skip" (not among --stages)
    work: str  # what it does, in words
    trials: int | None = None
    trial_epochs: int | None = None  # at most
    resources: TrialResources | None = None
    at_once: str = ""  # how many trials run at the same time


def check_stages(stages: Sequence[str]) -> None:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")


def _at_once(exp: ExperimentConfig, res: TrialResources, local_cpus: int | None) -> str:
    """How many of a stage's trials run at once: on an embedded local Ray (``local_cpus``), as many CPU-only
    trials as its CPUs hold; on a cluster, as many as it fits then (known only there)."""
    cap = exp.resources.max_concurrent_trials
    if local_cpus and res.gpus_per_trial == 0:
        fits = max(1, int(local_cpus // (res.cpus_per_trial * res.workers_per_trial)))
        n = min(fits, cap) if cap else fits
        return f"{n} at once on the {local_cpus} local CPUs"
    return f"at most {cap} at once" if cap else "as many at once as the cluster fits"


def _picks_unknown(exp: ExperimentConfig, run: RunFolder) -> bool:
    """A frontier's probes and a Pareto front's picks are known once the search has run."""
    return exp.search.mode != "grid" and not run.search_results.exists()


def _search_plan(exp: ExperimentConfig, pending: list[float], local_cpus: int | None) -> StagePlan:
    s, epochs = exp.search, exp.stage_train("search_train").max_epochs
    res = exp.resources.stage("search")
    at_once = _at_once(exp, res, local_cpus)
    control = " and the dense control (0 %)" if s.control else ""
    asha = f"; ASHA may stop trials after {s.asha.grace_period} epoch(s)" if s.scheduler == "asha" else ""
    if s.mode == "pareto":
        return StagePlan("search", "run" if pending else "reuse",
                         f"one multi-objective Optuna study over sparsity {s.pareto.sparsity_min:g}-"
                         f"{s.pareto.sparsity_max:g}, optimizer and lr ({', '.join(s.pareto.objectives)}); "
                         f"{epochs} epochs per trial", s.pareto.trials, s.pareto.trials * epochs, res, at_once)
    sparsities = list(s.searched_sparsities())
    trials = len(sparsities) * s.trials_per_sparsity
    named = ", ".join(f"{100 * x:g} %" for x in s.sparsities)
    work = (f"an Optuna search of optimizer and lr per sparsity ({named}){control}: {len(sparsities)} x "
            f"{s.trials_per_sparsity} trials x {epochs} epochs{asha}")
    if s.mode == "frontier":
        work = (f"frontier round 1: {work}; then rounds of {s.frontier.parallel} probe(s) each until the "
                f"bracket is {s.frontier.resolution:g} wide, as many as the results need (counted below: round 1)")
    return StagePlan("search", "run" if pending else "reuse", work, trials, trials * epochs, res, at_once)


def _finetune_plan(exp: ExperimentConfig, run: RunFolder, pending: list[float], local_cpus: int | None) -> StagePlan:
    epochs = exp.stage_train("finetune").max_epochs
    res = exp.resources.stage("finetune")
    models = planned_models(exp, run)
    if exp.search.mode == "frontier":  # its decision needs each probe's fine-tuned model
        return StagePlan("finetune", "within", f"each probe of the frontier is fine-tuned inside the search "
                         f"stage, with its search's best parameters, up to {epochs} epochs")
    if _picks_unknown(exp, run):
        control = " and the dense control" if exp.search.control else ""
        return StagePlan("finetune", "run", f"the {exp.search.pareto.models} models of the Pareto front{control}, "
                         f"each with its trial's parameters, up to {epochs} epochs", None, None, res,
                         _at_once(exp, res, local_cpus))
    names = ", ".join(model_name(s) for s in models)
    return StagePlan("finetune", "run" if pending else "reuse",
                     f"one fine-tune per model ({names}) with its search's best parameters, up to {epochs} epochs "
                     "(early stopping)", len(models), len(models) * epochs, res,
                     _at_once(exp, res, local_cpus))


def _evaluate_plan(exp: ExperimentConfig, run: RunFolder, pending: list[str]) -> StagePlan:
    unknown = _picks_unknown(exp, run)
    evaluated = [BASELINE, *(model_name(s) for s in planned_models(exp, run))]
    return StagePlan("evaluate", "run" if pending or unknown else "reuse",
                     f"score every model on every test set ({', '.join(evaluated)}"
                     + (", and the models the search picks" if unknown else "") + ")",
                     None if unknown else len(evaluated), None, exp.resources.stage("evaluate"),
                     f"{exp.evaluate.concurrent_trials} at once (evaluate.concurrent_trials)")


def plan(exp: ExperimentConfig, run_dir: Path, stages: Sequence[str], *, local_cpus: int | None = None
         ) -> list[StagePlan]:
    """The plan of ``stages`` of ``exp`` in ``run_dir`` (which need not exist yet), every stage listed in
    order; ``local_cpus``: the CPUs of an embedded local Ray (None: a cluster). Raises ``ConfigError`` where
    the run itself would: an unknown stage, a folder of another config."""
    check_stages(stages)
    run = RunFolder(Path(run_dir))
    check_run_config(exp, run)
    todo = pending_work(exp, run.root, STAGES)
    data = run.resolve(exp.data.path)
    imported = (Path(data) / "manifest.json").exists()
    base_epochs = exp.stage_train("baseline").max_epochs
    plans = {
        "prepare": StagePlan("prepare", "reuse" if imported else "run",
                             f"{'use' if imported else 'import'} the data in {data}"
                             + (f", decoded once at {exp.train.image_size} px" if exp.data.pixels else "")),
        "baseline": StagePlan("baseline", "run" if todo["baseline"] else "reuse",
                              f"train {exp.train.arch} from scratch, up to {base_epochs} epochs (early stopping)",
                              1, base_epochs, exp.resources.stage("baseline"), "one trial"),
        "search": _search_plan(exp, todo["search"], local_cpus),
        "finetune": _finetune_plan(exp, run, todo["finetune"], local_cpus),
        "evaluate": _evaluate_plan(exp, run, todo["evaluate"]),
        "report": StagePlan("report", "run", f"(re)write {run.report / 'report.md'} from the run folder"),
    }
    return [p if p.stage in stages else StagePlan(p.stage, "skip", "not among --stages") for p in plans.values()]


def _resources_words(r: TrialResources) -> str:
    each = f"{r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU"
    if r.data_parallel:
        return f"{r.workers_per_trial} data-parallel workers per trial, each {each}"
    return f"{each} per trial"


def format_plan(exp: ExperimentConfig, run_dir: Path, stages: Sequence[str], *, address: str | None) -> str:
    """The plan as ``detector run --dry-run`` prints it."""
    from detector.system import usable_cpus

    address = address or os.environ.get("RAY_ADDRESS")  # as the run connects
    local_cpus = None if address else exp.resources.local_num_cpus or usable_cpus()
    steps = plan(exp, run_dir, stages, local_cpus=local_cpus)
    run = RunFolder(Path(run_dir))
    where = (f"the Ray cluster at {address}" if address else
             f"an embedded local Ray with {local_cpus} CPUs (resources.local_num_cpus)")
    lines = [f"plan of {exp.name} in {run.root} ({'exists' if run.root.exists() else 'new'}) on {where}:"]
    for p in steps:
        lines.append(f"  {p.stage:<9} {p.action:<6} {p.work}")
        if p.action == "run" and p.trials is not None:
            epochs = f", at most {p.trial_epochs} trial-epochs" if p.trial_epochs is not None else ""
            lines.append(f"  {'':<16} {p.trials} trial(s){epochs}")
        if p.action == "run" and p.resources is not None:
            lines.append(f"  {'':<16} {_resources_words(p.resources)}; {p.at_once}")
    running = [p for p in steps if p.action == "run" and p.trial_epochs]
    if running:
        total = sum(p.trial_epochs for p in running)  # type: ignore[misc]
        lines.append(f"  in all: at most {total} trial-epochs in {', '.join(p.stage for p in running)}")
    lines.append(f"models: {', '.join([BASELINE, *(model_name(s) for s in planned_models(exp, run))])}"
                 + (", then those the search picks" if _picks_unknown(exp, run) else ""))
    lines.append("nothing was started (--dry-run)")
    return "\n".join(lines)
