"""Which part each collected model (``collect``'s ``models``) plays in the report: the dense baseline that
every other model is compared with, and the pruned models.

Every section, statistic and figure asks here rather than testing a model's sparsity itself, so that when
a second dense model joins the run (an equal-budget dense control), this is the one place that tells it
from the baseline.
"""

from __future__ import annotations

from typing import Any, Sequence


def baseline(models: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline: the dense model the pruned ones start from and are tested against; None when it has
    not been evaluated.

    >>> baseline([{"name": "baseline", "sparsity": 0.0}, {"name": "prune-10", "sparsity": 0.1}])["name"]
    'baseline'
    """
    return next((m for m in models if m["sparsity"] == 0), None)


def pruned_models(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pruned models, in ``models``' order (by sparsity)."""
    return [m for m in models if m["sparsity"] > 0]
