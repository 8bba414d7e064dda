"""What a person watching a run reads: a progress line for each running Tune experiment, Tune's own output
(off unless ``detector -v``), and every trial's log lines, named by the trial, where Ray shows them.

- ``StageProgress``: while an experiment runs, a thread reads its status table (``RUN/status/<name>.json``,
  which ``LiveStatus`` keeps true, wherever Tune's loop runs) and shows trial-epochs done of planned, trials
  running and done, the best objective so far per sparsity, and the time left: a tqdm bar on a terminal, a
  plain log line every ``PLAIN_EVERY_S`` elsewhere (CI, ``ray job logs``, a pipe), where a bar would print a
  line per refresh.
- ``tune_verbosity``, ``tune_reporter``, ``quiet_libraries``: Tune's status tables, its per-result lines and
  the libraries' INFO chatter bury the run; they come back with ``detector -v``, which sets ``VERBOSE_ENV``
  before Ray starts, so that the trial processes see it too.
- ``log_as_trial``: Ray starts a trial's process without the driver's logging, so its INFO lines (its start,
  its epochs) would go nowhere. The trial logs to its own stderr, which Ray keeps in the session's
  ``logs/worker-*.err``, shows as the actor's log in the dashboard, and forwards to the driver's output
  (and so to ``ray job logs``); each line names the trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from detector.job.console import count, duration

log = logging.getLogger(__name__)

# Set to 1 by `detector -v` (detector.cli, which cannot import this Ray package without slowing --help).
VERBOSE_ENV = "DETECTOR_VERBOSE"
# How often the plain progress line is written where the output is not a terminal.
PLAIN_EVERY_S = 30.0
# How often the bar is redrawn on a terminal (it reads one small JSON file each time).
BAR_EVERY_S = 1.0
# Libraries' INFO chatter: "Checkpoint successfully created at: ..." every epoch of every trial, "Wrote the
# latest version of all result files ...", Optuna's "A new study created ...". Shown with -v.
CHATTY_LOGGERS = ("ray.train", "ray.tune", "optuna")
# Warnings that say nothing to a user: after a stop, Tune's result grid warns "Failed to fetch metrics" for
# every trial that had not started (it has no results, as it should). Shown with -v.
MISLEADING_LOGGERS = ("ray.tune.analysis.experiment_analysis",)


def verbose() -> bool:
    """Whether the run shows Tune's and Ray's own output (``detector -v``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Keep the libraries' INFO chatter (``CHATTY_LOGGERS``) off the console, unless ``verbose``."""
    import optuna

    if verbose():
        return
    # Optuna sets its own logger's level when it is first imported: set it through Optuna, after that
    optuna.logging.set_verbosity(logging.WARNING)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in MISLEADING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def tune_verbosity() -> int:
    """Tune's ``verbose``: 0 (silent; ``StageProgress`` reports instead), 2 with ``detector -v``."""
    return 2 if verbose() else 0


def tune_reporter(objective: str) -> Any:
    """Tune's own table for ``detector -v``: each trial's parameters, epoch, ``objective`` (what the search
    judges a trial by) and val accuracy, at most every ``PLAIN_EVERY_S``; None (Tune's silence) without -v."""
    from ray.tune import CLIReporter

    from detector.job.search_space import param_names

    if not verbose():
        return None
    metrics = dict.fromkeys(["epoch", objective, "val_accuracy", "train_loss"])
    return CLIReporter(parameter_columns=["sparsity", *param_names()], metric_columns=list(metrics),
                       max_report_frequency=int(PLAIN_EVERY_S), sort_by_metric=False)


# -- a trial's log lines ----------------------------------------------------------------------------------

_trial_handler: logging.Handler | None = None
_trial_name = ""


def log_as_trial(name: str) -> None:
    """In a trial's process: log this package's records at INFO to stderr, each line naming the trial
    ``name`` (``search/s40-t3``). A reused actor runs one trial after another: the latest name is used."""
    global _trial_handler, _trial_name
    _trial_name = name
    package = logging.getLogger(__name__.split(".")[0])
    if _trial_handler is None:
        _trial_handler = logging.StreamHandler(sys.stderr)
        package.addHandler(_trial_handler)
        package.propagate = False  # a root handler, where Ray set one, would print each line twice
    _trial_handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
                                                  datefmt="%H:%M:%S"))
    package.setLevel(logging.DEBUG if verbose() else logging.INFO)
    quiet_libraries()


def trial_log_name() -> str:
    """The name ``log_as_trial`` last gave this process ('' before it was called)."""
    return _trial_name


