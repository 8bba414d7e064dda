"""The search space, declared once: which training parameters each sparsity's Optuna study searches.

Every name here is a ``TrainConfig`` field, so a trial's parameters become its training config as they
are. The Ray module turns the space into Tune's domains; stages, ``detector status`` and the report take
the parameter names from ``param_names()``. Adding a parameter (weight decay, say) is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from detector.job.experiment import SearchSection


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


Domain = Union[Categorical, LogUniform]


def search_space(search: "SearchSection") -> dict[str, Domain]:
    """The paper's space (§2.3, Table 2): the optimizer and a log-uniform learning rate."""
    return {
        "optimizer": Categorical(tuple(search.optimizers)),
        "lr": LogUniform(search.lr_min, search.lr_max),
    }


def param_names() -> tuple[str, ...]:
    """The searched parameters' names, in the order the space declares them."""
    from detector.job.experiment import SearchSection

    return tuple(search_space(SearchSection()))
