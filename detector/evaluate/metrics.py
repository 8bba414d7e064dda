"""Classification metrics (paper Tables 3 and 5, Fig. 5, and the field's: AP, EER, a calibrated threshold,
video-level scores), per test set, source and generator.

The positive class is Real (label 1), and every result says so (``positive_class``). Errors are named by
direction ("fake predicted real"), never only as FP/FN: the paper calls a fake predicted real a *false
negative* (it takes Fake as the positive class when it names errors) while its precision and recall are
Real-positive, so a bare "FP" reads the opposite of the paper beside it. A metric that is undefined on the
data is ``None`` rather than a silent 0, with its reason in ``notes`` (and AUC's in ``auc_note``):
precision, recall and F1 of a class the set does not contain (on a fake-only set such as SynthBuster,
"precision (real)" would be 0 whenever one fake is called real, and undefined otherwise: a number about
the set, not the model), precision of a class never predicted, AUC, AP and EER on a one-class set.
Results are plain JSON-able dicts. docs/evaluation.md defines every number.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from detector import FAKE, REAL

log = logging.getLogger(__name__)

CLASS_NAMES = {FAKE: "fake", REAL: "real"}


# The names of the four confusion-matrix cells, by direction (true class, then predicted class).
CELL_NAMES = {(FAKE, FAKE): "fake predicted fake", (FAKE, REAL): "fake predicted real",
              (REAL, FAKE): "real predicted fake", (REAL, REAL): "real predicted real"}


def _none_if_nan(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _undefined_reason(support: int, predicted: int, metric: str, cls: str) -> str:
    if support == 0:
        return f"undefined: no {cls} images in this set"
    if metric == "precision" and predicted == 0:
        return f"undefined: no image was predicted {cls}"
    return "undefined on this set"


def _check(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return y, p


def error_rates(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct decision ``prob_real >= t`` on these images: (t, rate of fakes predicted real, rate of
    reals predicted fake), from the threshold above every score (all predicted fake: rates 0 and 1) down
    to 0 (all predicted real: 1 and 0). Each t is the midpoint between two neighbouring distinct scores,
    so a threshold carried to other images does not sit on one of these images' own scores.

    >>> t, fake_as_real, real_as_fake = error_rates([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.2])
    >>> t.tolist(), fake_as_real.tolist(), real_as_fake.tolist()
    ([0.95, 0.75, 0.5, 0.30000000000000004, 0.0], [0.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0, 0.0])
    """
    y, p = _check(labels, probs_real)
    reals, fakes = int((y == REAL).sum()), int((y == FAKE).sum())
    if not reals or not fakes:
        raise ValueError("error rates need real and fake images")
    u = np.unique(p)  # ascending
    above = (u[-1] + 1.0) / 2 if u[-1] < 1.0 else float(np.nextafter(u[-1], np.inf))
    t = np.r_[above, ((u[1:] + u[:-1]) / 2)[::-1], 0.0]
    real_sorted, fake_sorted = np.sort(p[y == REAL]), np.sort(p[y == FAKE])
    fake_as_real = (fakes - np.searchsorted(fake_sorted, t, side="left")) / fakes  # fakes with p >= t
    real_as_fake = np.searchsorted(real_sorted, t, side="left") / reals  # reals with p < t
    return t, fake_as_real, real_as_fake


def equal_error_rate(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray) -> float:
    """The rate at which fakes predicted real equal reals predicted fake, where the two error curves cross
    (linear interpolation between the neighbouring decisions of ``error_rates``, as on the ROC curve).

    >>> equal_error_rate([1, 1, 1, 1, 0, 0, 0, 0], [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    0.25
    """
    _, a, b = error_rates(labels, probs_real)
    d = b - a  # falls from 1 to -1 as the threshold falls
    i = int(np.argmax(d <= 0))
    if d[i] == 0 or i == 0:
        return float(a[i])
    s = d[i - 1] / (d[i - 1] - d[i])
    return float(a[i - 1] + s * (a[i] - a[i - 1]))


CALIBRATIONS = ("eer", "accuracy")


