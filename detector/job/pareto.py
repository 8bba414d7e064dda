"""Accuracy against size: the Pareto front of a multi-objective search (``search.mode: pareto``).

One Optuna study (a multi-objective TPE sampler) searches the sparsity beside the training parameters; each
trial prunes the baseline to its sparsity, trains for ``search_train``'s epochs and reports its val accuracy
and its size. A trial is on the front when no other trial is at least as good in every objective and better
in one. ``search.pareto.models`` of the front's trials, spread over its sparsities, are then fine-tuned and
evaluated like a grid search's models. Selection reads validation results and sizes only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# name -> direction. Sizes are measured on the pruned model before training (they do not change with it).
PARETO_OBJECTIVES: dict[str, str] = {
    "val_accuracy": "max",  # the trial's last epoch, as in the grid search
    "val_loss": "min",
    "nonzero_params": "min",  # Conv2d/Linear weights the pruned model still uses
    "model_bytes": "min",  # its compact sparse export (detector export --format sparse)
    "latency_ms": "min",  # batch-1 forward pass on the trial's device (noisy on a shared CPU)
}
SIZE_OBJECTIVES = ("nonzero_params", "model_bytes", "latency_ms")
SPARSITY_STEP = 0.005


def directions(objectives: Sequence[str]) -> list[str]:
    return [PARETO_OBJECTIVES[o] for o in objectives]


def dominates(a: Sequence[float], b: Sequence[float], dirs: Sequence[str]) -> bool:
    """Whether objective values ``a`` dominate ``b`` (at least as good in all, better in one)."""
    better = False
    for x, y, d in zip(a, b, dirs):
        if (x < y) if d == "max" else (x > y):
            return False
        if x != y:
            better = True
    return better


def non_dominated(trials: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[Mapping[str, Any]]:
    """The trials on the Pareto front (rows with ``objectives: {name: value}``), sorted by sparsity.

    >>> rows = [{"sparsity": s, "objectives": {"val_accuracy": a, "nonzero_params": n}}
    ...         for s, a, n in [(0.1, 0.99, 90), (0.5, 0.99, 50), (0.9, 0.90, 10), (0.6, 0.95, 60)]]
    >>> [r["sparsity"] for r in non_dominated(rows, ["val_accuracy", "nonzero_params"])]
    [0.5, 0.9]
    """
    dirs = directions(objectives)
    scored = [t for t in trials if all(t.get("objectives", {}).get(o) is not None for o in objectives)]
    values = [[float(t["objectives"][o]) for o in objectives] for t in scored]
    front = [t for i, t in enumerate(scored)
             if not any(dominates(values[j], values[i], dirs) for j in range(len(scored)) if j != i)]
    return sorted(front, key=lambda t: t["sparsity"])


def pick_models(front: Sequence[Mapping[str, Any]], k: int) -> list[Mapping[str, Any]]:
    """``k`` front trials spread over its sparsities (the least and the most pruned first), one per sparsity."""
    by_sparsity: dict[float, Mapping[str, Any]] = {}
    for t in front:
        by_sparsity.setdefault(t["sparsity"], t)
    ordered = [by_sparsity[s] for s in sorted(by_sparsity)]
    if len(ordered) <= k:
        return ordered
    if k == 1:
        return [ordered[-1]]
    idx = sorted({round(i * (len(ordered) - 1) / (k - 1)) for i in range(k)})
    return [ordered[i] for i in idx]


def size_objectives(model: Any, names: Sequence[str], *, image_size: int, device: str = "cpu") -> dict[str, float]:
    """The size objectives among ``names`` of a pruned ``model``."""
    from detector.prune.unstructured import sparsity_report

    out: dict[str, float] = {}
    if "nonzero_params" in names:
        out["nonzero_params"] = float(sparsity_report(model)["nonzero_params"])
    if "model_bytes" in names:
        from detector.checkpoint import sparse_size_mb

        out["model_bytes"] = sparse_size_mb(model) * 2**20
    if "latency_ms" in names:
        from detector.evaluate.efficiency import efficiency_row

        out["latency_ms"] = efficiency_row(model, device=device, image_size=image_size, repeats=10, warmup=3,
                                           throughput_batch=1, throughput_repeats=1)["latency_ms"]
    return out
