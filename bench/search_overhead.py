"""Stage-1 makespan: the four sparsity searches run concurrently through Ray Tune, against the same trials
one after another through Tune, and against what a user would write without Ray (a plain Optuna loop).

    python bench/search_overhead.py --out /tmp/bench-search [--trials 2] [--epochs 2] [--cpus 2] [--cpus-per-trial 1]

All three run the same trials (same baseline, data, seeds, epochs) on the same machine, in one run, with the
same torch thread count per trial (Ray gives a trial holding c CPUs max(1, c) threads; the plain loop is set
to match). Tune's overhead per trial is reported two ways: against the plain loop, and as the sequential
makespan minus the time spent inside trials.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def plain_optuna_loop(exp, run_dir: Path) -> dict:
    """The searches as a user would write them without Ray: one Optuna study per sparsity, in turn."""
    import optuna

    from detector.job.runfolder import BASELINE, RunFolder
    from detector.job.stages import train_stage

    import torch

    s = exp.search
    torch.set_num_threads(max(1, int(exp.resources.cpus_per_trial)))
    t0 = time.perf_counter()
    best = {}
    for i, sparsity in enumerate(s.sparsities):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=s.seed + i, n_startup_trials=s.tpe_startup_trials))

        def objective(trial: optuna.Trial) -> float:
            optimizer = trial.suggest_categorical("optimizer", list(s.optimizers))
            lr = trial.suggest_float("lr", s.lr_min, s.lr_max, log=True)
            cfg = exp.stage_train("search_train", optimizer=optimizer, lr=lr)
            summary = train_stage(cfg, data=exp.data.path, out_dir=run_dir / "plain" / f"{sparsity:g}-{trial.number}",
                                  tb_dir=None, init=RunFolder(run_dir).model(BASELINE), sparsity=sparsity)
            return summary["history"][-1]["val_accuracy"]

        study.optimize(objective, n_trials=s.trials_per_sparsity)
        best[f"{sparsity:g}"] = study.best_params
    return {"makespan_s": time.perf_counter() - t0, "best": best}


def tune_search(exp, run_dir: Path, *, concurrent: bool) -> dict:
    import dataclasses

    import ray

    from detector.job.pipeline import run

    res = dataclasses.replace(exp.resources, max_concurrent_trials=0 if concurrent else 1)
    exp = dataclasses.replace(exp, resources=res)
    ray.init(num_cpus=exp.resources.local_num_cpus, include_dashboard=False)
    try:
        t0 = time.perf_counter()
        run(exp, run_dir, stages=["search"])
        makespan = time.perf_counter() - t0
    finally:
        ray.shutdown()
    results = json.loads((run_dir / "search" / "results.json").read_text())
    busy = sum(t["end"] - t["start"] for t in results["trials"])
    return {"makespan_s": makespan, "sum_of_trial_durations_s": busy,
            "best": {k: {"optimizer": v["optimizer"], "lr": v["lr"]} for k, v in results["best"].items()}}


def main() -> int:
    from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, default=2, help="trials per sparsity")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    p.add_argument("--cpus", type=int, default=2, help="logical CPUs for Ray")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial holds")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = args.out / "data"
    if not (data / "manifest.json").exists():
        make_tiny_data(data)
    # the pruned searches alone (the plain loop runs those): no dense control
    exp = tiny_experiment(data, search={"trials_per_sparsity": args.trials, "control": False},
                          search_train={"max_epochs": args.epochs},
                          resources={"local_num_cpus": args.cpus, "cpus_per_trial": args.cpus_per_trial})
    figures = {}
    for name in ("plain_optuna_loop", "tune_sequential", "tune_concurrent"):
        run_dir = args.out / name
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        write_untrained_baseline(run_dir, exp)
        if name == "plain_optuna_loop":
            figures[name] = plain_optuna_loop(exp, run_dir)
        else:
            figures[name] = tune_search(exp, run_dir, concurrent=name == "tune_concurrent")
        print(f"{name}: {figures[name]['makespan_s']:.1f} s", flush=True)
    n = len(exp.search.sparsities) * exp.search.trials_per_sparsity
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores",
        "trials": n,
        "cpus": args.cpus,
        "cpus_per_trial": args.cpus_per_trial,
        "epochs_per_trial": args.epochs,
        "figures": figures,
        "speedup_concurrent_vs_tune_sequential": figures["tune_sequential"]["makespan_s"]
        / figures["tune_concurrent"]["makespan_s"],
        "tune_overhead_per_trial_vs_plain_loop_s": (figures["tune_sequential"]["makespan_s"]
                                                    - figures["plain_optuna_loop"]["makespan_s"]) / n,
        "tune_overhead_per_trial_outside_trials_s": (figures["tune_sequential"]["makespan_s"]
                                                     - figures["tune_sequential"]["sum_of_trial_durations_s"]) / n,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