def calibrate_threshold(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray, *,
                        method: str = "eer") -> float:
    """A decision threshold chosen on these (validation) images, for use on others.

    ``eer``: where the rate of fakes predicted real is closest to the rate of reals predicted fake (ties:
    the lower total error, then the threshold nearest 0.5); ``accuracy``: the highest accuracy (ties: the
    threshold nearest 0.5). Candidates are the midpoints of ``error_rates``.

    >>> y, p = [1, 1, 0, 0, 0, 0], [0.9, 0.3, 0.4, 0.2, 0.1, 0.05]
    >>> calibrate_threshold(y, p, method="accuracy"), calibrate_threshold(y, p, method="eer")
    (0.65, 0.25)
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"threshold calibration {method!r}: choose one of {', '.join(CALIBRATIONS)}")
    y, p = _check(labels, probs_real)
    t, a, b = error_rates(y, p)
    reals, fakes = int((y == REAL).sum()), int((y == FAKE).sum())
    errors = a * fakes + b * reals
    near = np.abs(t - 0.5)
    if method == "eer":
        keys = (near, errors, np.abs(a - b))  # np.lexsort: the last key is the primary one
    else:
        keys = (near, errors)
    return float(t[np.lexsort(keys)[0]])


def average_precision(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray, *,
                      positive: int = REAL) -> float:
    """Average precision with ``positive`` as the class searched for (scikit-learn's step-wise sum over
    the ranking: no interpolation). Fake as positive ranks by 1 - prob_real."""
    from sklearn.metrics import average_precision_score

    y, p = _check(labels, probs_real)
    return float(average_precision_score(y == positive, p if positive == REAL else 1.0 - p))


def at_threshold(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray,
                 threshold: float) -> dict[str, Any]:
    """Accuracy, each class's recall and the confusion cells (by direction) at one threshold."""
    y, p = _check(labels, probs_real)
    pred = (p >= threshold).astype(int)
    cells = {name: int(np.sum((y == t) & (pred == q))) for (t, q), name in CELL_NAMES.items()}
    recall = {CLASS_NAMES[c]: (_none_if_nan(np.mean(pred[y == c] == c)) if np.any(y == c) else None)
              for c in (FAKE, REAL)}
    return {"threshold": float(threshold), "accuracy": float(np.mean(pred == y)), "recall": recall,
            "cells": cells}


