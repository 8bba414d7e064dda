"""How a pruned model reaches its sparsity while it trains: the pruning schedules.

``oneshot`` (the paper's, §2.3): the baseline is pruned once to the target, then fine-tuned.
``detector.job.stages.train_stage`` does that before training starts; no hook is involved.

``gradual`` (Zhu & Gupta 2017, "To prune or not to prune"): the sparsity follows a cubic ramp over the first
``gradual_epochs`` epochs of the fine-tune, counted in optimisation steps t::

    s_t = s_f + (s_i - s_f) * (1 - t / (n * dt)) ** 3        for t = 0, dt, 2 dt, ... and t = n * dt

s_i is ``gradual_initial_sparsity``, s_f the target, dt ``prune_every_steps`` and n * dt the ramp's length,
``gradual_epochs`` times the steps of one epoch (when that is not a multiple of dt, the last interval is
shorter). At each of those steps the masks are recomputed from the current weights with global L1
(``prune_global_l1``): pruned weights are zero, the smallest of all, so they stay pruned and each
recomputation removes the smallest surviving weights across the network. From t = n * dt on the model is at
the target. Unstructured only: see ``PruningSchedule.check``.

``iterative``: ``iterative_steps`` pruning steps N, each followed by ``iterative_epochs`` epochs E of training
(the last step's training runs on to ``max_epochs``, with early stopping). Step j (1..N) prunes at the start
of epoch (j - 1) * E + 1 to ``1 - (1 - s_f) ** (j / N)``: geometric in the weights kept, so every step removes
the same fraction of the surviving weights (Frankle & Carbin's iterative magnitude pruning) and the last step
is no harsher than the first. For channel pruning each step prunes the already channel-pruned model further.
With ``rewind_epoch`` k, after every later step the model (surviving weights, BatchNorm statistics, every
parameter and buffer) goes back to its state after epoch k of this run (0: the weights it started from) and
the optimizer starts afresh: lottery-ticket rewinding (Frankle et al. 2020, "Linear mode connectivity and the
lottery ticket hypothesis"; Renda et al. 2020, "Comparing rewinding and fine-tuning").

A schedule runs inside the one training loop: ``hook(...)`` gives the object ``detector.train.fit(schedule=...)``
calls before every epoch and after every optimisation step (``detector.train.PruningHook``). fit validates
every epoch but keeps a best model, and counts early-stopping patience, only once the schedule is at its
target, and it stores the hook's state (step, sparsity in force, rewind weights) in ``checkpoint/state.pt``
beside the masks, so a resumed run continues the ramp exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal, Mapping

import torch
from torch import nn

from detector.config import AtLeastOne, ConfigError, Range, check_fields
from detector.prune import PruningInfo, measured_sparsity, prune
from detector.prune.channels import dense_prunable_params
from detector.prune.unstructured import dense_state_dict, prune_global_l1, refresh_masked_weights

Schedule = Literal["oneshot", "gradual", "iterative"]
# Which parameters belong to which schedule (PruningInfo.schedule_params records these).
_PARAMS = {
    "oneshot": (),
    "gradual": ("gradual_epochs", "prune_every_steps", "gradual_initial_sparsity"),
    "iterative": ("iterative_steps", "iterative_epochs", "rewind_epoch"),
}


@dataclass(frozen=True)
class ScheduleKeys:
    """A pruning schedule's config keys, declared once: the ``search`` section's (``search.schedule``,
    ``search.gradual_epochs``, ...) and ``PruningSchedule``'s."""

    schedule: Schedule = "oneshot"
    # gradual: epochs of the cubic ramp (the fine-tune's first), masks recomputed every `prune_every_steps`
    # optimisation steps, starting from `gradual_initial_sparsity`
    gradual_epochs: AtLeastOne = 5
    prune_every_steps: AtLeastOne = 100
    gradual_initial_sparsity: Annotated[float, Range(0, 1, high_open=True)] = 0.0
    # iterative: pruning steps (geometric in the weights kept), epochs of training after each, and the epoch
    # of this run whose weights each later step rewinds to (null: no rewinding)
    iterative_steps: Annotated[int, Range(2, why="one step is schedule oneshot")] = 3
    iterative_epochs: AtLeastOne = 2
    rewind_epoch: int | None = None


