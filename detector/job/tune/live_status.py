"""The live trial table of a running experiment (``RUN/status/<experiment>.json``), and stopping it.

``LiveStatus`` is a Tune callback: it runs where Tune's loop runs (the driver; on a cluster through Ray
Client). It writes through a ``StageSink``, the driver's side of one experiment: the table's settings and
whether a stop was asked. Tune pickles its callbacks with the experiment and ``Tuner.restore`` brings back
the old ones, which hold the old driver's sink; so the driver ``register``s the sink it runs with, by
experiment name, and a callback writes through the registered one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ray import tune

from detector.job.runfolder import RunFolder
from detector.job.tune.trial_rows import status_row

# How often (seconds) the table is written between trial events, for the epochs of running trials.
WRITE_EVERY_S = 2.0


@dataclass
class StageSink:
    """One experiment's status table, written from Tune's loop, and its stop request."""

    run: RunFolder
    stage: str  # the experiment's name: a stage, or a round's (search-r2)
    metric: str
    epochs_planned: int
    written: float = 0.0
    in_loop: bool = False
    stop_asked: bool = False
    stop_sent: bool = False
    objectives: tuple[str, ...] = ()  # a Pareto search's objectives, recorded per trial
    objective: str = "val_accuracy"  # the result key a search trial is judged by (selection.objective_key)
    finished: set[str] = dataclasses.field(default_factory=set)  # trials Tune ended inside its loop

    def ask_stop(self) -> None:
        """Ask the experiment to stop: now when Tune's loop runs, else as soon as it runs
        (``LiveStatus.on_step_begin``)."""
        self.stop_asked = True
        if self.in_loop:
            self.send_stop()

    def send_stop(self) -> None:
        """Send Tune the stop, once. Tune's own handler for SIGUSR1 ends the experiment loop and saves its
        state (trials stay unfinished, so they resume); inside the loop that handler is certainly installed."""
        if not self.stop_sent:
            self.stop_sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def write(self, trials: list, *, final: bool = False) -> None:
        from detector.job.status import write_trials

        if not final:  # until the experiment ends, TERMINATED means Tune ended the trial as done
            self.finished |= {t.trial_id for t in trials if t.status == "TERMINATED"}
        rows = [status_row(t, self.stage, finished=t.trial_id in self.finished, epochs_planned=self.epochs_planned,
                           objective=self.objective, objectives=self.objectives) for t in trials]
        write_trials(self.run, self.stage, rows, metric=self.metric, epochs_planned=self.epochs_planned)
        self.written = time.monotonic()


_SINKS: dict[str, StageSink] = {}


@contextlib.contextmanager
def registered(sink: StageSink) -> Iterator[StageSink]:
    """``sink`` is where every ``LiveStatus`` of its experiment writes, restored ones included, until the
    block ends."""
    _SINKS[sink.stage] = sink
    try:
        yield sink
    finally:
        _SINKS.pop(sink.stage, None)


class LiveStatus(tune.Callback):
    """Keeps ``RUN/status/<stage>.json`` true while the experiment runs (every trial: state, epochs done of
    planned, last and best val accuracy, restarts, failure reason), and asks Tune to stop when the driver
    was signalled. The current driver's sink, registered by stage name, wins over the one this callback was
    created with, so a callback restored with Tune's experiment (``Tuner.restore``) writes where the current
    driver says."""

    def __init__(self, sink: StageSink) -> None:
        self.stage = sink.stage
        self.sink = sink

    def _sink(self) -> StageSink | None:
        return _SINKS.get(self.stage, self.sink)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        sink = self._sink()
        if sink is None:
            return
        sink.in_loop = True
        if sink.stop_asked:
            sink.send_stop()
        if time.monotonic() - sink.written > WRITE_EVERY_S:
            sink.write(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._write(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sink = self._sink()
        if sink is not None:
            sink.finished.add(trial.trial_id)  # Tune calls this just before it marks the trial TERMINATED
        self._write(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._write(trials, final=True)

    def _write(self, trials: list, final: bool = False) -> None:
        sink = self._sink()
        if sink is not None:
            sink.write(trials, final=final)
