"""Classification metrics (paper Tables 3 and 5, Fig. 5), per test set, source and generator.

The positive class is Real (label 1), and every result says so (``positive_class``). A metric that is
undefined on the data is ``None`` rather than a silent 0, with its reason in ``notes`` (and AUC's in
``auc_note``): precision, recall and F1 of a class the set does not contain (on a fake-only set such as
SynthBuster, "precision (real)" would be 0 whenever one fake is called real, and undefined otherwise: a
number about the set, not the model), precision of a class never predicted, AUC on a one-class set.
Results are plain JSON-able dicts.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

from detector import FAKE, REAL

log = logging.getLogger(__name__)

CLASS_NAMES = {FAKE: "fake", REAL: "real"}


def _none_if_nan(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _undefined_reason(reals: int, predicted_real: int, metric: str) -> str:
    if reals == 0:
        return "undefined: no real images in this set"
    if metric == "precision" and predicted_real == 0:
        return "undefined: no image was predicted real"
    return "undefined on this set"


def classification_metrics(
    labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray, *, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (Real positive, per class, macro), ROC AUC and a labelled confusion matrix.

    An image is predicted Real when ``prob_real >= threshold``.

    >>> m = classification_metrics([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6])
    >>> m["accuracy"], m["confusion_matrix"]["matrix"]
    (0.5, [[1, 1], [1, 1]])
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs_real, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and probs_real ({p.size}) differ in length")
    if y.size == 0:
        raise ValueError("no samples to score")
    if not set(np.unique(y)) <= {FAKE, REAL}:
        raise ValueError(f"labels must be {FAKE} (fake) or {REAL} (real), got {sorted(set(np.unique(y)))}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs_real contains NaN or infinity")
    pred = (p >= threshold).astype(int)
    classes = [FAKE, REAL]
    # zero_division=nan: an undefined ratio stays undefined (and is left out of the macro mean).
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=classes, zero_division=np.nan, average=None
    )
    # Precision and F1 of a class with no images are undefined (its recall is): scikit-learn's count
    # formulas give 0 whenever another class is called it, so a fake-only set would read "precision (real)
    # 0 %" and "F1 (real) 0" about images that are not there. The macro mean leaves undefined ones out.
    prec, f1 = np.where(support > 0, prec, np.nan), np.where(support > 0, f1, np.nan)
    macro = [float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for v in (prec, rec, f1)]
    per_class = {
        CLASS_NAMES[c]: {
            "precision": _none_if_nan(prec[i]),
            "recall": _none_if_nan(rec[i]),
            "f1": _none_if_nan(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    notes = {k: _undefined_reason(int(support[1]), int(pred.sum()), k) for k in ("precision", "recall", "f1")
             if per_class["real"][k] is None}
    present = sorted(set(y.tolist()))
    if len(present) == 2:
        auc, auc_note = float(roc_auc_score(y, p)), None
    else:
        auc, auc_note = None, f"undefined: only one class ({CLASS_NAMES[present[0]]}) present"
    cm = confusion_matrix(y, pred, labels=classes)
    return {
        "samples": int(y.size),
        "support": {name: per_class[name]["support"] for name in ("fake", "real")},
        "positive_class": "real",
        "threshold": threshold,
        "accuracy": float(accuracy_score(y, pred)),
        "precision": per_class["real"]["precision"],
        "recall": per_class["real"]["recall"],
        "f1": per_class["real"]["f1"],
        "per_class": per_class,
        "macro": {
            "precision": _none_if_nan(macro[0]),
            "recall": _none_if_nan(macro[1]),
            "f1": _none_if_nan(macro[2]),
        },
        "notes": notes,  # why a real-class metric above is None
        "auc": auc,
        "auc_note": auc_note,
        "confusion_matrix": {
            "rows": "true",
            "columns": "predicted",
            "labels": ["fake", "real"],
            "matrix": cm.tolist(),  # [[true fake->fake, fake->real], [real->fake, real->real]]
        },
    }


def generator_name(g: Any) -> str:
    """A sample's generator as the report names it: one not recorded (real photos; 140k fakes) is
    "unspecified", whether it arrives as None, "" or, from a predictions file, "None"."""
    return "unspecified" if g in (None, "", "None") else str(g)


def breakdown_metrics(
    labels: np.ndarray,
    probs_real: np.ndarray,
    metas: Mapping[str, Sequence[Any]],
    *,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics over all samples, per ``source``, and per ``generator`` within each source.

    ``{"all": {...}, "sources": {source: {"all": {...}, "generators": {generator: {...}}}}}``;
    a sample whose generator is not recorded (real photos; 140k fakes) is grouped under ``"unspecified"``.
    """
    labels, probs_real = np.asarray(labels), np.asarray(probs_real)
    sources = np.asarray([str(s) for s in metas["source"]])
    generators = np.asarray([generator_name(g) for g in metas.get("generator", [None] * len(sources))])
    if len(sources) != len(labels):
        raise ValueError(f"metas cover {len(sources)} samples, labels {len(labels)}")
    out: dict[str, Any] = {"all": classification_metrics(labels, probs_real, threshold=threshold), "sources": {}}
    for source in sorted(set(sources.tolist())):
        sel = sources == source
        per_gen = {
            gen: classification_metrics(labels[sel & (generators == gen)], probs_real[sel & (generators == gen)],
                                        threshold=threshold)
            for gen in sorted(set(generators[sel].tolist()))
        }
        out["sources"][source] = {
            "all": classification_metrics(labels[sel], probs_real[sel], threshold=threshold),
            "generators": per_gen,
        }
    return out


