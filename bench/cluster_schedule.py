"""The job's schedule at cluster scale, simulated: the real Tune, searcher and scheduler on 4, 8 and 20 GPUs
that do not exist, running trials that hold their GPU for a modelled epoch time and compute nothing.

    python bench/cluster_schedule.py --out /tmp/bench-cluster                  # 4, 8, 20 GPUs; none and ASHA
    python bench/cluster_schedule.py --out DIR --gpus 20 --schedulers none --max-pending 20
    # the paper's scale of work (an epoch of 112,183 images at 3,500 images/s): ~46 min for the two rows
    python bench/cluster_schedule.py --out DIR --gpus 20 --schedulers none asha --epoch-s 32 --evaluate-s 5

What is real: a local multi-node Ray (``ray.cluster_utils.Cluster``: a head that takes no trials, as on
KubeRay, and worker nodes of ``--gpus-per-node`` declared GPUs), and the project's own stage runners from
``detector.job.tune`` (``run_baseline``, ``run_search`` with its ``SparsitySearcher`` over the search space of
``detector.job.search_space``, one ``OptunaSearch`` per sparsity, ASHA as ``search.scheduler`` configures it
and ``TUNE_MAX_PENDING_TRIALS_PG`` as ``run_search`` sets it; ``run_finetune``, ``run_evaluate``), called in
the pipeline's order on the job shape of ``jobs/configs/paper.yaml``: 1 baseline, 4 sparsities x 5 trials x
10 epochs, 4 fine-tunes, 5 evaluations. What is modelled: the work. Each stage's trainable is swapped for
one that sleeps ``--epoch-s`` per epoch and reports (with a tiny checkpoint, as the real loop does every
epoch) a validation accuracy that is a fixed function of the trial's optimizer, learning rate and epoch, so
that ASHA has something to rank. Trials hold ``resources.gpus_per_trial`` (1) GPU and a token CPU share, so
20 of them fit on this machine's 2 cores (they only sleep).

What else is real, and dominates on a small host: every trial actor is a new Ray worker process that
imports what the real trainables need (``detector.job.tune``: ray.tune, torch) before its trial starts,
4-5 CPU-seconds each. On a cluster each node boots its own actors in parallel; on a 2-core host the 20
actors of a 20-GPU search boot one after another, CPU-bound. The tables report that cost per actor and
the host's floor for it (their CPU time over its cores), beside Tune's own costs (a trial's start on a
reused actor, the wait at each report), so that each can be carried over to a real cluster
(docs/benchmarks.md does that).

The ideal is the shortest schedule of the same work on the same GPUs with the pipeline's stage order (each
stage starts when the previous one ends; a trial is indivisible and holds one GPU): per stage the best
lower bound of ``stage_lower_bound``, summed. Makespan - ideal is the scheduling overhead; divided by the
number of trials, the overhead per trial. Each trial's start latency (how long a free GPU waited for its
next trial to start running) and the time the trials spent beyond their modelled work (each
``tune.report`` waits for the driver) are measured from the trainables' own clocks.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "jobs" / "configs" / "paper.yaml"
# The stages whose trials are modelled, in the pipeline's order.
MODELLED_STAGES = ("baseline", "search", "finetune", "evaluate")


@dataclass(frozen=True)
class WorkModel:
    """How long each piece of the job holds its GPU. ``epoch_s`` stands for one epoch of the training split
    (any stage; the batch size is not modelled). The paper gives neither where early stopping ends the
    baseline (at most 100 epochs, patience 3) nor the fine-tunes: 20 and 10 epochs are assumptions, and an
    evaluation (val + test passes, latency timing) is taken as one epoch's time."""

    epoch_s: float = 1.0
    baseline_epochs: int = 20
    finetune_epochs: int = 10
    evaluate_s: float = 1.0


# --------------------------------------------------------------------------------------------------
# The ideal schedule and the measured one.


def stage_lower_bound(durations: Sequence[float], gpus: int) -> float:
    """The shortest makespan of indivisible one-GPU jobs of these durations on ``gpus`` GPUs, as a lower bound:
    the longest job; the total over the GPUs; and, for every k, the k+1 shortest of the k*gpus+1 longest jobs
    (two of ``gpus`` + 1 jobs share a GPU, and so on), which for equal jobs is ceil(n / gpus) x duration.

    >>> stage_lower_bound([10.0] * 20, 8)    # three rounds of 10 on 8 GPUs, not 20 * 10 / 8 = 25
    30.0
    >>> stage_lower_bound([10.0] * 20, 20)
    10.0
    """
    if not durations:
        return 0.0
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    d = sorted(durations, reverse=True)
    bound = max(d[0], sum(d) / gpus)
    k = 1
    while k * gpus + 1 <= len(d):
        bound = max(bound, sum(d[k * gpus - k: k * gpus + 1]))
        k += 1
    return bound


