"""Stopping a run: SIGINT (Ctrl-C) and SIGTERM (``kill``, ``ray job stop``, a pod's deletion) stop the whole job.

A stop never becomes a result. The first signal asks the stage that is running to end at its next safe
point: a Tune stage ends its experiment and saves Tune's state (its trials stay unfinished, so ``detector run
--resume`` continues them); any other stage stops where it is (its writes are atomic). Nothing after that
stage starts, and no results file is written for it. A second signal stops at once.

Once the stopped run's state is saved, the ``detector`` command exits promptly (``exit_promptly``): ``ray job stop`` gives it
``RAY_JOB_STOP_WAIT_TIME_S`` after the SIGTERM before it SIGKILLs it, and an ordinary interpreter exit after
a run spends seconds tearing down torch's and Ray's native state (measured: 5-6 s on a loaded 2-core machine).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(BaseException):
    """The run was stopped by a signal (a BaseException, like KeyboardInterrupt: no ``except Exception``
    in between may swallow it). ``exit_status`` is the shell's convention, 128 + the signal number."""

    def __init__(self, signum: int, stage: str | None = None) -> None:
        self.signum = signum
        self.stage = stage
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}" + (f" during the {stage} stage" if stage else ""))

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stop_in_chain(error: BaseException) -> RunStopped | None:
    """The ``RunStopped`` behind ``error``, if any. Raised by a signal handler while the driver was inside C
    code (Ray's core worker), it can surface as another exception (a SystemError "returned a result with an
    exception set") whose cause it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RunStopped):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


class StageIncomplete(RuntimeError):
    """A Tune stage ended without every trial done (some errored, or never started): its results would be
    partial, so none are written; the message says which trials and how to continue."""


class StopSignals:
    """SIGINT/SIGTERM -> a stop request, from ``install()`` until ``restore()``.

    While a Tune stage runs, ``deferring(ask)`` registers how to ask it to stop (the handler then only records
    the request and calls ``ask``; the stage checks ``requested`` when Tune returns). Outside such a block the
    first signal raises ``RunStopped`` where the driver is. The second signal raises at once, anywhere.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._ask: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a driver run from a thread cannot be stopped by them
        for sig in SIGNALS:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("%s again: stopping at once", name)
            raise RunStopped(signum)
        self.signum = signum
        if self._ask is not None:
            log.warning("%s: stopping the run after the running stage saves its state (again to stop at once)",
                        name)
            self._ask()
        else:
            raise RunStopped(signum)

    def check(self, stage: str) -> None:
        """Raise ``RunStopped`` if a stop was requested (a Tune stage calls this when Tune returns)."""
        if self.signum is not None:
            raise RunStopped(self.signum, stage)

    @contextlib.contextmanager
    def deferring(self, ask: Callable[[], None]) -> Iterator[None]:
        self._ask = ask
        try:
            yield
        finally:
            self._ask = None


def exit_promptly(stopped: RunStopped) -> None:
    """At the process's exit (after the command has printed its last line): disconnect from Ray, flush what
    is written, and end the process with the stop's status, skipping the interpreter's teardown. Called once
    the stop is recorded: nothing is left to save then, only time to lose before a SIGKILL."""
    atexit.register(_exit_now, stopped.exit_status)  # registered after Ray's own: runs before it


def _exit_now(status: int) -> None:
    if "ray" in sys.modules:  # a joined cluster: say goodbye (about a second); an embedded one is already down
        from detector.job.tune.cluster import shutdown

        shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
