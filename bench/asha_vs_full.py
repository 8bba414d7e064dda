"""ASHA against the full search, on the same trials: how many trial-epochs ASHA saves, and whether it picks
the same parameters per sparsity.

    python bench/asha_vs_full.py --out /tmp/bench-asha [--trials 4] [--epochs 4]

Both searches see the same trial parameters: the TPE sampler draws at random for its first
``tpe_startup_trials`` trials, seeded per sparsity, and this benchmark sets that to the trial count, so the
only difference between the two runs is ASHA stopping trials early. Data: the built-in demo set (64 px,
learnable), resnet18 at 32 px; the baseline is trained once and shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    from detector.data.demo import DemoConfig
    from detector.data.prepare import prepare
    from detector.job.pipeline import run
    from detector.job.runfolder import BASELINE, RunFolder
    from pipeline_helpers import tiny_experiment

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trials", type=int, default=4, help="trials per sparsity")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (ASHA's max_t)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = args.out / "data"
    if not (data / "manifest.json").exists():
        prepare(data, demo=DemoConfig(train=400, val=100, test=100), workers=2, progress=False)
    # no dense control: the pruned searches alone, as docs/benchmarks.md measured them
    search = {"trials_per_sparsity": args.trials, "tpe_startup_trials": args.trials, "lr_min": 1e-5, "lr_max": 1e-2,
              "control": False}
    full = tiny_experiment(data, search=search, search_train={"max_epochs": args.epochs},
                           train={"batch_size": 32, "max_epochs": 3})
    asha = tiny_experiment(data, search={**search, "scheduler": "asha",
                                         "asha": {"grace_period": 1, "reduction_factor": 2}},
                           search_train={"max_epochs": args.epochs}, train={"batch_size": 32, "max_epochs": 3})
    shared = args.out / "baseline"
    if not RunFolder(shared).model(BASELINE).exists():
        run(full, shared, stages=["baseline"])
    rows = {}
    for name, exp in (("full", full), ("asha", asha)):
        run_dir = args.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "models").mkdir(parents=True)
        shutil.copy(RunFolder(shared).model(BASELINE), RunFolder(run_dir).model(BASELINE))
        t0 = time.perf_counter()
        run(exp, run_dir, stages=["search"])
        r = json.loads((run_dir / "search" / "results.json").read_text())
        rows[name] = {"makespan_s": time.perf_counter() - t0, "epochs_run": r["epochs_run"],
                      "epochs_budget": r["epochs_budget"],
                      "best": {k: {**v["params"], "val_accuracy": v["val_accuracy"]} for k, v in r["best"].items()},
                      "params": sorted((t["sparsity"], t["params"]["optimizer"], round(t["params"]["lr"], 12))
                                       for t in r["trials"])}
    same_trials = rows["full"]["params"] == rows["asha"]["params"]
    agree = {k: rows["full"]["best"][k]["lr"] == rows["asha"]["best"][k]["lr"] for k in rows["full"]["best"]}
    print(json.dumps({"same_trial_parameters": same_trials, "same_pick_per_sparsity": agree,
                      **{k: {kk: vv for kk, vv in v.items() if kk != "params"} for k, v in rows.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
