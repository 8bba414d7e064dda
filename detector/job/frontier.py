"""How far can it be pruned? The search for the sparsity frontier, on validation data only.

The frontier is the largest sparsity whose fine-tuned model is **non-inferior** to the reference on the
validation set: its val accuracy is at least the reference's minus a margin δ (``search.frontier.margin``).
The reference is the dense control (``dense-ft``, ``search.control``: sparsity 0 through the same search and
fine-tune as every probe, searched and fine-tuned in round 1 beside the first probes), or the baseline in a
run without one: judged against the baseline, a probe would be credited with its extra training. Both are the
best epoch's val accuracy, the value each model is saved at. The search runs in rounds; each round's probes
are sparsities, and each probe is what a sparsity of the grid search is: its own Optuna search
(``search.trials_per_sparsity`` trials, concurrent Tune trials) and a fine-tune with the best parameters.

- Round 1 probes the coarse grid ``search.sparsities`` (e.g. 0.5, 0.7, 0.8, 0.9, 0.95).
- Then: ``lo`` = the largest non-inferior probe below ``hi``, the smallest inferior probe (0, the dense
  model itself, when no probe below ``hi`` is non-inferior). The next round probes ``search.frontier.parallel``
  points evenly inside (lo, hi) (one: bisection).
- It stops when ``hi - lo <= search.frontier.resolution``, or when no probe is inferior (the frontier is then
  at least the largest probe: the grid did not reach it, and the answer says so).

The rule reads nothing but validation accuracies: this module is given no test data, and the evaluate
stage, which reads test data, runs after the frontier is written (``search/frontier.json``). Pure functions
and plain data: ``detector.job.pipeline`` runs the rounds and records every probe here, so a resumed run
repeats no finished probe.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence

from detector.config import AtLeastOne, Items, Range, check_fields
from detector.io import atomic_write_json


_Fraction = Annotated[float, Range(0, 1, low_open=True, high_open=True)]


@dataclass(frozen=True)
class FrontierRule:
    # the first round's probes: sparsities
    grid: Annotated[tuple[_Fraction, ...], Items(at_least=1)]
    margin: Annotated[float, Range(0, 1, high_open=True)]  # non-inferior: val accuracy >= the reference's - margin
    resolution: _Fraction  # stop when the bracket (last non-inferior, first inferior) is this narrow
    parallel: AtLeastOne = 1  # probes per refinement round

    def __post_init__(self) -> None:
        check_fields(self, where="frontier")

    def non_inferior(self, val_accuracy: float, reference: float) -> bool:
        return val_accuracy >= reference - self.margin - 1e-12


def bracket(outcomes: Mapping[float, bool]) -> tuple[float, float | None]:
    """(lo, hi): hi is the smallest inferior sparsity probed (None: none was), lo the largest non-inferior one
    below hi (0.0, the dense model, when there is none)."""
    inferior = sorted(s for s, ok in outcomes.items() if not ok)
    hi = inferior[0] if inferior else None
    good = [s for s, ok in outcomes.items() if ok and (hi is None or s < hi)]
    return (max(good) if good else 0.0), hi


def next_probes(rule: FrontierRule, outcomes: Mapping[float, bool]) -> list[float]:
    """The next round's probes given every probe's outcome so far (sparsity -> non-inferior); [] when done.

    >>> rule = FrontierRule(grid=(0.5, 0.7, 0.9), margin=0.005, resolution=0.05)
    >>> next_probes(rule, {})
    [0.5, 0.7, 0.9]
    >>> next_probes(rule, {0.5: True, 0.7: True, 0.9: False})
    [0.8]
    >>> next_probes(rule, {0.5: True, 0.7: True, 0.9: False, 0.8: True, 0.85: False})
    []
    """
    if not outcomes:
        return sorted(rule.grid)
    lo, hi = bracket(outcomes)
    if hi is None or hi - lo <= rule.resolution + 1e-9:
        return []
    step = (hi - lo) / (rule.parallel + 1)
    probes = [round(lo + k * step, 6) for k in range(1, rule.parallel + 1)]
    return [p for p in probes if p not in outcomes]


def answer(rule: FrontierRule, outcomes: Mapping[float, bool]) -> dict[str, Any]:
    """What the search found: the frontier sparsity, the first inferior one, and whether the rule's
    resolution was reached (or the grid never found an inferior sparsity)."""
    lo, hi = bracket(outcomes)
    return {
        "sparsity": lo if lo > 0 else None,
        "first_inferior": hi,
        "bracket_width": None if hi is None else hi - lo,
        "stopped_because": ("no probe was inferior: the frontier is at or above the largest probe"
                            if hi is None else
                            f"the bracket [{lo:g}, {hi:g}] is within the resolution {rule.resolution:g}"),
        "resolution_reached": hi is not None and hi - lo <= rule.resolution + 1e-9,
    }


@dataclass
class FrontierRecord:
    """``search/frontier.json``: the rule, the baseline's val accuracy, the reference the probes are judged
    against, and every round's probes."""

    path: Path
    rule: FrontierRule
    baseline_val_accuracy: float
    rounds: list[dict[str, Any]]
    # {"model": name, "val_accuracy": x}: the model every probe is judged against (``judge_against``)
    reference: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: Path, rule: FrontierRule, baseline_val_accuracy: float) -> "FrontierRecord":
        """The record of an earlier (stopped) frontier search in the same run, or a new one."""
        if path.exists():
            data = json.loads(path.read_text())
            saved = data.get("rule", {})
            if (tuple(saved.get("grid", ())), saved.get("margin"), saved.get("resolution"), saved.get("parallel")) != (
                    rule.grid, rule.margin, rule.resolution, rule.parallel):
                raise ValueError(f"{path}: was searched with another rule {saved}; use a new --out folder")
            # a record written before the reference was recorded judged every probe against the baseline
            old = {"model": "baseline", "val_accuracy": data["baseline_val_accuracy"]} if data["rounds"] else None
            return cls(path, rule, float(data["baseline_val_accuracy"]), list(data["rounds"]),
                       data.get("reference", old))
        return cls(path, rule, baseline_val_accuracy, [])

    def judge_against(self, model: str, val_accuracy: float) -> None:
        """Judge every probe against ``model``'s ``val_accuracy`` (best epoch), once: a search resumed later
        keeps the reference it started with."""
        if self.reference is None:
            self.reference = {"model": model, "val_accuracy": val_accuracy}
            self.save()
        elif self.reference["model"] != model:
            raise ValueError(f"{self.path}: the probes were judged against {self.reference['model']}, not {model}; "
                             "use a new --out folder")

    @property
    def outcomes(self) -> dict[float, bool]:
        return {p["sparsity"]: p["non_inferior"] for r in self.rounds for p in r["probes"]
                if p.get("non_inferior") is not None}

    @property
    def probes(self) -> list[float]:
        return sorted(p["sparsity"] for r in self.rounds for p in r["probes"])

    def open_round(self) -> list[float]:
        """The probes of the round that is under way (recorded but not all decided), or the next round's."""
        if self.rounds and any(p.get("non_inferior") is None for p in self.rounds[-1]["probes"]):
            return [p["sparsity"] for p in self.rounds[-1]["probes"]]
        probes = next_probes(self.rule, self.outcomes)
        if probes:
            self.rounds.append({"round": len(self.rounds) + 1, "probes": [{"sparsity": s} for s in probes]})
            self.save()
        return probes

    def decide(self, sparsity: float, val_accuracy: float) -> bool:
        if self.reference is None:
            raise ValueError(f"{self.path}: no reference to judge probe {sparsity:g} against (judge_against first)")
        reference = float(self.reference["val_accuracy"])
        ok = self.rule.non_inferior(val_accuracy, reference)
        for p in self.rounds[-1]["probes"]:
            if math.isclose(p["sparsity"], sparsity):
                p.update(val_accuracy=val_accuracy, difference=val_accuracy - reference, non_inferior=ok)
        self.save()
        return ok

    def to_dict(self) -> dict[str, Any]:
        done = bool(self.rounds) and not next_probes(self.rule, self.outcomes) and all(
            p.get("non_inferior") is not None for r in self.rounds for p in r["probes"])
        return {
            "rule": {"grid": list(self.rule.grid), "margin": self.rule.margin, "resolution": self.rule.resolution,
                     "parallel": self.rule.parallel, "metric": "val_accuracy (best epoch) of the fine-tuned model",
                     "non_inferior": "val_accuracy >= the reference's val_accuracy - margin"},
            "baseline_val_accuracy": self.baseline_val_accuracy,
            # the model the probes were judged against (dense-ft: the dense control; or the baseline), and the
            # val accuracy every probe's difference is from
            "reference": self.reference,
            "rounds": self.rounds,
            "complete": done,
            "answer": answer(self.rule, self.outcomes) if done else None,
        }

    def save(self) -> None:
        atomic_write_json(self.path, self.to_dict())


def frontier_models(path: Path) -> Sequence[float]:
    """The sparsities a finished frontier search probed (every one has a fine-tuned model to evaluate)."""
    data = json.loads(path.read_text())
    return sorted(p["sparsity"] for r in data["rounds"] for p in r["probes"])