def start_latencies(trials: Sequence[tuple[float, float, int]], gpus: int,
                    stage_start: float) -> list[tuple[float, bool]]:
    """For each trial (start, end, actor), in order of start: (how long its GPU had been free when the trial
    began, whether it ran on an actor that had run a trial before).

    A trial on a reused actor has that actor's GPU: it waited from the actor's previous trial's end. A trial
    on a new actor takes the GPU that has been free longest, of the ``gpus`` the stage may use (free at
    ``stage_start``, and again when an actor's last trial ends), among those free before it started.

    >>> start_latencies([(1.0, 5.0, 1), (1.5, 5.0, 2), (5.25, 9.0, 1), (6.0, 7.0, 3)], 2, stage_start=0.0)
    [(1.0, False), (1.5, False), (0.25, True), (1.0, False)]
    """
    ordered = sorted(trials)
    last_of_actor = {actor: i for i, (_, _, actor) in enumerate(ordered)}
    releases = sorted(end for i, (_, end, actor) in enumerate(ordered) if last_of_actor[actor] == i)
    free = [stage_start] * gpus
    heapq.heapify(free)
    previous_end: dict[int, float] = {}
    out = []
    for start, end, actor in ordered:
        while releases and releases[0] <= start:
            heapq.heappush(free, releases.pop(0))
        if actor in previous_end:
            out.append((max(0.0, start - previous_end[actor]), True))
        else:
            since = heapq.heappop(free) if free else start  # clocks of different processes may differ by ms
            out.append((max(0.0, start - since), False))
        previous_end[actor] = end
    return out


# --------------------------------------------------------------------------------------------------
# Modelled trials.


def modelled_accuracy(config: dict[str, Any], epoch: int) -> float:
    """A fixed validation accuracy for a trial's parameters after ``epoch`` epochs: best near lr 3e-5 with
    Adam, rising with epochs. Only its ranking matters (ASHA stops the trials it ranks low)."""
    lr = float(config.get("lr", 1e-4))
    quality = math.exp(-((math.log10(lr) + 4.5) ** 2)) * (1.0 if config.get("optimizer", "adam") == "adam" else 0.8)
    return 0.5 + 0.45 * quality * (1.0 - math.exp(-epoch / 3.0))


