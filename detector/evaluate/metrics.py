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

Arithmetic on labels and scores only: scoring a model on the shards is ``detector.evaluate.scoring``, which
data sets there are and which is primary ``detector.evaluate.sets``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from detector import FAKE, REAL

CLASS_NAMES = {FAKE: "fake", REAL: "real"}
# scikit-learn's per-class arrays, the confusion matrix and ``per_class`` all list fake first
CLASSES = tuple(CLASS_NAMES)


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


# What ``equal_error_rate`` computes, in words the report prints beside its EER column.
EER_DEFINITION = ("the rate at which the share of fakes predicted real equals the share of reals predicted fake, "
                  "interpolated where the two error curves cross: both are computed at every distinct threshold "
                  "(midway between neighbouring distinct scores), and the EER is read off the straight line between "
                  "the two neighbouring thresholds where their difference changes sign (at a threshold where they "
                  "are equal, their common value). DeepfakeBench takes the nearest point instead, the false "
                  "positive rate of the ROC point where |FNR - FPR| is smallest, which can differ from this by up to "
                  "the step between the two ROC points around the crossing")

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


RATIOS = ("precision", "recall", "f1")
RANKING = ("auc", "ap_real", "ap_fake", "eer")


def _flat_key(metric: str, cls: int) -> str:
    """A per-class ratio's name in ``notes`` and report rows: the real class's is the paper's ("precision"),
    the fake class's says so ("precision_fake")."""
    return metric if cls == REAL else f"{metric}_fake"


def _class_ratios(y: np.ndarray, pred: np.ndarray) -> tuple[dict[str, float | None], dict[str, float | None],
                                                            dict[str, int], dict[str, str]]:
    """Precision, recall and F1 of each class under their flat names (``_flat_key``), their macro means, each
    class's support, and why a ratio is undefined (None)."""
    from sklearn.metrics import precision_recall_fscore_support

    # zero_division=nan: an undefined ratio stays undefined (and is left out of the macro mean).
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(CLASSES), zero_division=np.nan, average=None
    )
    # Precision and F1 of a class with no images are undefined (its recall is): scikit-learn's count
    # formulas give 0 whenever another class is called it, so a fake-only set would read "precision (real)
    # 0 %" and "F1 (real) 0" about images that are not there. The macro mean leaves undefined ones out.
    prec, f1 = np.where(support > 0, prec, np.nan), np.where(support > 0, f1, np.nan)
    arrays = {"precision": prec, "recall": rec, "f1": f1}
    scores = {_flat_key(k, c): _none_if_nan(arrays[k][i]) for i, c in enumerate(CLASSES) for k in RATIOS}
    macro = {k: _none_if_nan(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in arrays.items()}
    notes = {_flat_key(k, c): _undefined_reason(int(support[i]), int(np.sum(pred == c)), k, CLASS_NAMES[c])
             for i, c in enumerate(CLASSES) for k in RATIOS if scores[_flat_key(k, c)] is None}
    return scores, macro, {CLASS_NAMES[c]: int(support[i]) for i, c in enumerate(CLASSES)}, notes


def _ranking(y: np.ndarray, p: np.ndarray) -> tuple[dict[str, float | None], str | None]:
    """ROC AUC, average precision (each class as the positive one) and EER, or, on a one-class set, Nones
    and the reason."""
    from sklearn.metrics import roc_auc_score

    present = sorted(set(y.tolist()))
    if len(present) != 2:
        return dict.fromkeys(RANKING), f"undefined: only one class ({CLASS_NAMES[present[0]]}) present"
    return {"auc": float(roc_auc_score(y, p)), "ap_real": average_precision(y, p, positive=REAL),
            "ap_fake": average_precision(y, p, positive=FAKE), "eer": equal_error_rate(y, p)}, None


def _confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(CLASSES))
    return {
        "rows": "true",
        "columns": "predicted",
        "labels": ["fake", "real"],
        "matrix": cm.tolist(),  # [[true fake->fake, fake->real], [real->fake, real->real]]
        "cells": {CELL_NAMES[(t, q)]: int(cm[i][j]) for i, t in enumerate(CLASSES) for j, q in enumerate(CLASSES)},
    }


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
    from sklearn.metrics import accuracy_score

    y, p = _check(labels, probs_real)
    pred = (p >= threshold).astype(int)
    scores, macro, support, notes = _class_ratios(y, pred)
    ranking, auc_note = _ranking(y, p)
    if auc_note is not None:
        notes.update({k: auc_note for k in ("ap_real", "ap_fake", "eer")})
    out = {
        "samples": int(y.size),
        "support": support,
        "positive_class": "real",
        "threshold": threshold,
        "accuracy": float(accuracy_score(y, pred)),
        **{k: scores[k] for k in RATIOS},  # the real class's: the paper's precision, recall and F1
        "per_class": {name: {**{k: scores[_flat_key(k, c)] for k in RATIOS}, "support": support[name]}
                      for c, name in CLASS_NAMES.items()},
        "macro": macro,
        "notes": notes,  # why a metric above is None
        **ranking,
        "auc_note": auc_note,
        "confusion_matrix": _confusion(y, pred),
    }
    if calibrated is not None:
        out["at_calibrated"] = at_threshold(y, p, calibrated)
    return out


