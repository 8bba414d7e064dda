"""Which data sets a run's test split gives, and which of them is primary (``evaluate.primary_set``).

Policy, not arithmetic: the evaluate stage asks it which source to perturb, ``detector evaluate`` the same,
and the report which set Fig 5, Table 5 and the conclusions are on. The source names are
``detector.data.sources.SOURCE_NAMES``'s; this module adds only ``combined`` (the whole test split).
"""

from __future__ import annotations

from typing import Sequence

from detector.data.sources import SOURCE_NAMES


def sources_with_own_set(sources: Sequence[str]) -> list[str]:
    """The sources that get a data set of their own beside the combined one, sorted: all of them, unless
    there is only one, whose test set then *is* the combined test set (shown once, as combined)."""
    unique = sorted(set(sources))
    return unique if len(unique) > 1 else []


COMBINED = "combined"
PRIMARY_CHOICES = (*SOURCE_NAMES, COMBINED)


def primary_source(sources: Sequence[str], configured: str = "faces140k") -> str | None:
    """The source whose test images are the primary set, or None for the whole test split: ``configured``
    when the test split has it beside other sources (the paper tests on the balanced 140k test set, not on
    everything), else the whole split (which is then ``configured``'s alone, or has no such source)."""
    return configured if configured != COMBINED and configured in sources_with_own_set(sources) else None


def primary_set(sources: Sequence[str], configured: str = "faces140k") -> str:
    """The name of the primary set among a report's data sets: a source's, or ``combined_test``."""
    return primary_source(sources, configured) or "combined_test"