def process_start_time() -> float | None:
    """When this process was created (Unix seconds, to 10 ms; Linux only, else None)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def modelled_trial(stage: str, work: WorkModel, timeline: Path) -> Callable[[dict[str, Any], Any], None]:
    """A trainable for ``stage`` with the real trainables' signature (config, ctx) that sleeps instead of
    training and reports what they report. Each report also records (start, now, epochs) in ``timeline``."""
    from ray import tune

    def trial(config: dict[str, Any], ctx: Any) -> None:
        start = time.time()
        boot = {"pid": os.getpid(), "process_start": process_start_time(), "process_cpu_s": time.process_time()}
        trial_id = tune.get_context().get_trial_id()
        experiment = tune.get_context().get_experiment_name()  # "search", or a frontier round's "search-r2"
        if stage == "baseline":
            epochs, epoch_s = work.baseline_epochs, work.epoch_s
        elif stage == "search":
            epochs, epoch_s = ctx.experiment.stage_train("search_train").max_epochs, work.epoch_s
        elif stage == "finetune":
            epochs, epoch_s = work.finetune_epochs, work.epoch_s
        else:
            epochs, epoch_s = 1, work.evaluate_s
        params = ctx.best_params[float(config["sparsity"])] if stage == "finetune" else config
        sparsity = float(config.get("sparsity", 0.0))
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            accuracy = modelled_accuracy(params, epoch)
            row = {"stage": experiment, "trial_id": trial_id, "start": start, "now": time.time(), "epochs": epoch,
                   "work_s": epoch * epoch_s, **boot}
            (timeline / f"{experiment}-{trial_id}.json").write_text(json.dumps(row))
            metrics = {"sparsity": sparsity, "trial_start": start, "time_now": row["now"]}
            if stage == "evaluate":
                tune.report({**metrics, "test_accuracy": accuracy})
                continue
            with tempfile.TemporaryDirectory() as d:
                # The real loop hands Tune its checkpoint folder every epoch; Tune copies it into storage.
                Path(d, "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report({**metrics, "val_accuracy": accuracy, "best_val_accuracy": accuracy},
                            checkpoint=tune.Checkpoint.from_directory(d))
        if stage in ("baseline", "finetune"):
            write_modelled_model(Path(ctx.run_dir), sparsity, epochs)

    return trial


def frontier_accuracy(sparsity: float) -> float:
    """A frontier search's modelled val accuracy of a fine-tuned model: the baseline's 0.98 up to 80 %, then
    falling 2 pp per pp of sparsity (so the frontier, at a 0.5 pp margin, lies at 80.25 %)."""
    return 0.98 - 2.0 * max(0.0, sparsity - 0.8)


def write_modelled_model(run_dir: Path, sparsity: float, epochs: int) -> None:
    """What a fine-tune leaves in the run folder that a frontier search decides on: the model's summary (and
    an empty stand-in for its file: no weights are modelled)."""
    from detector.job.runfolder import RunFolder, model_name

    folder = RunFolder(run_dir)
    accuracy = frontier_accuracy(sparsity)
    history = [{"epoch": e, "val_accuracy": accuracy} for e in range(1, epochs + 1)]
    folder.model(model_name(sparsity)).parent.mkdir(parents=True, exist_ok=True)
    folder.model(model_name(sparsity)).write_bytes(b"")
    folder.model_summary(model_name(sparsity)).write_text(json.dumps({
        "best_val_accuracy": accuracy, "best_epoch": epochs, "epochs_run": epochs, "history": history}))


@contextlib.contextmanager
def modelled_work(work: WorkModel, timeline: Path) -> Iterator[Any]:
    """``detector.job.tune`` with each stage's trainable swapped for a modelled one, for the duration."""
    from detector.job import tune as dtune

    with dtune.replaced_trainables({stage: modelled_trial(stage, work, timeline) for stage in MODELLED_STAGES}):
        yield dtune


# --------------------------------------------------------------------------------------------------
# One run: a fresh cluster, the four stages, the timeline.


def experiment(scheduler: str, gpus: int, eval_concurrency: int | None):
    """The paper's job; ``scheduler`` "frontier": its frontier search instead of the grid (no ASHA), round 1
    over 50/70/80/90/95 %, then as many probes per round as the cluster holds searches (GPUs / 5 trials)."""
    from detector.job.experiment import load_experiment

    mode = ["search.mode=frontier", "search.sparsities=[0.5,0.7,0.8,0.9,0.95]", "search.frontier.resolution=0.025",
            f"search.frontier.parallel={max(1, gpus // 5)}", "search.scheduler=none"] if scheduler == "frontier" \
        else [f"search.scheduler={scheduler}"]
    return load_experiment(PAPER_CONFIG, [
        "data.path=/nonexistent",  # never read: the modelled trials touch no data
        "resources.cpus_per_trial=0.01", "resources.gpus_per_trial=1", "resources.max_failures=0",
        # the paper's shape, as docs/benchmarks.md measured it: 4 x 5 search trials, no dense control
        "search.control=false",
        *mode,
        f"evaluate.concurrent_trials={eval_concurrency or gpus}",
    ])