def video_scores(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray,
                 videos: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per video (sorted by id): its label, its score (the mean of its frames' probabilities of real)
    and its number of frames. Raises ValueError where a video's frames carry both labels.

    >>> video_scores([1, 1, 0], [0.9, 0.5, 0.2], ["a", "a", "b"])
    (array([1, 0]), array([0.7, 0.2]), array([2, 1]))
    """
    y, p = _check(labels, probs_real)
    vids = np.asarray([str(v) for v in videos])
    if vids.shape != y.shape:
        raise ValueError(f"{vids.size} video ids for {y.size} frames")
    names, index, counts = np.unique(vids, return_inverse=True, return_counts=True)
    positives = np.bincount(index, weights=y)
    mixed = names[(positives > 0) & (positives < counts)]
    if mixed.size:
        raise ValueError(f"video {mixed[0]} has frames labelled real and frames labelled fake")
    return (positives == counts).astype(int), np.bincount(index, weights=p) / counts, counts


def video_metrics(labels: Sequence[int] | np.ndarray, probs_real: Sequence[float] | np.ndarray,
                  videos: Sequence[Any] | np.ndarray, *, threshold: float = 0.5, calibrated: float | None = None
                  ) -> dict[str, Any]:
    """Video-level metrics: a video's score is the mean of its frames' probabilities (DeepfakeBench's
    video-level protocol), its label its frames' label (``video_scores``). ``frames_per_video``: how many
    frames each video contributed (min, median, max).

    >>> v = video_metrics([1, 1, 0, 0], [0.9, 0.5, 0.6, 0.2], ["a", "a", "b", "b"])
    >>> v["videos"], v["metrics"]["accuracy"], v["frames_per_video"]
    (2, 1.0, {'min': 2, 'median': 2.0, 'max': 2})
    """
    video_labels, scores, counts = video_scores(labels, probs_real, videos)
    return {"videos": int(counts.size), "frames": int(counts.sum()),
            "frames_per_video": {"min": int(counts.min()), "median": float(np.median(counts)),
                                 "max": int(counts.max())},
            "score": "mean of the video's frame probabilities",
            "metrics": classification_metrics(video_labels, scores, threshold=threshold, calibrated=calibrated)}


class Videos(NamedTuple):
    """A source's test videos, one entry per video, sorted by id (the order of ``video_scores``)."""

    ids: np.ndarray  # the video's id (its frames' ``group``)
    labels: np.ndarray  # its frames' label
    scores: np.ndarray  # the mean of its frames' probabilities of real
    frames: np.ndarray  # how many frames it contributed


def prediction_videos(block: Mapping[str, Sequence[Any]], source: str) -> Videos | None:
    """The videos of ``source`` in a block of ``eval/<model>.predictions.json`` (``test``: per image its
    ``labels``, ``probs_real``, ``source``, ``group`` and ``frame``), scored as ``video_metrics`` scores
    them; None where that source has no video frames. Two models' videos pair by ``ids``.

    >>> v = prediction_videos({"labels": [1, 1, 0, 1], "probs_real": [0.9, 0.5, 0.2, 0.8],
    ...                        "source": ["celebdf"] * 3 + ["faces"], "group": ["b", "b", "a", ""],
    ...                        "frame": [0, 1, 0, -1]}, "celebdf")
    >>> v.ids.tolist(), v.labels.tolist(), v.scores.tolist(), v.frames.tolist()
    (['a', 'b'], [0, 1], [0.2, 0.7], [1, 2])
    """
    n = len(block["labels"])
    sources = np.asarray([str(s) for s in block.get("source", ["all"] * n)])
    keep = (sources == source) & (frame_numbers(block, n) >= 0)
    if not keep.any():
        return None
    groups = np.asarray([str(g) for g in block.get("group", [""] * n)])[keep]
    labels, scores, frames = video_scores(np.asarray(block["labels"])[keep],
                                          np.asarray(block["probs_real"], dtype=np.float64)[keep], groups)
    return Videos(np.unique(groups), labels, scores, frames)


def generator_name(g: Any) -> str:
    """A sample's generator as the report names it: one not recorded (real photos; 140k fakes) is
    "unspecified", whether it arrives as None, "" or, from a predictions file, "None"."""
    return "unspecified" if g in (None, "", "None") else str(g)


def frame_numbers(metas: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
    """Each sample's frame index within its video (-1: not a video frame)."""
    frames = metas.get("frame")
    if frames is None:
        return np.full(n, -1)
    return np.asarray([int(f) if f not in (None, "", "None") else -1 for f in frames])


def clusters(block: Mapping[str, Sequence[Any]], n: int | None = None) -> np.ndarray:
    """The statistical unit of each sample, as an integer id: the frames of one video (``frame`` >= 0, the
    same ``source`` and ``group``) share one; any other image is a unit of its own. Ids are numbered in
    order of first appearance, so a block without video frames gets ``0, 1, ..., n - 1``.

    ``block``: a predictions block or the metadata of ``breakdown_metrics``; ``n``: its number of samples
    (default: ``len(block["labels"])``).

    >>> clusters({"labels": [1, 1, 0, 1], "frame": [0, -1, 1, 0], "group": ["v", "p", "v", "w"]}).tolist()
    [0, 1, 0, 2]
    """
    n = len(block["labels"]) if n is None else n
    frames = frame_numbers(block, n)
    video = frames >= 0
    if not video.any():
        return np.arange(n)
    if "group" not in block:
        raise ValueError("samples are marked as video frames (frame >= 0) but carry no group, so their videos "
                         "are unknown: score them again with a loader that returns the group metadata")
    sources, groups = block.get("source", [""] * n), block["group"]
    return renumber([f"{s}/{g}" if v else f"image {i}" for i, (s, g, v) in enumerate(zip(sources, groups, video))])


def renumber(keys: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Integer ids 0, 1, ... for ``keys``, equal keys sharing one, numbered in order of first appearance.

    >>> renumber(["b", "a", "b", "c"]).tolist()
    [0, 1, 0, 2]
    """
    _, first, index = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[index.ravel()]


def units(clusters: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """``clusters`` (one id per sample, e.g. from ``clusters``) renumbered 0, 1, ... in order of first
    appearance; None: each of the ``n`` samples a unit of its own."""
    if clusters is None:
        return np.arange(n)
    ids = np.asarray(clusters).ravel()
    if ids.size != n:
        raise ValueError(f"{ids.size} cluster ids for {n} images")
    return renumber(ids)


def unit_of(ids: np.ndarray) -> dict[str, Any]:
    """What a set's statistics resampled and tested: ``unit`` "image" (every cluster one image) or "video"
    (frames grouped by video, other images alone), ``clusters`` (how many) and ``images``."""
    k = int(ids.max()) + 1 if ids.size else 0
    return {"unit": "image" if k == ids.size else "video", "clusters": k, "images": int(ids.size)}


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
    frames = frame_numbers(metas, len(labels))
    units = clusters(metas, len(labels))

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
            block["videos"] = video_metrics(labels[video], probs_real[video], units[video], threshold=threshold,
                                            calibrated=calibrated)
        reals, fakes = sel & (labels == REAL), sel & (labels == FAKE)
        fake_gens = sorted(set(generators[fakes].tolist()) - {"unspecified"})
        if reals.any() and fake_gens:
            block["vs_reals"] = {gen: scored(reals | (fakes & (generators == gen))) for gen in fake_gens}
        elif fakes.any() and not reals.any():
            block["vs_reals_note"] = NO_REALS_NOTE + (f"; {SYNTHBUSTER_NO_REALS}" if source == "synthbuster" else "")
        out["sources"][source] = block
    return out
