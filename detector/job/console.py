"""What the driver's console says about the stages: a line when each starts (what it will do), when it is
reused, and when it ends (how long it took, what it produced), and after a search the winner per sparsity.

Tune's own output is off by default (``detector.job.tune.progress`` shows each Tune stage's progress
instead), so these lines are the run's outline:

    12:00:01 INFO detector.job.console: search: starts: 10 trials (5 sparsities x 2), 20 trial-epochs
    12:03:13 INFO detector.job.console: search: done in 3 min 12 s: 10 trials, 5 studies, best per sparsity in
             runs/demo/search/results.json
    12:03:13 INFO detector.job.console: search: best at sparsity 0.4: val_accuracy 0.8125 (adam, lr 3.1e-04,
             trial search/s40-t1)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable

from detector.job.experiment import ExperimentConfig
from detector.job.runfolder import BASELINE, RunFolder, model_name
from detector.job.status import RunState

log = logging.getLogger(__name__)


def count(n: int, thing: str) -> str:
    """``1 trial``, ``2 trials``."""
    return f"{n} {thing}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """``3 min 12 s``, ``1 h 4 min``, ``42 s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


class AnnouncedRunState(RunState):
    """The run's record (``RunState``), and a console line at each change of a stage's state. ``pending``:
    what a stage has left to do (``pipeline.pending_work``'s entry for it)."""

    def __init__(self, run: RunFolder, stages: Iterable[str], exp: ExperimentConfig,
                 pending: Callable[[str], list[Any]]) -> None:
        super().__init__(run, stages)
        self.run, self.exp, self.pending = run, exp, pending
        self.began: dict[str, float] = {}

    def stage(self, name: str, state: str) -> None:
        super().stage(name, state)
        if state == "running":
            self.began[name] = time.monotonic()
            plan = planned(name, self.exp, self.pending(name))
            log.info("%s: starts%s", name, f": {plan}" if plan else "")
        elif state == "reused":
            log.info("%s: reused: its outputs are in %s", name, self.run.root)
        elif state == "done":
            took = duration(time.monotonic() - self.began.get(name, time.monotonic()))
            log.info("%s: done in %s: %s", name, took, produced(name, self.exp, self.run))
            if name == "search" and self.run.search_results.exists():
                for line in winners(json.loads(self.run.search_results.read_text())):
                    log.info("search: %s", line)


def planned(stage: str, exp: ExperimentConfig, todo: list[Any]) -> str:
    """What ``stage`` is about to do with ``todo``, what it has left, in words ('' where there is nothing to
    say)."""
    s = exp.search
    if stage == "baseline":
        cfg = exp.stage_train("baseline")
        return f"{cfg.arch} at {cfg.image_size} px, up to {count(cfg.max_epochs, 'epoch')}"
    if stage == "search" and s.mode == "pareto":
        return f"{s.pareto.trials} trials of one multi-objective study ({', '.join(s.pareto.objectives)})"
    if stage == "search" and s.mode == "frontier":
        return f"a frontier search over sparsities {', '.join(f'{x:g}' for x in sorted(s.sparsities))}"
    if stage == "search":
        epochs = exp.stage_train("search_train").max_epochs
        trials = len(todo) * s.trials_per_sparsity
        return (f"{count(trials, 'trial')} ({len(todo)} {_sparsities(todo)} x {s.trials_per_sparsity}), "
                f"{count(trials * epochs, 'trial-epoch')}, judged by {s.metric}")
    if stage == "finetune" and todo:
        return (f"{count(len(todo), 'model')} ({_sparsities(todo)} {', '.join(f'{x:g}' for x in todo)}), "
                f"up to {count(exp.stage_train('finetune').max_epochs, 'epoch')} each")
    if stage == "evaluate" and todo:
        return f"{count(len(todo), 'model')} ({', '.join(todo)})"
    return ""


def produced(stage: str, exp: ExperimentConfig, run: RunFolder) -> str:
    """What ``stage`` left in the run folder, in words."""
    if stage == "prepare":
        return f"data in {run.resolve(exp.data.path)}"
    if stage == "baseline":
        return f"{run.model(BASELINE)} ({_summary(run, BASELINE)})"
    if stage == "search":
        results = json.loads(run.search_results.read_text())
        studies = len({t["sparsity"] for t in results["trials"]})
        return (f"{count(len(results['trials']), 'trial')}, {studies} {'study' if studies == 1 else 'studies'}, "
                f"{count(results.get('epochs_run', 0), 'trial-epoch')}, best per sparsity in {run.search_results}")
    if stage == "finetune":
        best = json.loads(run.search_results.read_text())["best"].values()
        names = [model_name(float(b["sparsity"])) for b in best]
        done = [n for n in names if run.model_summary(n).exists()]
        return f"{count(len(done), 'model')} in {run.model(BASELINE).parent}: " + "; ".join(
            f"{n} {_summary(run, n)}" for n in done)
    if stage == "evaluate":
        return f"{count(len(run.evaluation_files()), 'evaluation')} in {run.evaluation(BASELINE).parent}"
    if stage == "report":
        return str(run.report / "report.md")
    return str(run.root)


def winners(results: dict[str, Any]) -> list[str]:
    """One line per sparsity of a search's ``results.json``: its best trial's objective and parameters."""
    lines = []
    for entry in sorted(results.get("best", {}).values(), key=lambda b: float(b["sparsity"])):
        params = entry.get("params", {})
        settings = ", ".join(f"lr {v:.2g}" if k == "lr" else str(v) for k, v in params.items())
        if entry.get("objective") is None:  # a Pareto search's dense control: parameters of a front trial
            source = entry.get("params_from", {}).get("name")
            lines.append(f"sparsity {float(entry['sparsity']):g}: {settings} (from {source})")
            continue
        lines.append(f"best at sparsity {float(entry['sparsity']):g}: {results.get('metric', 'objective')} "
                     f"{entry['objective']:.4f} ({settings}, trial {entry.get('name')})")
    return lines


def _sparsities(values: list[Any]) -> str:
    return "sparsity" if len(values) == 1 else "sparsities"


def _summary(run: RunFolder, name: str) -> str:
    try:
        s = json.loads(run.model_summary(name).read_text())
    except (OSError, ValueError):
        return "no summary"
    return f"best val accuracy {s['best_val_accuracy']:.4f} at epoch {s['best_epoch']}"