def sources_with_own_set(sources: Sequence[str]) -> list[str]:
    """The sources that get a data set of their own beside the combined one, sorted: all of them, unless
    there is only one, whose test set then *is* the combined test set (shown once, as combined)."""
    unique = sorted(set(sources))
    return unique if len(unique) > 1 else []


def _expected_counts(manifest: Mapping[str, Any], split: str) -> dict[str, int]:
    """Samples per source that the manifest promises for ``split`` (``splits.<split>.<source>.{real,fake}``)."""
    by_source = manifest.get("splits", {}).get(split, {})
    counts = {}
    for source, classes in by_source.items():
        if isinstance(classes, Mapping):
            counts[source] = int(classes.get("real", 0)) + int(classes.get("fake", 0))
    return counts


def evaluate_split(
    model: Any,
    data: str,
    split: str,
    *,
    image_size: int,
    batch_size: int = 128,
    device: Any = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Score ``model`` on every source of ``split`` in the shards at ``data``.

    Returns ``{"split", "data_manifest_sha256", "metrics": breakdown_metrics(...), "predictions":
    {"labels", "probs_real", "source", "generator", "sha256"}}`` (predictions in loader order, for ROC
    curves and paired comparisons between models).
    """
    import torch

    from detector.data.loader import build_loader, manifest_sha256, read_manifest
    from detector.train import collect_predictions

    device = torch.device(device)
    manifest = read_manifest(data)
    expected = _expected_counts(manifest, split)
    if not any(expected.values()):
        raise ValueError(f"{data}: the manifest lists no {split} samples")
    loader = build_loader(data, split, batch_size=batch_size, image_size=image_size, train=False,
                          num_workers=num_workers, with_meta=True, pin_memory=device.type == "cuda",
                          normalize=False)
    labels, probs, metas = collect_predictions(model, loader, device=device, precision=precision)
    if metas is None or "source" not in metas:
        raise ValueError(f"{data}: the {split} loader returned no per-sample source (with_meta=True)")
    seen: dict[str, int] = {}
    for s in metas["source"]:
        seen[str(s)] = seen.get(str(s), 0) + 1
    for source, n in expected.items():
        if n and seen.get(source, 0) != n:
            log.warning("%s %s/%s: scored %d samples, the manifest lists %d", data, split, source,
                        seen.get(source, 0), n)
    return {
        "split": split,
        "data_manifest_sha256": manifest_sha256(data),
        "metrics": breakdown_metrics(labels, probs, metas, threshold=threshold),
        "predictions": {
            "labels": labels.tolist(),
            "probs_real": [round(float(x), 6) for x in probs],
            **{k: [str(v) for v in metas[k]] for k in ("source", "generator", "sha256") if k in metas},
        },
    }
