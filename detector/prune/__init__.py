"""Pruning a detector, and what a pruned model is.

One entry point, ``prune(model, sparsity, method=..., arch=...)``, serves every stage and command; it
returns a ``PruningInfo``, which every checkpoint stores once (``metadata["pruning"]``) and which everything
that loads, fine-tunes, evaluates or reports a model asks.

One quantity, one name: **sparsity** is the fraction of the unpruned architecture's prunable weights
(Conv2d and Linear weights; 23,456,960 in ResNet-50) that the model no longer uses, whether they are
zeroed in place (``unstructured``, the paper's global L1) or removed with their channels (``structured``,
L1 channel pruning). ``PruningInfo.sparsity`` is the target; ``PruningInfo.achieved`` and
``measured_sparsity(model, arch)`` are what the weights show.

- ``detector.prune.unstructured``: global L1 unstructured pruning, masks, sparsity accounting;
- ``detector.prune.channels``: L1 channel pruning through torch-pruning's dependency graph;
- ``detector.prune.semistructured``: 2:4 sparsity for NVIDIA sparse tensor cores (a latency measurement);
- ``detector.prune.schedule``: how a model reaches its sparsity while it trains: at once (``oneshot``, the
  paper's), along Zhu & Gupta's cubic ramp (``gradual``) or in steps with fine-tuning between them
  (``iterative``, optionally rewinding the weights as in lottery-ticket rewinding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

import torch
from torch import nn

from detector.config import ConfigError, OneOf, Range, check_fields
from detector.prune.channels import dense_prunable_params, prune_channels_l1
from detector.prune.unstructured import effective_weight, prunable_weights, prune_global_l1

METHODS = ("unstructured", "structured")
Method = Literal["none", "unstructured", "structured"]
SCHEDULES = ("oneshot", "gradual", "iterative")  # detector.prune.schedule
_Fraction = Annotated[float, Range(0, 1, high_open=True)]


@dataclass(frozen=True)
class PruningInfo:
    """What pruning did to a model (plain data; ``metadata["pruning"]`` of every checkpoint)."""

    method: Method = "none"
    sparsity: _Fraction = 0.0  # the target fraction of the unpruned architecture's prunable weights
    achieved: _Fraction = 0.0  # the same fraction as measured on the weights right after pruning
    channel_ratio: float | None = None  # structured: the per-layer channel ratio that met the target
    channel_multiple: int | None = None  # structured: channel counts are multiples of this
    dense_prunable_params: int | None = None  # prunable weights of the unpruned architecture
    # How the model reached it (detector.prune.schedule): its name, and the parameters it ran with
    # (e.g. gradual: gradual_epochs, prune_every_steps, ramp_steps; iterative: step_sparsities, rewind_epoch).
    schedule: Annotated[str, OneOf(SCHEDULES)] = "oneshot"
    schedule_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.method == "none" and self.sparsity != 0:
            raise ConfigError(f"pruning: method none with sparsity {self.sparsity}")

    @property
    def structured(self) -> bool:
        return self.method == "structured"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "pruning") -> "PruningInfo":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, where: str = "checkpoint") -> "PruningInfo":
        """The pruning of a checkpoint, from its metadata; also reads files written before this class
        existed (``pruning_method``, ``target_sparsity``, ``params_removed`` at the top level)."""
        if "pruning" in meta:
            if not isinstance(meta["pruning"], Mapping):
                raise ValueError(f"{where}: metadata pruning is not a mapping")
            return cls.from_dict(meta["pruning"], where=f"{where}: metadata pruning")
        target = float(meta.get("target_sparsity") or 0.0)
        method = meta.get("pruning_method") or ("unstructured" if target > 0 else "none")
        if method == "none":
            return cls()
        achieved = meta.get("params_removed", meta.get("sparsity", target))
        return cls(method=method, sparsity=target, achieved=float(achieved),
                   channel_ratio=meta.get("channel_ratio"), channel_multiple=meta.get("channel_multiple"),
                   dense_prunable_params=meta.get("dense_prunable_params"))


@torch.no_grad()
def measured_sparsity(model: nn.Module, arch: str) -> float:
    """Fraction of ``arch``'s prunable weights that ``model`` does not use: zero (masked or plain) or removed
    with a channel. One definition for both methods, so their budgets compare."""
    nonzero = sum(int(torch.count_nonzero(effective_weight(m))) for m, _ in prunable_weights(model))
    return 1.0 - nonzero / dense_prunable_params(arch)


def prune(model: nn.Module, sparsity: float, *, method: str = "unstructured", arch: str) -> PruningInfo:
    """Prune ``model`` (an ``arch``) in place to ``sparsity``; what was done, as a ``PruningInfo``.

    ``method="unstructured"``: global L1 over every Conv2d/Linear weight, masks kept on the model so
    fine-tuning keeps the zeros. ``method="structured"``: L1 channel pruning that removes ``sparsity`` of
    the prunable weights (the model gets smaller). ``sparsity=0`` leaves the model as it is. A model already
    pruned with the same method is pruned further: what it has lost counts towards ``sparsity`` (the steps
    of ``detector.prune.schedule``).

    >>> from detector.model import build_model
    >>> model = build_model("resnet18", seed=0)
    >>> info = prune(model, 0.3, arch="resnet18")
    >>> info.method, round(info.achieved, 4)
    ('unstructured', 0.3)
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: {sparsity} is not a fraction in [0, 1)")
    if sparsity == 0:
        return PruningInfo()
    dense = dense_prunable_params(arch)
    if method == "structured":
        ratio, multiple = prune_channels_l1(model, sparsity, arch=arch)
        return PruningInfo("structured", sparsity, measured_sparsity(model, arch), channel_ratio=ratio,
                           channel_multiple=multiple, dense_prunable_params=dense)
    prune_global_l1(model, sparsity)
    return PruningInfo("unstructured", sparsity, measured_sparsity(model, arch), dense_prunable_params=dense)