# -- the progress of an experiment -------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """An experiment's progress, from its status rows. A finished trial counts its whole budget of epochs
    (it will run no more of them: early stopping, ASHA), so that done reaches planned at the end."""

    epochs_done: int
    epochs_planned: int
    running: int
    finished: int
    trials: int
    best: dict[float, float]  # sparsity -> the best objective of its finished trials so far


def summarize(rows: list[dict[str, Any]], *, trials: int, epochs_per_trial: int, maximize: bool) -> Progress:
    """``rows`` (``RUN/status/<name>.json``'s trials) as ``Progress`` of ``trials`` planned trials."""
    finished = [r for r in rows if r.get("state") in ("done", "failed")]
    epochs = sum(epochs_per_trial if r.get("state") in ("done", "failed")
                 else min(int(r.get("epochs") or 0), epochs_per_trial) for r in rows)
    best: dict[float, float] = {}
    for r in finished:  # a running trial's objective is not its last epoch's yet: it may still fall
        value, sparsity = r.get("objective"), r.get("sparsity")
        if isinstance(value, (int, float)) and math.isfinite(value) and sparsity is not None:
            old = best.get(float(sparsity))
            if old is None or (value > old if maximize else value < old):
                best[float(sparsity)] = float(value)
    total = max(trials, len(rows))
    return Progress(epochs_done=epochs, epochs_planned=total * epochs_per_trial,
                    running=sum(r.get("state") == "running" for r in rows), finished=len(finished), trials=total,
                    best=dict(sorted(best.items())))


def describe(p: Progress, objective: str, left_s: float | None) -> str:
    """The progress as words: trials, the best objective per sparsity of the finished trials, the time left."""
    parts = [f"{p.running} running, {p.finished} of {count(p.trials, 'trial')} done"]
    if p.best:
        parts.append(f"best {objective}: " + ", ".join(f"{s:g} {v:.4f}" for s, v in p.best.items()))
    parts.append("time left unknown" if left_s is None else f"about {duration(left_s)} left")
    return "; ".join(parts)


def _read_rows(table: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(table.read_text()).get("trials", [])
    except (OSError, ValueError, AttributeError):  # not written yet, or replaced while read
        return []
    return [r for r in rows if isinstance(r, dict)]


class StageProgress:
    """Shows the progress of the experiment ``name`` while the block runs, from its status ``table``: a bar
    on a terminal ``stream`` (``bar``: whether to), else a log line every ``every_s``.

    >>> with StageProgress(run.stage_status("search"), "search", trials=10, epochs_per_trial=2,
    ...                    objective="val_accuracy", maximize=True):
    ...     tuner.fit()

    Time left is the epochs left at the rate of the epochs done since the block began (a resumed
    experiment's earlier epochs took no time of this driver's).
    """

    def __init__(self, table: Path, name: str, *, trials: int, epochs_per_trial: int, objective: str,
                 maximize: bool, stream: TextIO | None = None, bar: bool | None = None,
                 every_s: float | None = None) -> None:
        self.table, self.name, self.objective, self.maximize = table, name, objective, maximize
        self.trials, self.epochs_per_trial = trials, epochs_per_trial
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.every_s = every_s or (BAR_EVERY_S if self.bar else PLAIN_EVERY_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{name}", daemon=True)
        self._start: tuple[float, int] | None = None  # (when, epochs done then)

    def __enter__(self) -> "StageProgress":
        self._start = (time.monotonic(), self._now().epochs_done)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _now(self) -> Progress:
        return summarize(_read_rows(self.table), trials=self.trials, epochs_per_trial=self.epochs_per_trial,
                         maximize=self.maximize)

    def seconds_left(self, p: Progress) -> float | None:
        assert self._start is not None
        began, epochs_then = self._start
        done_here = p.epochs_done - epochs_then
        if done_here <= 0:
            return None
        return (time.monotonic() - began) / done_here * (p.epochs_planned - p.epochs_done)

    def line(self) -> str:
        """One line of progress, as the plain output writes it."""
        p = self._now()
        return (f"{self.name}: {p.epochs_done}/{p.epochs_planned} trial-epochs; "
                f"{describe(p, self.objective, self.seconds_left(p))}")

    def _run(self) -> None:
        if not self.bar:
            while not self._stop.wait(self.every_s):
                log.info("%s", self.line())
            return
        from tqdm import tqdm

        with tqdm(total=self._now().epochs_planned, desc=self.name, unit="trial-epoch", file=self.stream,
                  dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} trial-epochs "
                  "[{elapsed}] {postfix}") as bar:
            while not self._stop.wait(self.every_s):
                p = self._now()
                bar.total, bar.n = p.epochs_planned, p.epochs_done
                bar.set_postfix_str(describe(p, self.objective, self.seconds_left(p)), refresh=False)
                bar.refresh()
