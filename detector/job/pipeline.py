"""The whole job: prepare -> baseline -> search -> finetune -> evaluate -> report, on a local or remote Ray.

Each stage checks for its outputs in the run folder first and reuses them, so ``detector run`` after a
crash (or with ``--resume``) picks up where the run stopped: finished trials are never run again, Tune
experiments that were cut off are restored from their own state.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Any, Sequence

from detector.config import ConfigError, save_yaml, to_dict
from detector.io import atomic_write_json
from detector.job.experiment import CONTROL_SPARSITY, STAGES, ExperimentConfig, load_saved_experiment
from detector.job.runfolder import BASELINE, CONTROL, RunFolder, model_name
from detector.paths import is_uri

log = logging.getLogger(__name__)


def pixel_data(exp: ExperimentConfig, run: RunFolder, data: str, *, derive: bool) -> str:
    """With ``data.pixels``: the decode-once dataset of ``data`` at train.image_size, derived when missing
    or stale (only when ``derive``: it belongs to the prepare stage)."""
    from detector.data.loader import manifest_sha256, read_manifest
    from detector.data.pixels import derive_pixels

    size = exp.train.image_size
    out = run.resolve(exp.data.pixels_path or f"{data.rstrip('/')}-pixels-{size}")
    if is_uri(out):
        raise ConfigError(f"data.pixels_path: {out}: pixels are written to a local or mounted path")
    try:
        meta = read_manifest(out).get("pixels", {})
        if meta.get("size") == size and meta.get("from", {}).get("manifest_sha256") == manifest_sha256(data):
            log.info("data: using the %d px pixels in %s", size, out)
            return out
    except FileNotFoundError:
        pass
    if not derive:
        raise ConfigError(f"data.pixels: {out} does not hold {data} at {size} px; run the prepare stage")
    log.info("data: decoding %s once into %d px pixels in %s", data, size, out)
    derive_pixels(data, Path(out), size=size)
    return out


def check_run_config(exp: ExperimentConfig, run: RunFolder) -> None:
    """A run folder belongs to one experiment: refuse to mix a different config into finished results, or
    into results whose config is gone (nothing could tell whether they were made with this one)."""
    produced = run.produced()
    if not produced:
        return  # nothing was produced under the old config: the new one may take its place
    if not run.config.exists():
        raise ConfigError(
            f"{run.config}: missing, but the run folder holds outputs ({', '.join(produced)}) made under the "
            "config it recorded; put back the config the run was started with, or use a new --out folder")
    _check_saved_yaml(run.config)
    # Read back as a config, so that a key added since is no difference (at its default, or where the default
    # would change what the run does, at what its absence meant: SAVED_DEFAULTS); a changed value still is, and
    # a key this version no longer knows is refused by name.
    saved = to_dict(load_saved_experiment(run.config))
    current = to_dict(exp)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ConfigError(
            f"{run.config}: this run folder was started with a different config "
            f"(sections that differ: {', '.join(changed)}); use a new --out folder, or the saved config"
        )


def _check_saved_yaml(path: Path) -> None:
    """A saved config that is no longer YAML, named with what to do about it."""
    from detector.config import load_yaml

    try:
        load_yaml(path)
    except ConfigError as e:
        raise ConfigError(f"{e}; put back the config the run was started with, or use a new --out folder") from None


def prepare_data(exp: ExperimentConfig, data: str) -> None:
    """Import the raw datasets named in ``data`` unless the shards are already there."""
    from detector.data.loader import read_manifest
    from detector.data.prepare import ImportOptions, prepare

    try:
        read_manifest(data)
        log.info("data: using the shards in %s", data)
        return
    except FileNotFoundError:
        pass
    d = exp.data
    sources = {k: v for k, v in {"faces140k": d.faces140k, "celebdf": d.celebdf, "synthbuster": d.synthbuster,
                                 "folder": d.folder}.items() if v}
    if not sources and not d.demo:
        raise ConfigError(f"data.path: {data} has no manifest.json and the config names no dataset to import")
    if is_uri(data):
        raise ConfigError(f"data.path: {data}: import writes to a local or mounted path; prepare it there first")
    log.info("data: importing %s into %s", ", ".join([*sources, *(["demo"] if d.demo else [])]), data)
    prepare(Path(data), sources=sources, demo=d.demo, options=ImportOptions(fmt=d.format), seed=d.seed)


def planned_models(exp: ExperimentConfig, run: RunFolder) -> list[float]:
    """The fine-tuned models the run makes, by sparsity (0: the dense control, dense-ft): the grid's
    sparsities, or every probe of a frontier search, or a Pareto search's picks (both known once the search
    has finished; none before); with ``search.control``, the control among them."""
    if exp.search.mode == "frontier":
        from detector.job.frontier import frontier_models

        if not run.search_results.exists():
            return []
        return [*frontier_models(run.frontier), *([CONTROL_SPARSITY] if exp.search.control else [])]
    if exp.search.mode == "pareto":  # the front's picks (and the control), known once the search has run
        if not run.search_results.exists():
            return []
        return sorted(float(b["sparsity"]) for b in _read_json(run.search_results)["best"].values())
    return list(exp.search.searched_sparsities())


def evaluated_models(exp: ExperimentConfig, run: RunFolder) -> list[str]:
    """The models the evaluate stage scores, by name: the baseline and every planned fine-tuned model."""
    return [BASELINE, *(model_name(s) for s in planned_models(exp, run))]


def pending_work(exp: ExperimentConfig, run_dir: Path, stages: Sequence[str]) -> dict[str, list[Any]]:
    """Per Ray stage, what has no outputs in the run folder yet: the baseline and the evaluations by model
    name, the searches and fine-tunes by sparsity (0: the dense control). A frontier search fine-tunes its
    probes itself (its decision needs them); its evaluations are known after it."""
    run = RunFolder(Path(run_dir))
    frontier = exp.search.mode == "frontier"
    searched = run.search_results.exists()
    todo: dict[str, list[Any]] = {
        "baseline": [] if run.has_model(BASELINE) else [BASELINE],
        "search": [] if searched else list(exp.search.searched_sparsities()),
        "finetune": [] if frontier else [s for s in planned_models(exp, run) if not run.has_model(model_name(s))],
        "evaluate": [n for n in evaluated_models(exp, run) if not run.evaluation(n).exists()],
    }
    return {stage: todo[stage] for stage in todo if stage in stages}


def run(
    exp: ExperimentConfig,
    run_dir: str | Path,
    *,
    address: str | None = None,
    stages: Sequence[str] = STAGES,
    trust_run_folder: bool = False,
) -> dict[str, Any]:
    """Run the chosen stages of the experiment into ``run_dir``; returns where the results are.

    Stages whose outputs exist are reused; Ray is started (or joined) only when a stage has work. The run
    folder is held by this driver alone while it works (``detector.job.lease``); its state is kept in
    ``RUN/status/`` for ``detector status``. SIGINT or SIGTERM stop the whole job (``RunStopped``): the
    running stage is left resumable and nothing after it starts. ``trust_run_folder``: resume Tune's state
    even from a folder that others could have written (it is unpickled).
    """
    from detector.job.console import AnnouncedRunState
    from detector.job.lease import DriverLease
    from detector.job.stop import RunStopped, StopSignals, stop_in_chain

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    run_dir = Path(run_dir).resolve()
    folder = RunFolder(run_dir)
    check_run_config(exp, folder)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = StopSignals()
    stop.install()
    try:
        with DriverLease(folder.lease, folder.lock):
            save_yaml(exp, folder.config)
            state = AnnouncedRunState(folder, [s for s in STAGES if s in stages], exp,
                                      pending=lambda s: pending_work(exp, run_dir, [s]).get(s, []))
            try:
                info = _run_stages(exp, folder, stages, state, stop, address=address, trust=trust_run_folder)
            except BaseException as e:
                stopped = stop_in_chain(e)
                if stopped is None:
                    full = _no_space(e, folder)
                    state.end("failed", str(full) if full else f"{type(e).__name__}: {e}")
                    if full:
                        raise full from e
                    raise
                stopped.stage = stopped.stage or state.data.get("stage")
                message = f"stopped by {signal.Signals(stopped.signum).name} during the {stopped.stage} stage"
                state.end("stopped", f"{message}; `detector run --resume --out {run_dir}` continues it")
                log.warning("%s; resume with: detector run --resume --out %s", message, run_dir)
                raise RunStopped(stopped.signum, stopped.stage) from None
            state.end("finished")
    finally:
        stop.restore()
    return {
        "run_dir": str(run_dir),
        "report": str(folder.report / "report.md"),
        "tensorboard": str(folder.tensorboard),
        "dashboard": info.dashboard_url if info else None,
    }


def _no_space(error: BaseException, folder: RunFolder) -> Any:
    """A ``NoSpaceError`` saying what to do, when ``error`` is a full disk: the driver's own writes raise one
    (``detector.io``), a trial's reaches the driver as the text of Tune's trial error. Model files that the
    full disk cut short are removed first: none may stay looking like a checkpoint."""
    import re

    from detector.checkpoint import remove_cut_model_files
    from detector.io import NoSpaceError, no_space

    then = f"`detector run --resume --out {folder.root}`"
    found = no_space(error)
    text = str(error)
    if found is None and "No space left on device" not in text:
        return None
    remove_cut_model_files(folder.root)
    if found is not None:
        return NoSpaceError.of(found, then)
    named = re.search(r"No space left on device: '([^']+)'", text)
    return NoSpaceError.at(named.group(1) if named else folder.root, then)


def _run_stages(exp: ExperimentConfig, folder: RunFolder, stages: Sequence[str], state: Any, stop: Any, *,
                address: str | None, trust: bool) -> Any:
    """The chosen ``stages`` in order, each skipped where its outputs exist; Ray's ``ClusterInfo``, or None
    when no stage needed Ray."""
    from detector.job.console import duration

    run_dir = folder.root
    t0 = time.time()
    data = _prepare_stage(exp, folder, stages, state)
    todo = pending_work(exp, run_dir, stages)
    for stage, left in todo.items():
        if not left:
            state.stage(stage, "reused")  # says so on the console
    info = None
    if any(todo.values()):
        from detector.job import tune as dtune

        info = _connect(exp, folder, stop, address)
        ctx = dtune.StageContext(run_dir=str(run_dir), experiment=exp, data=data, trust_run_folder=trust)
        try:
            _ray_stages(exp, folder, ctx, todo, state, stop)
        finally:
            if info.embedded:
                dtune.shutdown()

    if "report" in stages:
        from detector.report import write_report

        state.stage("report", "running")
        write_report(run_dir)
        state.stage("report", "done")
    log.info("run: done in %s: %s", duration(time.time() - t0), run_dir)
    return info


def _prepare_stage(exp: ExperimentConfig, folder: RunFolder, stages: Sequence[str], state: Any) -> str:
    """The data the stages read: ``data.path`` (imported by the prepare stage where it is missing), or with
    ``data.pixels`` its decode-once pixels."""
    data = folder.resolve(exp.data.path)
    if "prepare" in stages:
        state.stage("prepare", "running")
        prepare_data(exp, data)
    if exp.data.pixels and set(stages) - {"report"}:  # the report reads the run folder only
        data = pixel_data(exp, folder, data, derive="prepare" in stages)
    if "prepare" in stages:
        state.stage("prepare", "done")
    return data


def _connect(exp: ExperimentConfig, folder: RunFolder, stop: Any, address: str | None) -> Any:
    """Start or join Ray for the stages that need it, and say where to watch the run."""
    from detector.job import tune as dtune

    info = dtune.connect(address, exp, job_name=f"detector-{folder.root.name}")
    stop.install()  # ray.init set a SIGTERM handler of its own; ours decides what a stop means
    log.info("Ray: %s; resources %s", info.address, info.resources)
    if info.dashboard_url:
        log.info("Ray dashboard: %s", info.dashboard_url)
    log.info("TensorBoard:   tensorboard --logdir %s", folder.tensorboard)
    log.info("Status:        detector status %s --watch 10", folder.root)
    return info


def _ray_stages(exp: ExperimentConfig, folder: RunFolder, ctx: Any, todo: dict[str, list[Any]], state: Any,
                stop: Any) -> None:
    """The stages that run as Tune experiments, those of ``todo`` with work left, in order."""
    from detector.job import tune as dtune

    if todo.get("baseline"):
        state.stage("baseline", "running")
        dtune.run_baseline(ctx, stop)
        _drop(folder, exp, "baseline")
        state.stage("baseline", "done")
    if todo.get("search"):
        _require(folder.model(BASELINE), "search", "baseline")
        state.stage("search", "running")
        if exp.search.mode == "frontier":
            _frontier_search(exp, folder, ctx, state, stop)
        elif exp.search.mode == "pareto":
            atomic_write_json(folder.search_results, dtune.run_pareto(ctx, stop))
        else:
            atomic_write_json(folder.search_results, dtune.run_search(ctx, stop))
            _drop(folder, exp, "search")
        state.stage("search", "done")
    if "finetune" in todo and exp.search.mode == "pareto":  # the front's picks are known only now
        todo["finetune"] = [s for s in planned_models(exp, folder) if not folder.has_model(model_name(s))]
    if todo.get("finetune"):
        _require(folder.search_results, "finetune", "search")
        best = {float(v["sparsity"]): v["params"] for v in _read_json(folder.search_results)["best"].values()}
        missing = [s for s in todo["finetune"] if s not in best]
        if missing:
            raise ConfigError(f"finetune: {folder.search_results} has no best parameters for {missing}")
        state.stage("finetune", "running")
        rows = dtune.run_finetune(dataclasses.replace(ctx, best_params=best), todo["finetune"], stop)
        atomic_write_json(folder.finetune_results, {"trials": rows})
        _drop(folder, exp, "finetune")
        state.stage("finetune", "done")
    if "evaluate" in todo:  # a frontier's probes are known only now
        todo["evaluate"] = [n for n in evaluated_models(exp, folder) if not folder.evaluation(n).exists()]
    if todo.get("evaluate"):
        for name in todo["evaluate"]:
            _require(folder.model(name), "evaluate", "baseline" if name == BASELINE else "finetune")
        state.stage("evaluate", "running")
        dtune.run_evaluate(ctx, todo["evaluate"], stop)
        _drop(folder, exp, "evaluate")
        state.stage("evaluate", "done")


def _frontier_search(exp: ExperimentConfig, folder: RunFolder, ctx: Any, state: Any, stop: Any) -> None:
    """The frontier search (``search.mode: frontier``), round by round: each round's probes get their Optuna
    searches (one Tune experiment, ``search-rN``) and their fine-tunes (``finetune-rN``), then the rule decides
    on their val accuracy. Every step is recorded (``search/round-N.json``, ``search/frontier.json``, the
    models), so a resumed run repeats no finished probe. Test data is never read here."""
    # The runners are looked up on the package when called: bench/cluster_schedule.py times each round by
    # wrapping the package's run_search and run_finetune.
    from detector.job import tune as dtune
    from detector.job.frontier import FrontierRecord, FrontierRule

    s = exp.search
    rule = FrontierRule(tuple(sorted(s.sparsities)), s.frontier.margin, s.frontier.resolution, s.frontier.parallel)
    record = FrontierRecord.open(folder.frontier, rule, _read_json(folder.model_summary(BASELINE))["best_val_accuracy"])
    # The probes are judged against the dense control where the run has one: it had the search and fine-tune
    # every probe has, the baseline neither. Round 1 searches and fine-tunes it beside the first probes.
    reference = CONTROL if s.control else BASELINE
    while probes := record.open_round():
        r = len(record.rounds)
        trained = [*probes, *([CONTROL_SPARSITY] if s.control and r == 1 else [])]
        state.note(f"frontier round {r}: probes {', '.join(f'{p:g}' for p in probes)}")
        log.info("frontier round %d: probing %s (against %s, margin %g)", r, probes, reference, rule.margin)
        if not folder.round_results(r).exists():
            atomic_write_json(folder.round_results(r), dtune.run_search(ctx, stop, trained, name=f"search-r{r}"))
            _drop(folder, exp, f"search-r{r}")
        best = {float(v["sparsity"]): v["params"] for v in _read_json(folder.round_results(r))["best"].values()}
        missing = [p for p in trained if not folder.has_model(model_name(p))]
        if missing:
            dtune.run_finetune(dataclasses.replace(ctx, best_params=best), missing, stop, name=f"finetune-r{r}")
            _drop(folder, exp, f"finetune-r{r}")
        record.judge_against(reference, _read_json(folder.model_summary(reference))["best_val_accuracy"])
        for p in probes:
            ok = record.decide(p, _read_json(folder.model_summary(model_name(p)))["best_val_accuracy"])
            log.info("frontier: %g %s", p, "non-inferior" if ok else "inferior")
    rounds = [_read_json(folder.round_results(i + 1)) for i in range(len(record.rounds))]
    merged = {**rounds[0], "trials": [t for r in rounds for t in r["trials"]],
              "best": {k: v for r in rounds for k, v in r["best"].items()},
              "epochs_run": sum(r["epochs_run"] for r in rounds), "epochs_budget": sum(r["epochs_budget"] for r in rounds),
              "frontier": record.to_dict()["answer"]}
    atomic_write_json(folder.search_results, merged)


def _drop(folder: RunFolder, exp: ExperimentConfig, experiment: str) -> None:
    """A Tune experiment whose outputs are written keeps no trial weights: nothing reads them again (a paper
    run would otherwise keep ~12 GiB of them; docs/design.md)."""
    from detector.job.stages import drop_checkpoints

    drop_checkpoints(folder.tune_experiment(experiment, exp.storage))


def _require(path: Path, stage: str, needs: str) -> None:
    if not path.exists():
        raise ConfigError(f"{stage}: needs {path}, which the {needs} stage writes; run it first (--stages {needs})")


def _read_json(path: Path) -> Any:
    from detector.job.repair import read_state_json

    return read_state_json(path, fix="restore it from a copy of the run folder, or use a new --out folder")