def classification_metrics(
    labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray, *, threshold: float = 0.5,
    calibrated: float | None = None,
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (Real positive, per class, macro), ROC AUC, average precision (each
    class as the positive one), EER, and a confusion matrix with its cells named by direction.

    An image is predicted Real when ``prob_real >= threshold``. ``calibrated``: a threshold chosen on
    validation data (``calibrate_threshold``); the result then also holds ``at_calibrated``.

    >>> m = classification_metrics([1, 1, 0, 0], [0.9, 0.4, 0.2, 0.6])
    >>> m["accuracy"], m["confusion_matrix"]["matrix"], m["confusion_matrix"]["cells"]["fake predicted real"]
    (0.5, [[1, 1], [1, 1]], 1)
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y, p = _check(labels, probs_real)
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
    notes = {}
    for c in classes:
        name = CLASS_NAMES[c]
        for k in ("precision", "recall", "f1"):
            if per_class[name][k] is None:
                key = k if c == REAL else f"{k}_fake"
                notes[key] = _undefined_reason(per_class[name]["support"], int(np.sum(pred == c)), k, name)
    present = sorted(set(y.tolist()))
    ranking: dict[str, float | None] = {"auc": None, "ap_real": None, "ap_fake": None, "eer": None}
    if len(present) == 2:
        auc_note = None
        ranking = {"auc": float(roc_auc_score(y, p)), "ap_real": average_precision(y, p, positive=REAL),
                   "ap_fake": average_precision(y, p, positive=FAKE), "eer": equal_error_rate(y, p)}
    else:
        auc_note = f"undefined: only one class ({CLASS_NAMES[present[0]]}) present"
        notes.update({k: auc_note for k in ("ap_real", "ap_fake", "eer")})
    cm = confusion_matrix(y, pred, labels=classes)
    out = {
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
        "notes": notes,  # why a metric above is None
        **ranking,
        "auc_note": auc_note,
        "confusion_matrix": {
            "rows": "true",
            "columns": "predicted",
            "labels": ["fake", "real"],
            "matrix": cm.tolist(),  # [[true fake->fake, fake->real], [real->fake, real->real]]
            "cells": {CELL_NAMES[(t, q)]: int(cm[i][j]) for i, t in enumerate(classes) for j, q in enumerate(classes)},
        },
    }
    if calibrated is not None:
        out["at_calibrated"] = at_threshold(y, p, calibrated)
    return out


def video_metrics(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray,
                  videos: Sequence[str], *, threshold: float = 0.5, calibrated: float | None = None
                  ) -> dict[str, Any]:
    """Video-level metrics: a video's score is the mean of its frames' probabilities (DeepfakeBench's
    video-level protocol), its label its frames' label. ``frames_per_video``: how many frames each video
    contributed (min, median, max).

    >>> v = video_metrics([1, 1, 0, 0], [0.9, 0.5, 0.6, 0.2], ["a", "a", "b", "b"])
    >>> v["videos"], v["metrics"]["accuracy"], v["frames_per_video"]
    (2, 1.0, {'min': 2, 'median': 2.0, 'max': 2})
    """
    y, p = _check(labels, probs_real)
    vids = np.asarray([str(v) for v in videos])
    if vids.shape != y.shape:
        raise ValueError(f"{vids.size} video ids for {y.size} frames")
    names, index, counts = np.unique(vids, return_inverse=True, return_counts=True)
    sums = np.bincount(index, weights=p)
    positives = np.bincount(index, weights=y)
    mixed = names[(positives > 0) & (positives < counts)]
    if mixed.size:
        raise ValueError(f"video {mixed[0]} has frames labelled real and frames labelled fake")
    video_labels = (positives == counts).astype(int)
    return {"videos": int(names.size), "frames": int(y.size),
            "frames_per_video": {"min": int(counts.min()), "median": float(np.median(counts)),
                                 "max": int(counts.max())},
            "score": "mean of the video's frame probabilities",
            "metrics": classification_metrics(video_labels, sums / counts, threshold=threshold,
                                              calibrated=calibrated)}


def generator_name(g: Any) -> str:
    """A sample's generator as the report names it: one not recorded (real photos; 140k fakes) is
    "unspecified", whether it arrives as None, "" or, from a predictions file, "None"."""
    return "unspecified" if g in (None, "", "None") else str(g)


def _frames(metas: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
    """Each sample's frame index within its video (-1: not a video frame)."""
    frames = metas.get("frame")
    if frames is None:
        return np.full(n, -1)
    return np.asarray([int(f) if f not in (None, "", "None") else -1 for f in frames])


NO_REALS_NOTE = ("undefined: no real images in this source's test set, and AUC and AP rank real images "
                 "against fake ones")
SYNTHBUSTER_NO_REALS = ("SynthBuster is fake-only as the paper uses it; `detector prepare --synthbuster-raise` "
                        "adds the RAISE photos its generators were prompted from as its reals")


def breakdown_metrics(
    labels: np.ndarray,
    probs_real: np.ndarray,
    metas: Mapping[str, Sequence[Any]],
    *,
    threshold: float = 0.5,
    calibrated: float | None = None,
) -> dict[str, Any]:
    """Metrics over all samples, per ``source``, and per ``generator`` within each source.

    ``{"all": {...}, "sources": {source: {"all": {...}, "generators": {generator: {...}}, ...}}}``;
    a sample whose generator is not recorded (real photos; 140k fakes) is grouped under ``"unspecified"``.
    A source whose samples are video frames (``frame`` >= 0) also has ``"videos"`` (``video_metrics`` over
    its ``group``s, one per video). A source with real images and fakes of recorded generators has
    ``"vs_reals"``: per generator, its fakes against all of the source's reals (AUC and AP per generator,
    as the SynthBuster paper reports them); a source with fakes and no reals has ``"vs_reals_note"``.
    """
    labels, probs_real = np.asarray(labels), np.asarray(probs_real)
    sources = np.asarray([str(s) for s in metas["source"]])
    generators = np.asarray([generator_name(g) for g in metas.get("generator", [None] * len(sources))])
    if len(sources) != len(labels):
        raise ValueError(f"metas cover {len(sources)} samples, labels {len(labels)}")
    frames = _frames(metas, len(labels))
    groups = np.asarray([str(g) for g in metas.get("group", [""] * len(labels))])

    def scored(sel: np.ndarray) -> dict[str, Any]:
        return classification_metrics(labels[sel], probs_real[sel], threshold=threshold, calibrated=calibrated)

    out: dict[str, Any] = {"all": scored(np.ones(len(labels), bool)), "sources": {}}
    for source in sorted(set(sources.tolist())):
        sel = sources == source
        block: dict[str, Any] = {
            "all": scored(sel),
            "generators": {gen: scored(sel & (generators == gen)) for gen in sorted(set(generators[sel].tolist()))},
        }
        video = sel & (frames >= 0)
        if video.any():
            block["videos"] = video_metrics(labels[video], probs_real[video], groups[video], threshold=threshold,
                                            calibrated=calibrated)
        reals, fakes = sel & (labels == REAL), sel & (labels == FAKE)
        fake_gens = sorted(set(generators[fakes].tolist()) - {"unspecified"})
        if reals.any() and fake_gens:
            block["vs_reals"] = {gen: scored(reals | (fakes & (generators == gen))) for gen in fake_gens}
        elif fakes.any() and not reals.any():
            block["vs_reals_note"] = NO_REALS_NOTE + (f"; {SYNTHBUSTER_NO_REALS}" if source == "synthbuster" else "")
        out["sources"][source] = block
    return out


def sources_with_own_set(sources: Sequence[str]) -> list[str]:
    """The sources that get a data set of their own beside the combined one, sorted: all of them, unless
    there is only one, whose test set then *is* the combined test set (shown once, as combined)."""
    unique = sorted(set(sources))
    return unique if len(unique) > 1 else []


COMBINED = "combined"
PRIMARY_CHOICES = ("faces140k", "celebdf", "synthbuster", "folder", "demo", COMBINED)


def primary_source(sources: Sequence[str], configured: str = "faces140k") -> str | None:
    """The source whose test images are the primary set, or None for the whole test split: ``configured``
    when the test split has it beside other sources (the paper tests on the balanced 140k test set, not on
    everything), else the whole split (which is then ``configured``'s alone, or has no such source)."""
    return configured if configured != COMBINED and configured in sources_with_own_set(sources) else None


def primary_set(sources: Sequence[str], configured: str = "faces140k") -> str:
    """The name of the primary set among a report's data sets: a source's, or ``combined_test``."""
    return primary_source(sources, configured) or "combined_test"


def expected_counts(manifest: Mapping[str, Any], split: str) -> dict[str, int]:
    """Samples per source that the manifest promises for ``split`` (``splits.<split>.<source>.{real,fake}``)."""
    by_source = manifest.get("splits", {}).get(split, {})
    counts = {}
    for source, classes in by_source.items():
        if isinstance(classes, Mapping):
            counts[source] = int(classes.get("real", 0)) + int(classes.get("fake", 0))
    return counts


@dataclass(frozen=True)
class Scored:
    """One model's outputs on one split, in loader order."""

    split: str
    data_manifest_sha256: str
    labels: np.ndarray
    probs_real: np.ndarray
    metas: dict[str, list[str]]

    def metrics(self, *, threshold: float = 0.5, calibrated: float | None = None) -> dict[str, Any]:
        return breakdown_metrics(self.labels, self.probs_real, self.metas, threshold=threshold,
                                 calibrated=calibrated)

    def predictions(self) -> dict[str, list]:
        """What ``eval/<model>.predictions.json`` keeps per image (for ROC curves, paired tests, videos)."""
        return {
            "labels": self.labels.tolist(),
            "probs_real": [round(float(x), 6) for x in self.probs_real],
            **{k: [str(v) for v in self.metas[k]] for k in PREDICTION_KEYS if k in self.metas},
        }


PREDICTION_KEYS = ("source", "generator", "sha256", "group", "frame")


def check_counts(data: str, split: str, metas: Mapping[str, Sequence[Any]], expected: Mapping[str, int]) -> None:
    """Warn where the loader gave another number of samples per source than the manifest lists."""
    seen: dict[str, int] = {}
    for s in metas["source"]:
        seen[str(s)] = seen.get(str(s), 0) + 1
    for source, n in expected.items():
        if n and seen.get(source, 0) != n:
            log.warning("%s %s/%s: scored %d samples, the manifest lists %d", data, split, source,
                        seen.get(source, 0), n)


def score_split(
    model: Any,
    data: str,
    split: str,
    *,
    image_size: int,
    batch_size: int = 128,
    device: Any = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
) -> Scored:
    """``model``'s probability of Real for every image of ``split`` in the shards at ``data``."""
    import torch

    from detector.data.loader import ReadSpec, build_loader, manifest_sha256, read_manifest
    from detector.train import collect_predictions

    device = torch.device(device)
    manifest = read_manifest(data)
    expected = expected_counts(manifest, split)
    if not any(expected.values()):
        raise ValueError(f"{data}: the manifest lists no {split} samples")
    loader = build_loader(data, split, ReadSpec(image_size=image_size, with_meta=True), batch_size=batch_size,
                          num_workers=num_workers, pin_memory=device.type == "cuda", normalize=False)
    labels, probs, metas = collect_predictions(model, loader, device=device, precision=precision)
    if metas is None or "source" not in metas:
        raise ValueError(f"{data}: the {split} loader returned no per-sample source (with_meta=True)")
    check_counts(data, split, metas, expected)
    return Scored(split, manifest_sha256(data), labels, probs, dict(metas))


def evaluate_split(model: Any, data: str, split: str, *, threshold: float = 0.5, calibrated: float | None = None,
                   **scoring: Any) -> dict[str, Any]:
    """Score ``model`` on every source of ``split`` in the shards at ``data`` (``scoring``: ``image_size``,
    ``batch_size``, ``device``, ``num_workers``, ``precision``, as ``score_split`` takes them).

    Returns ``{"split", "data_manifest_sha256", "metrics": breakdown_metrics(...), "predictions":
    {"labels", "probs_real", "source", "generator", "sha256", "group", "frame"}}`` (predictions in loader
    order, for ROC curves, paired comparisons between models and video-level scores).
    """
    scored = score_split(model, data, split, **scoring)
    return {
        "split": split,
        "data_manifest_sha256": scored.data_manifest_sha256,
        "metrics": scored.metrics(threshold=threshold, calibrated=calibrated),
        "predictions": scored.predictions(),
    }
