"""The search's trial scheduler (``search.scheduler: asha``): ASHA, with the dense control's trials apart.

ASHA stops a trial at a rung (an epoch count) when its objective is below the best 1 / ``reduction_factor`` of
the trials recorded at that rung. Tune's ``ASHAScheduler`` keeps one set of rungs for a whole experiment, so
the pruned searches share theirs, as they always have. The dense control's trials (sparsity 0, with
``search.control``) would be the strongest at every rung: in the same rungs they would stop pruned trials
that no rung stopped without them, and the control would cut short the searches it is a control for, while
its own search ran whole. So its trials get rungs of their own: the same ASHA, among themselves.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from detector.job.experiment import CONTROL_SPARSITY


def asha(*, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: int,
         control_apart: bool) -> TrialScheduler:
    """ASHA over a search's trials (an epoch is Tune's ``training_iteration``); ``control_apart``: the search
    has the dense control, whose trials get rungs of their own (``ControlApart``)."""
    def one() -> ASHAScheduler:
        return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration", max_t=max_t,
                             grace_period=grace_period, reduction_factor=reduction_factor)

    return ControlApart(pruned=one(), control=one()) if control_apart else one()


class ControlApart(FIFOScheduler):
    """Two schedulers in one experiment: the dense control's trials go to ``control``, every other trial to
    ``pruned``; each decides for its own trials only. Which trial starts next stays FIFO's choice, as it is
    ASHA's own. Tune pickles the scheduler with the experiment, so a resumed search keeps both sets of rungs.
    """

    def __init__(self, *, pruned: TrialScheduler, control: TrialScheduler) -> None:
        super().__init__()
        self.pruned = pruned
        self.control = control
        self._metric = pruned.metric  # Tune checks every result for the scheduler's metric

    def _of(self, trial: Trial) -> TrialScheduler:
        return self.control if float(trial.config.get("sparsity", -1)) == CONTROL_SPARSITY else self.pruned

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return all([s.set_search_properties(metric, mode, **spec) for s in (self.pruned, self.control)])

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return (f"pruned searches: {self.pruned.debug_string()}\n"
                f"dense control (rungs of its own): {self.control.debug_string()}")
