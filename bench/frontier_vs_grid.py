"""The frontier search's cost against a dense grid of the same resolution, on the demo data.

    python bench/frontier_vs_grid.py --out /tmp/frontier-bench [--resolution 0.025] [--run-grid]

Runs the demo job (jobs/configs/demo.yaml: ResNet-18 at 64 px, the built-in demo data) with
``search.mode: frontier`` over the coarse grid 50/70/80/90/95 %, and counts its trial-epochs: every search
trial's epochs in every round, plus every probe's fine-tune epochs. A dense grid that finds the frontier to the
same resolution probes every sparsity from 50 % to 95 % in steps of the resolution; its search trial-epochs are
fixed by the config (trials per sparsity x search epochs, no early stopping), its fine-tunes at most
``finetune.max_epochs`` each. ``--run-grid`` also runs that grid, to count its fine-tune epochs as run (long).
Prints one JSON document; the figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

GRID = (0.5, 0.7, 0.8, 0.9, 0.95)


def trial_epochs(run_dir: Path) -> dict[str, int]:
    """Search trial-epochs (all rounds) and fine-tune epochs, as the run folder records them."""
    results = json.loads((run_dir / "search" / "results.json").read_text())
    finetune = 0
    for summary in (run_dir / "models").glob("prune-*.json"):
        finetune += int(json.loads(summary.read_text())["epochs_run"])
    return {"search": int(results["epochs_run"]), "finetune": finetune, "probes": len(results["best"])}


def main() -> int:
    from detector.commands.demo import demo_config
    from detector.job.experiment import load_experiment
    from detector.job.pipeline import run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resolution", type=float, default=0.025)
    p.add_argument("--run-grid", action="store_true", help="also run the dense grid (19 sparsities: long)")
    args = p.parse_args()
    grid = "[" + ",".join(f"{s:g}" for s in GRID) + "]"
    # both without the dense control, as docs/benchmarks.md measured them: it would add the same search and
    # fine-tune at 0 to either
    frontier = load_experiment(demo_config(), [
        "search.mode=frontier", f"search.sparsities={grid}", f"search.frontier.resolution={args.resolution}",
        "search.control=false", "data.path=" + str(args.out / "data")])
    t0 = time.perf_counter()
    run(frontier, args.out / "frontier", stages=["prepare", "baseline", "search"])
    frontier_s = time.perf_counter() - t0
    found = trial_epochs(args.out / "frontier")
    record = json.loads((args.out / "frontier" / "search" / "frontier.json").read_text())

    s = frontier.search
    dense = [round(GRID[0] + i * args.resolution, 6) for i in range(math.floor((GRID[-1] - GRID[0]) / args.resolution
                                                                                + 1e-9) + 1)]
    search_epochs = frontier.stage_train("search_train").max_epochs
    grid_search = len(dense) * s.trials_per_sparsity * search_epochs
    grid_finetune_max = len(dense) * frontier.stage_train("finetune").max_epochs
    out = {
        "frontier": {**found, "rounds": len(record["rounds"]), "answer": record["answer"], "seconds": frontier_s},
        "dense_grid": {"sparsities": len(dense), "search": grid_search, "finetune_at_most": grid_finetune_max},
        "ratio_search": found["search"] / grid_search,
        "ratio_total_at_most": (found["search"] + found["finetune"]) / (grid_search + grid_finetune_max),
    }
    if args.run_grid:
        grid_exp = load_experiment(demo_config(), [
            "search.sparsities=[" + ",".join(f"{x:g}" for x in dense) + "]", "search.control=false",
            "data.path=" + str(args.out / "data")])
        t0 = time.perf_counter()
        (args.out / "grid" / "models").mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copy(args.out / "frontier" / "models" / "baseline.pt", args.out / "grid" / "models" / "baseline.pt")
        shutil.copy(args.out / "frontier" / "models" / "baseline.json", args.out / "grid" / "models" / "baseline.json")
        run(grid_exp, args.out / "grid", stages=["search", "finetune"])
        out["dense_grid"].update(ran=trial_epochs(args.out / "grid"), seconds=time.perf_counter() - t0)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