@dataclass(frozen=True)
class PruningSchedule(ScheduleKeys):
    """A validated pruning schedule: what ``train_stage(schedule=...)`` and ``detector train --schedule`` take.

    Its errors name its keys within the section that holds them (``search.``, ``--schedule``)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.rewind_epoch is not None:
            if self.schedule != "iterative":
                raise ConfigError(f"rewind_epoch: rewinding belongs to schedule iterative, not {self.schedule}; "
                                  "set it to null")
            if not 0 <= self.rewind_epoch <= self.iterative_epochs:
                raise ConfigError(f"rewind_epoch: {self.rewind_epoch} is not in [0, iterative_epochs = "
                                  f"{self.iterative_epochs}]: the weights must be taken before the second step")

    def check(self, target: float, *, method: str) -> None:
        """Refuse what this schedule cannot do for ``target`` with ``method``, saying why."""
        if self.schedule == "gradual" and method == "structured":
            raise ValueError(
                "schedule: gradual is for unstructured pruning. Channel pruning removes channels from the "
                "tensors, which cannot come back, and every removal replaces the parameters (a fresh "
                "optimizer); a ramp recomputed every few steps would be iterative pruning with one-step "
                "fine-tunes. Use schedule: iterative, which removes channels step by step")
        if self.rewind_epoch is not None and method == "structured":
            raise ValueError(
                "rewind_epoch: rewinding is for unstructured pruning. Channel pruning removes channels, so the "
                "early weights no longer have the tensors' shapes; set rewind_epoch: null")
        if self.schedule == "gradual" and not self.gradual_initial_sparsity < target:
            raise ValueError(f"gradual_initial_sparsity: {self.gradual_initial_sparsity} must be below the "
                             f"target sparsity {target}")

    @property
    def first_target_epoch(self) -> int:
        """The first epoch that trains at the target sparsity: the first whose model may be kept."""
        if self.schedule == "gradual":
            return self.gradual_epochs  # the ramp ends with the last step of this epoch
        if self.schedule == "iterative":
            return (self.iterative_steps - 1) * self.iterative_epochs + 1
        return 1

    def check_epochs(self, max_epochs: int, *, where: str = "max_epochs") -> None:
        """Refuse a run too short to reach the target (it would keep no model)."""
        if max_epochs < self.first_target_epoch:
            raise ValueError(f"{where}: {max_epochs} epochs end before schedule {self.schedule} reaches its target "
                             f"sparsity (in epoch {self.first_target_epoch}); give at least "
                             f"{self.first_target_epoch} epochs or a shorter schedule")

    @classmethod
    def from_keys(cls, keys: ScheduleKeys) -> "PruningSchedule":
        """The schedule a config section with these keys (``search``) asks for, validated."""
        return cls(**{f.name: getattr(keys, f.name) for f in fields(ScheduleKeys)})

    def params(self) -> dict[str, Any]:
        """The parameters this schedule uses, as plain data."""
        values = asdict(self)
        return {name: values[name] for name in _PARAMS[self.schedule]}

    def hook(self, target: float, *, method: str, arch: str) -> "GradualPruning | IterativePruning | None":
        """What ``fit(schedule=...)`` runs to prune an unpruned ``arch`` to ``target`` with ``method`` as it
        trains; None for ``oneshot`` (pruned once before training)."""
        self.check(target, method=method)
        if self.schedule == "gradual":
            return GradualPruning(self, target, arch=arch)
        if self.schedule == "iterative":
            return IterativePruning(self, target, method=method, arch=arch)
        return None


def gradual_sparsity(step: int, *, target: float, initial: float, ramp_steps: int, every: int) -> float:
    """The sparsity in force after ``step`` optimisation steps of a gradual schedule: the cubic ramp from
    ``initial`` to ``target`` over ``ramp_steps``, sampled at the pruning steps (multiples of ``every``, and
    ``ramp_steps`` itself, from which on it is ``target``).

    >>> [round(gradual_sparsity(t, target=0.9, initial=0.0, ramp_steps=4, every=2), 4) for t in range(6)]
    [0.0, 0.0, 0.7875, 0.7875, 0.9, 0.9]
    """
    if step >= ramp_steps:
        return target
    t = step - step % every
    return target + (initial - target) * (1.0 - t / ramp_steps) ** 3


def iterative_sparsities(target: float, steps: int) -> list[float]:
    """The sparsity after each step of an iterative schedule: ``1 - (1 - target) ** (j / steps)``, the same
    fraction of the surviving weights removed at every step.

    >>> [round(s, 4) for s in iterative_sparsities(0.9, 2)]
    [0.6838, 0.9]
    """
    return [1.0 - (1.0 - target) ** (j / steps) for j in range(1, steps)] + [target]


class _Hook:
    """What both schedules share: the target, the architecture, and the state checks on resume."""

    def __init__(self, schedule: PruningSchedule, target: float, *, method: str, arch: str) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"sparsity: {target} is not a fraction in (0, 1)")
        self.config, self.target, self.method, self.arch = schedule, target, method, arch

    def _identity(self) -> dict[str, Any]:
        return {"schedule": self.config.schedule, "params": self.config.params(), "target": self.target,
                "method": self.method}

    def _check_state(self, state: Mapping[str, Any]) -> None:
        saved = {k: state.get(k) for k in ("schedule", "params", "target", "method")}
        if saved != self._identity():
            raise ValueError(f"the saved run was pruned with schedule {saved}, this one asks for "
                             f"{self._identity()}; resume with the same schedule, sparsity and method")

    def _info(self, model: nn.Module, **extra: Any) -> PruningInfo:
        return PruningInfo(self.method, self.target, measured_sparsity(model, self.arch),  # type: ignore[arg-type]
                           dense_prunable_params=dense_prunable_params(self.arch), schedule=self.config.schedule,
                           **extra)

    def begin(self, model: nn.Module, *, steps_per_epoch: int | None, max_epochs: int) -> None:
        self.config.check_epochs(max_epochs)


class GradualPruning(_Hook):
    """Zhu & Gupta's gradual magnitude pruning as a hook of ``fit`` (unstructured, global L1)."""

    def __init__(self, schedule: PruningSchedule, target: float, *, arch: str) -> None:
        super().__init__(schedule, target, method="unstructured", arch=arch)
        self.step = 0  # optimisation steps taken
        self.sparsity: float | None = None  # in force; None until the first pruning step (t = 0)
        self.steps_per_epoch: int | None = None

    @property
    def ramp_steps(self) -> int:
        if self.steps_per_epoch is None:
            raise RuntimeError("GradualPruning: begin() has not been called")
        return self.config.gradual_epochs * self.steps_per_epoch

    def begin(self, model: nn.Module, *, steps_per_epoch: int | None, max_epochs: int) -> None:
        super().begin(model, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
        if steps_per_epoch is None:
            raise ValueError("schedule gradual: the train loader has no length, and the ramp is counted in steps")
        if self.steps_per_epoch not in (None, steps_per_epoch):
            raise ValueError(f"schedule gradual: the run began with {self.steps_per_epoch} steps per epoch and "
                             f"now has {steps_per_epoch}; resume it with the same data, batch_size and "
                             "max_train_batches")
        self.steps_per_epoch = steps_per_epoch
        if self.sparsity is None:
            self._prune(model)  # t = 0: masks on every layer from the start, at s_i

    def sparsity_at(self, step: int) -> float:
        s = self.config
        return gradual_sparsity(step, target=self.target, initial=s.gradual_initial_sparsity,
                                ramp_steps=self.ramp_steps, every=s.prune_every_steps)

    def _prune(self, model: nn.Module) -> None:
        self.sparsity = self.sparsity_at(self.step)
        # Masks from the current weights; pruned ones are zero, so they stay pruned (prune_global_l1).
        prune_global_l1(model, self.sparsity)

    def before_epoch(self, model: nn.Module, epoch: int) -> bool:
        return False

    def after_step(self, model: nn.Module) -> None:
        self.step += 1
        t, ramp = self.step, self.ramp_steps
        if t == ramp or (t < ramp and t % self.config.prune_every_steps == 0):
            self._prune(model)

    @property
    def at_target(self) -> bool:
        return self.sparsity == self.target

    def pruning(self, model: nn.Module) -> PruningInfo:
        return self._info(model, schedule_params={**self.config.params(), "steps_per_epoch": self.steps_per_epoch,
                                                  "ramp_steps": self.ramp_steps})

    def state_dict(self) -> dict[str, Any]:
        return {**self._identity(), "step": self.step, "sparsity": self.sparsity,
                "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self.step, self.sparsity, self.steps_per_epoch = state["step"], state["sparsity"], state["steps_per_epoch"]


class IterativePruning(_Hook):
    """Prune in steps with training between them, optionally rewinding, as a hook of ``fit``."""

    def __init__(self, schedule: PruningSchedule, target: float, *, method: str, arch: str) -> None:
        super().__init__(schedule, target, method=method, arch=arch)
        self.targets = iterative_sparsities(target, schedule.iterative_steps)
        self.done = 0  # steps pruned so far
        self.channel_ratios: list[float] = []  # structured: each step's per-layer ratio
        self.channel_multiple: int | None = None
        self.rewind_state: dict[str, torch.Tensor] | None = None

    def begin(self, model: nn.Module, *, steps_per_epoch: int | None, max_epochs: int) -> None:
        super().begin(model, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
        self.before_epoch(model, 1)  # a fresh run's first step (a resumed one has done it)

    def before_epoch(self, model: nn.Module, epoch: int) -> bool:
        """Prune the step that starts with ``epoch`` (if one does); True when the parameters were replaced
        (channels removed) or reset (rewound), so that fit builds a fresh optimizer."""
        epochs = self.config.iterative_epochs
        if self.config.rewind_epoch == epoch - 1 and self.rewind_state is None:
            # The model as it is after epoch k (before this epoch's pruning step, if any).
            self.rewind_state = {k: v.detach().cpu().clone() for k, v in dense_state_dict(model).items()}
        step = (epoch - 1) // epochs + 1
        if (epoch - 1) % epochs or step > len(self.targets) or step <= self.done:
            return False
        if step != self.done + 1:
            raise RuntimeError(f"iterative pruning: epoch {epoch} begins step {step} but {self.done} were done")
        info = prune(model, self.targets[step - 1], method=self.method, arch=self.arch)
        self.done = step
        if info.structured:
            self.channel_ratios.append(float(info.channel_ratio or 0.0))
            self.channel_multiple = info.channel_multiple
        rewound = self.rewind_state is not None and step >= 2
        if rewound:
            self._rewind(model)
        return info.structured or rewound

    @torch.no_grad()
    def _rewind(self, model: nn.Module) -> None:
        """Every parameter and buffer back to the saved epoch's values; the new masks keep pruned weights zero."""
        assert self.rewind_state is not None
        for key, value in model.state_dict().items():
            if not key.endswith("_mask"):
                value.copy_(self.rewind_state[key.removesuffix("_orig")])
        refresh_masked_weights(model)

    def after_step(self, model: nn.Module) -> None:
        pass

    @property
    def at_target(self) -> bool:
        return self.done == len(self.targets)

    def pruning(self, model: nn.Module) -> PruningInfo:
        structured = {}
        if self.method == "structured":
            # the per-layer fraction of channels removed over all steps
            structured = {"channel_ratio": 1.0 - math.prod(1.0 - r for r in self.channel_ratios),
                          "channel_multiple": self.channel_multiple}
        return self._info(model, **structured, schedule_params={
            **self.config.params(), "step_sparsities": self.targets, "steps_done": self.done})

    def state_dict(self) -> dict[str, Any]:
        return {**self._identity(), "done": self.done, "channel_ratios": list(self.channel_ratios),
                "channel_multiple": self.channel_multiple, "rewind_state": self.rewind_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self.done, self.channel_multiple = state["done"], state["channel_multiple"]
        self.channel_ratios = list(state["channel_ratios"])
        self.rewind_state = state["rewind_state"]