def frontier_rounds(exp: Any, run_dir: Path, ctx: Any, stop: Any, dtune: Any,
                    stage_times: dict[str, tuple[float, float]]) -> list[float]:
    """The pipeline's own frontier search (``detector.job.pipeline._frontier_search``), with each round's
    search and fine-tune experiments timed; returns every probe (all are evaluated)."""
    from detector.job import pipeline
    from detector.job.frontier import frontier_models
    from detector.job.runfolder import RunFolder
    from detector.job.status import RunState

    timed = {}
    for name in ("run_search", "run_finetune"):
        real = getattr(dtune, name)

        def wrapped(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            t0 = time.time()
            out = _real(*args, **kwargs)
            stage_times[kwargs["name"]] = (t0, time.time())
            return out

        timed[name] = real
        setattr(dtune, name, wrapped)
    try:
        folder = RunFolder(run_dir)
        pipeline._frontier_search(exp, folder, ctx, RunState(folder, ["search"]), stop)
    finally:
        for name, real in timed.items():
            setattr(dtune, name, real)
    return list(frontier_models(folder.frontier))


def node_gpus(gpus: int, per_node: int) -> list[int]:
    """GPUs per worker node: full nodes of ``per_node``, and the rest on one more node.

    >>> node_gpus(20, 8)
    [8, 8, 4]
    """
    return [per_node] * (gpus // per_node) + ([gpus % per_node] if gpus % per_node else [])


def run_job(gpus: int, scheduler: str, work: WorkModel, *, gpus_per_node: int, eval_concurrency: int | None,
            scratch: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from detector.job.runfolder import BASELINE, model_name
    from detector.job.tune import search_pending

    exp = experiment(scheduler, gpus, eval_concurrency)
    run_dir = scratch / f"gpus{gpus}-{scheduler}"
    shutil.rmtree(run_dir, ignore_errors=True)
    timeline = run_dir / "timeline"
    timeline.mkdir(parents=True)
    stage_times: dict[str, tuple[float, float]] = {}
    t_cluster = time.perf_counter()
    cluster = Cluster()
    try:
        # As on KubeRay: a head that takes no trials (the first node added is the head).
        cluster.add_node(num_cpus=0, num_gpus=0, include_dashboard=False)
        for n in node_gpus(gpus, gpus_per_node):
            # One logical CPU per node: trials take 0.01 each, and Ray starts no spare workers for the rest.
            cluster.add_node(num_cpus=1, num_gpus=n)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        cluster_start_s = time.perf_counter() - t_cluster
        with modelled_work(work, timeline) as dtune:
            ctx = dtune.StageContext(run_dir=str(run_dir), experiment=exp, data=exp.data.path)
            sparsities = list(exp.search.sparsities)

            def stage(name: str, fn: Callable[[], Any]) -> Any:
                t0 = time.time()
                out = fn()
                stage_times[name] = (t0, time.time())
                return out

            from detector.job.stop import StopSignals

            stop = StopSignals()  # not installed: nothing here is stopped by a signal
            stage("baseline", lambda: dtune.run_baseline(ctx, stop))
            if exp.search.mode == "frontier":
                sparsities = frontier_rounds(exp, run_dir, ctx, stop, dtune, stage_times)
            else:
                search = stage("search", lambda: dtune.run_search(ctx, stop))
                best = {float(v["sparsity"]): v["params"] for v in search["best"].values()}
                ft_ctx = dtune.StageContext(run_dir=str(run_dir), experiment=exp, data=exp.data.path,
                                            best_params=best)
                stage("finetune", lambda: dtune.run_finetune(ft_ctx, sparsities, stop))
            models = [BASELINE, *(model_name(s) for s in sparsities)]
            stage("evaluate", lambda: dtune.run_evaluate(ctx, models, stop))
    finally:
        ray.shutdown()
        cluster.shutdown()
    rows = [json.loads(p.read_text()) for p in sorted(timeline.glob("*.json"))]
    # what run_search sets for the grid (and a frontier's first round): the trials fit one GPU each
    budget = len(exp.search.sparsities) * exp.search.trials_per_sparsity
    pending = search_pending(budget, len(exp.search.sparsities), int(gpus // exp.resources.gpus_per_trial))
    result = analyse(rows, stage_times, gpus=gpus, eval_concurrency=exp.evaluate.concurrent_trials,
                     host_cpus=os.cpu_count() or 1)
    return {"gpus": gpus, "nodes": node_gpus(gpus, gpus_per_node), "scheduler": scheduler,
            "max_pending_trials_pg": os.environ.get("TUNE_MAX_PENDING_TRIALS_PG", f"{pending} (run_search's)"),
            "eval_concurrency": exp.evaluate.concurrent_trials, "cluster_start_s": cluster_start_s,
            "stage_times": stage_times, "run_dir": str(run_dir), **result}


def reanalyse(results_json: Path) -> dict[str, Any]:
    """The summary of an earlier run of this script, analysed again from the timelines its trials wrote."""
    summary = json.loads(results_json.read_text())
    for i, r in enumerate(summary["results"]):
        run_dir = Path(r.get("run_dir") or results_json.parent / "runs" / f"gpus{r['gpus']}-{r['scheduler']}")
        rows = [json.loads(p.read_text()) for p in sorted((run_dir / "timeline").glob("*.json"))]
        if not rows:
            raise FileNotFoundError(f"{run_dir / 'timeline'}: no trial timelines to analyse")
        stage_times = {k: tuple(v) for k, v in r["stage_times"].items()}
        analysed = analyse(rows, stage_times, gpus=r["gpus"], eval_concurrency=r.get("eval_concurrency", r["gpus"]),
                           host_cpus=summary.get("host_cpus", os.cpu_count() or 1))
        keep = {k: v for k, v in r.items() if k in ("gpus", "nodes", "scheduler", "max_pending_trials_pg",
                                                    "eval_concurrency", "cluster_start_s", "stage_times", "run_dir")}
        summary["results"][i] = {**keep, "run_dir": str(run_dir), **analysed}
    return summary


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def analyse(rows: list[dict[str, Any]], stage_times: dict[str, tuple[float, float]], *, gpus: int,
            eval_concurrency: int, host_cpus: int) -> dict[str, Any]:
    stages = {}
    reused_all: list[float] = []
    boot_cpu_all: list[float] = []
    beyond_work = epochs = 0.0
    for name, (t0, t1) in stage_times.items():
        trials = sorted((r for r in rows if r["stage"] == name), key=lambda r: (r["start"], r["now"], r["pid"]))
        slots = min(gpus, eval_concurrency) if name == "evaluate" else gpus
        latency = start_latencies([(r["start"], r["now"], r["pid"]) for r in trials], slots, t0)
        # A trial actor's first trial pays for its process: Ray's worker start-up, then the imports that
        # unpickling the trainable and its StageContext needs (detector.job.tune, ray.tune, torch). Later
        # trials on the same actor (reuse_actors) start without any: their latency is Tune's alone.
        fresh, reused, boot_wall, boot_cpu, before_process = [], [], [], [], []
        for r, (lat, again) in zip(trials, latency):
            if again:
                reused.append(lat)
                continue
            fresh.append(lat)
            boot_wall.append(r["start"] - max(r["process_start"] or t0, t0))
            boot_cpu.append(r["process_cpu_s"])
            # the part of the wait before the actor's process existed: Tune creating the trial, the
            # placement group, Ray spawning the worker (TUNE_MAX_PENDING_TRIALS_PG gates this)
            before_process.append(max(0.0, lat - boot_wall[-1]))
        reused_all += reused
        boot_cpu_all += boot_cpu
        beyond_work += sum(r["now"] - r["start"] - r["work_s"] for r in trials)
        epochs += sum(r["epochs"] for r in trials)
        stages[name] = {
            "trials": len(trials), "epochs": sum(r["epochs"] for r in trials), "makespan_s": t1 - t0,
            # work / GPUs: a setting that keeps GPUs idle (evaluate.concurrent_trials) counts as overhead
            "ideal_s": stage_lower_bound([r["work_s"] for r in trials], gpus),
            "first_start_s": trials[0]["start"] - t0, "tail_s": t1 - max(r["now"] for r in trials),
            "actors": len(fresh), "actor_boot_wall_s": _mean(boot_wall), "actor_boot_cpu_s": _mean(boot_cpu),
            "start_latency_new_actor_s": _mean(fresh), "start_latency_reused_actor_s": _mean(reused),
            "before_process_s": _mean(before_process),
            "max_start_latency_s": max(lat for lat, _ in latency),
        }
    makespan = sum(s["makespan_s"] for s in stages.values())
    ideal = sum(s["ideal_s"] for s in stages.values())
    n = sum(s["trials"] for s in stages.values())
    return {
        "makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal, "trials": n,
        "overhead_per_trial_s": (makespan - ideal) / n,
        "actors": len(boot_cpu_all), "actor_boot_cpu_s": _mean(boot_cpu_all),
        # the CPU time of booting every actor, spread over this host's cores: time the host needs for it alone
        "host_boot_floor_s": sum(boot_cpu_all) / host_cpus,
        "start_latency_reused_actor_s": _mean(reused_all),
        # each tune.report waits for the driver to take the result: time a trial held its GPU beyond its work
        "report_wait_per_epoch_s": beyond_work / epochs,
        "stages": stages,
    }


# --------------------------------------------------------------------------------------------------


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| GPUs (nodes) | scheduler | pending PGs | trials (actors) | epochs run | makespan (s) | ideal (s) | "
             "makespan / ideal | overhead per trial (s) | boot CPU per actor (s) | host boot floor (s) | "
             "start on a reused actor (s) | report wait per epoch (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        epochs = sum(s["epochs"] for s in r["stages"].values())
        lines.append(
            f"| {r['gpus']} ({'+'.join(map(str, r['nodes']))}) | {r['scheduler']} | {r['max_pending_trials_pg']} "
            f"| {r['trials']} ({r['actors']}) | {epochs} | {r['makespan_s']:.1f} | {r['ideal_s']:.1f} "
            f"| {r['ratio']:.2f} | {r['overhead_per_trial_s']:.2f} | {_num(r['actor_boot_cpu_s'])} "
            f"| {r['host_boot_floor_s']:.1f} | {_num(r['start_latency_reused_actor_s'])} "
            f"| {r['report_wait_per_epoch_s']:.3f} |")
    stage_lines = ["| GPUs | scheduler | stage | trials (actors) | makespan (s) | ideal (s) | first start (s) | "
                   "tail (s) | actor boot: wall / CPU (s) | start latency: new / reused actor, max (s) | "
                   "new actor's wait before its process (s) |",
                   "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for name, s in r["stages"].items():
            stage_lines.append(
                f"| {r['gpus']} | {r['scheduler']} | {name} | {s['trials']} ({s['actors']}) | {s['makespan_s']:.1f} "
                f"| {s['ideal_s']:.1f} | {s['first_start_s']:.2f} | {s['tail_s']:.2f} "
                f"| {_num(s['actor_boot_wall_s'])} / {_num(s['actor_boot_cpu_s'])} "
                f"| {_num(s['start_latency_new_actor_s'])} / {_num(s['start_latency_reused_actor_s'])}, "
                f"{s['max_start_latency_s']:.2f} | {_num(s['before_process_s'])} |")
    return "\n".join(lines) + "\n\n" + "\n".join(stage_lines) + "\n"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and the runs")
    p.add_argument("--gpus", type=int, nargs="+", default=[4, 8, 20], help="declared GPUs in the cluster")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--schedulers", nargs="+", choices=["none", "asha", "frontier"], default=["none", "asha"],
                   help="the grid search without or with ASHA, or the frontier search (search.mode: frontier)")
    p.add_argument("--epoch-s", type=float, default=WorkModel.epoch_s, help="modelled seconds per epoch")
    p.add_argument("--baseline-epochs", type=int, default=WorkModel.baseline_epochs)
    p.add_argument("--finetune-epochs", type=int, default=WorkModel.finetune_epochs)
    p.add_argument("--evaluate-s", type=float, default=WorkModel.evaluate_s, help="modelled seconds per evaluation")
    p.add_argument("--eval-concurrency", type=int,
                   help="evaluate.concurrent_trials (default: the GPU count; paper.yaml says 1, which leaves "
                        "GPUs idle: the ideal always uses every GPU)")
    p.add_argument("--max-pending", type=int,
                   help="set TUNE_MAX_PENDING_TRIALS_PG (default: what run_search sets, one per sparsity)")
    p.add_argument("--reanalyse", action="store_true",
                   help="analyse OUT/results.json again from its runs' timelines (no new run)")
    args = p.parse_args(argv)
    if args.reanalyse:
        summary = reanalyse(args.out / "results.json")
        write_summary(args.out, summary)
        return 0
    if args.max_pending is not None:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(args.max_pending)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    work = WorkModel(epoch_s=args.epoch_s, baseline_epochs=args.baseline_epochs,
                     finetune_epochs=args.finetune_epochs, evaluate_s=args.evaluate_s)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for gpus in args.gpus:
        for scheduler in args.schedulers:
            r = run_job(gpus, scheduler, work, gpus_per_node=args.gpus_per_node,
                        eval_concurrency=args.eval_concurrency, scratch=args.out / "runs")
            results.append(r)
            print(f"{gpus} GPUs, {scheduler}: makespan {r['makespan_s']:.1f} s, ideal {r['ideal_s']:.1f} s "
                  f"({r['ratio']:.2f}x), {r['overhead_per_trial_s']:.2f} s per trial", flush=True)
    summary = {
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores", "host_cpus": os.cpu_count() or 1,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "work_model": work.__dict__, "results": results,
    }
    write_summary(args.out, summary)
    return 0


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(markdown(summary["results"]))
    print(markdown(summary["results"]))


if __name__ == "__main__":
    sys.exit(main())
