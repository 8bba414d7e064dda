"""Which part each collected model (``collect``'s ``models``) plays in the report: the dense baseline every
other model starts from, the equal-budget dense control (``dense-ft``: sparsity 0 through the same search
and fine-tune as every pruned model, from the same baseline weights), and the pruned models.

Every verdict compares a pruned model with the *reference*: the control where the run has one, else the
baseline. A pruned model has had the baseline's epochs plus its own fine-tune's, so against the baseline
extra training and pruning are confounded; the control had the same extra training without pruning. The
comparison with the baseline stays as the paper's view, and wherever a sentence names the baseline beside
a pruned model it says how many epochs each had (``labelled``).

Every section, statistic and figure asks here rather than testing a model's name or sparsity itself.
"""

from __future__ import annotations

from typing import Any, Sequence

from detector.job.runfolder import BASELINE, CONTROL

# The roles, in the order the report lists models: the baseline, the control, the pruned by sparsity.
ROLES = ("baseline", "control", "pruned")


def role(model: dict[str, Any]) -> str:
    """``model["role"]`` as ``collect`` set it; for a model built by hand, from its name, a dense model of
    another name (an older run's) being the baseline.

    >>> [role(m) for m in ({"name": "baseline", "sparsity": 0.0}, {"name": "dense-ft", "sparsity": 0.0},
    ...                    {"name": "prune-10", "sparsity": 0.1})]
    ['baseline', 'control', 'pruned']
    """
    if "role" in model:
        return model["role"]
    if model["name"] == CONTROL:
        return "control"
    return "baseline" if model["name"] == BASELINE or model["sparsity"] == 0 else "pruned"


def order(model: dict[str, Any]) -> tuple[int, float]:
    """Sort key: the baseline, then the control, then the pruned models by sparsity."""
    return ROLES.index(role(model)), model["sparsity"]


def _first(models: Sequence[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    return next((m for m in models if role(m) == wanted), None)


def baseline(models: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline: the dense model the pruned ones start from; None when it has not been evaluated.

    >>> baseline([{"name": "baseline", "sparsity": 0.0}, {"name": "prune-10", "sparsity": 0.1}])["name"]
    'baseline'
    """
    return _first(models, "baseline")


def control(models: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The equal-budget dense control (``dense-ft``), or None when the run has none."""
    return _first(models, "control")


def reference(models: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What every verdict compares a pruned model with: the control if the run has one, else the baseline."""
    return control(models) or baseline(models)


def pruned_models(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pruned models, in ``models``' order (by sparsity)."""
    return [m for m in models if role(m) == "pruned"]


def comparison_key(ref: dict[str, Any] | None) -> str:
    """The key under which each model holds its tests against ``ref``: ``vs_control`` or ``vs_baseline``
    (``robustness_vs_control`` ... for the perturbed sets). Without any reference, ``vs_baseline``."""
    return "vs_control" if ref is not None and role(ref) == "control" else "vs_baseline"


def epochs_run(model: dict[str, Any], models: Sequence[dict[str, Any]]) -> str | None:
    """The epochs behind a model's weights as a sum: the baseline's own ("4"); a control's or pruned
    model's the baseline's plus its fine-tune's ("4 + 3"); None where either is not recorded."""
    own = (model.get("training") or {}).get("epochs_run")
    if role(model) == "baseline":
        return None if own is None else str(own)
    base = ((baseline(models) or {}).get("training") or {}).get("epochs_run")
    return None if own is None or base is None else f"{base} + {own}"


def labelled(model: dict[str, Any], models: Sequence[dict[str, Any]]) -> str:
    """A model's name with the epochs it had, as every sentence that sets a model beside the baseline
    names both: "prune-10 (4 + 3 epochs)", "baseline (4 epochs)".

    >>> ms = [{"name": "baseline", "sparsity": 0.0, "training": {"epochs_run": 4}},
    ...       {"name": "prune-10", "sparsity": 0.1, "training": {"epochs_run": 3}}]
    >>> labelled(ms[1], ms), labelled(ms[0], ms)
    ('prune-10 (4 + 3 epochs)', 'baseline (4 epochs)')
    """
    epochs = epochs_run(model, models)
    if not epochs:
        return f"{model['name']} (epochs not recorded)"
    return f"{model['name']} ({epochs} epoch{'' if epochs == '1' else 's'})"


def no_control_note(models: Sequence[dict[str, Any]]) -> str | None:
    """Why the verdicts are not like-for-like in a run without the control (None where it has one)."""
    base = baseline(models)
    if control(models) is not None or base is None:
        return None
    epochs = epochs_run(base, models)
    ran = f"which ran {epochs} epoch{'' if epochs == '1' else 's'}" if epochs else "whose epochs are not recorded"
    return ("This run has no equal-budget dense control (`search.control: false`, or a run from before it "
            f"existed): every pruned model is compared with the baseline, {ran}, while each pruned model ran the "
            "baseline's epochs and then its fine-tune's. The baseline trained fewer epochs, so these verdicts are "
            "not like-for-like: extra training and pruning are confounded.")


def reference_words(models: Sequence[dict[str, Any]]) -> str:
    """How a sentence names the reference: "the equal-budget control dense-ft", or the baseline with its
    epochs, "the baseline (4 epochs)"."""
    ref = reference(models)
    if ref is None:
        return "the baseline"
    return f"the equal-budget control {ref['name']}" if role(ref) == "control" else f"the {labelled(ref, models)}"


def beside_reference(model: dict[str, Any], models: Sequence[dict[str, Any]]) -> str:
    """How a sentence that sets ``model`` beside the reference names it: by name beside the control, with
    its epochs beside the baseline (where its extra epochs are part of the difference)."""
    ref = reference(models)
    return model["name"] if ref is not None and role(ref) == "control" else labelled(model, models)
