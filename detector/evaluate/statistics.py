"""Uncertainty of the results: bootstrap confidence intervals of every model's metrics, and the paired
comparison of each model with a reference on the same images, with the video as the unit where a test set
holds several frames of one video.

A test set is a sample; an accuracy of 98.86 % against 98.79 % on it says nothing until we know how much
such numbers move from sample to sample. Two tools:

- **Percentile bootstrap** (``bootstrap_metrics``): draw the test images with replacement ``resamples``
  times, recompute accuracy, F1 (Real positive) and ROC AUC on each draw, and report the central
  ``confidence`` share of those values. Several models scored on the same images are resampled with the
  *same* draws, so the interval of a difference between two models is paired (it accounts for the images
  both get right or wrong). The report uses it for each model's own metrics, and for F1 and AUC differences.
- **McNemar's test with the interval of the accuracy difference that agrees with it**
  (``detector.evaluate.paired``): the interval excludes 0 exactly when the test rejects, so the two never
  disagree.

**The unit: a video, where frames share one.** Celeb-DF imported with ``--frames-per-video N`` > 1 puts N
frames of each video in the test set, and a detector tends to get a video's frames all right or all wrong:
they are not N independent images. Treated as such, 95 % intervals covered the truth in 52-61 % of
simulated test sets of 100 videos x 10 frames, and McNemar's test rejected a true "equally accurate" in 43 %
(tests/test_clustered_stats.py repeats that simulation). So the unit of both tools is the *cluster* that
``detector.evaluate.metrics.clusters`` assigns: the frames of one video together, every other image alone.
The bootstrap draws clusters, not images: a video drawn twice enters with all its frames twice (the cluster
bootstrap; Davison & Hinkley, "Bootstrap Methods and their Application", 1997, sec. 3.8; Field & Welsh,
J R Stat Soc B 69:369, 2007). The paired test is the cluster-adjusted McNemar test of Obuchowski (1998) and
Durkalski et al. (2003), its interval that test inverted (``detector.evaluate.paired`` gives the formulas).
With every cluster a single image, all of it is what it was before clusters: the same draws, McNemar's
score test and Tango's interval, number for number. Video-level metrics (a video's score: the mean of its
frames' probabilities) get intervals too, bootstrapped over videos (``video_intervals``).

Each draw is a vector of counts (how often each cluster was drawn), expanded to one weight per image, so
every metric is a weighted count: accuracy and F1 are matrix products, AUC is the weighted Mann-Whitney
statistic over scores sorted once.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from detector import REAL
from detector.evaluate.metrics import clusters as cluster_ids
from detector.evaluate.metrics import frame_numbers, generator_name, unit_of, units, video_scores
from detector.evaluate.paired import accuracy_difference
from detector.evaluate.sets import sources_with_own_set

METRICS = ("accuracy", "f1", "auc")


def resample_counts(n: int, resamples: int, *, seed: int = 0, chunk: int = 100) -> Iterator[np.ndarray]:
    """Bootstrap draws of ``n`` items as count vectors, ``chunk`` draws at a time: arrays (k, n) whose rows
    sum to ``n``. The same ``seed`` gives the same draws (so models can be compared on them)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        k = min(chunk, resamples - done)
        picks = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        yield np.bincount(picks.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)
        done += k


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


class _Scorer:
    """Accuracy, F1 and AUC of one model's predictions under any weighting of the images."""

    def __init__(self, labels: np.ndarray, probs_real: np.ndarray, threshold: float) -> None:
        pos = labels == REAL
        pred = probs_real >= threshold
        self.correct = (pred == pos).astype(np.float64)
        self.tp = (pos & pred).astype(np.float64)
        self.positives = pos.astype(np.float64)
        self.errors = (pos != pred).astype(np.float64)  # false positives + false negatives
        # AUC: images sorted by score once; tied scores form one group (a tie counts one half).
        order = np.argsort(probs_real, kind="stable")
        sorted_scores = probs_real[order]
        self.order = order
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        self.pos_sorted = pos[order].astype(np.float64)

    def __call__(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics per row of ``w`` (k, n): counts of each image; NaN where a metric is undefined."""
        n = w.sum(axis=1)
        tp = w @ self.tp
        ws = w[:, self.order]
        pos = np.add.reduceat(ws * self.pos_sorted, self.starts, axis=1)
        neg = np.add.reduceat(ws * (1.0 - self.pos_sorted), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each group
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        return {
            "accuracy": w @ self.correct / n,
            # undefined without a real image in the resample, as in classification_metrics
            "f1": np.where(w @ self.positives > 0, _divide(2 * tp, 2 * tp + w @ self.errors), np.nan),
            "auc": _divide(wins, pos.sum(axis=1) * neg.sum(axis=1)),
        }


def _interval(estimate: float, draws: np.ndarray, confidence: float) -> dict[str, Any]:
    if math.isnan(estimate):
        return {"estimate": None, "low": None, "high": None, "undefined_resamples": int(draws.size)}
    ok = draws[~np.isnan(draws)]
    tail = 100 * (1 - confidence) / 2
    low, high = (np.percentile(ok, [tail, 100 - tail]) if ok.size else (math.nan, math.nan))
    return {"estimate": float(estimate), "low": float(low), "high": float(high),
            "undefined_resamples": int(draws.size - ok.size)}


def bootstrap_metrics(
    labels: Sequence[int] | np.ndarray,
    probs_by_model: Mapping[str, Sequence[float] | np.ndarray],
    *,
    reference: str | None = None,
    clusters: Sequence[int] | np.ndarray | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap intervals of accuracy, F1 (Real positive) and AUC for each model scored on the
    same images (``labels``), and of each model's difference from ``reference`` on the same draws.

    ``clusters``: one id per image (``detector.evaluate.metrics.clusters``); images that share one are
    drawn together (the frames of a video). None: every image alone.

    ``{model: {"accuracy": {"estimate", "low", "high", "undefined_resamples"}, "f1": ..., "auc": ...,
    "difference": {metric: {...}}}}``; ``difference`` is ``model - reference`` (absent for the reference).
    A metric undefined on the data (AUC with one class present) has ``estimate: None``; resamples on
    which it is undefined (e.g. no image predicted Real, for F1) are left out and counted.

    >>> r = bootstrap_metrics([1, 1, 0, 0], {"m": [0.9, 0.8, 0.3, 0.6]}, resamples=200)
    >>> r["m"]["accuracy"]["estimate"], r["m"]["auc"]["estimate"]
    (0.75, 1.0)
    >>> r = bootstrap_metrics([1, 1, 0, 0], {"m": [0.9, 0.8, 0.3, 0.6]}, clusters=[0, 0, 1, 1], resamples=200)
    >>> sorted({r["m"]["accuracy"]["low"], r["m"]["accuracy"]["high"]})  # both videos, or one of them twice
    [0.5, 1.0]
    """
    y = np.asarray(labels).astype(int).ravel()
    if y.size == 0:
        raise ValueError("no samples to bootstrap")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    if reference is not None and reference not in probs_by_model:
        raise ValueError(f"reference {reference!r} is not one of the models {list(probs_by_model)}")
    ids = units(clusters, y.size)
    scorers = {}
    for name, probs in probs_by_model.items():
        p = np.asarray(probs, dtype=np.float64).ravel()
        if p.shape != y.shape:
            raise ValueError(f"{name}: {p.size} probabilities for {y.size} labels")
        scorers[name] = _Scorer(y, p, threshold)
    estimates = {name: {k: float(v[0]) for k, v in s(np.ones((1, y.size))).items()} for name, s in scorers.items()}
    draws: dict[str, dict[str, list[np.ndarray]]] = {name: {k: [] for k in METRICS} for name in scorers}
    for counts in resample_counts(int(ids.max()) + 1, resamples, seed=seed):
        w = counts[:, ids]  # each image weighs as often as its cluster was drawn
        for name, s in scorers.items():
            for k, v in s(w).items():
                draws[name][k].append(v)
    stacked = {name: {k: np.concatenate(v) for k, v in d.items()} for name, d in draws.items()}
    out: dict[str, dict[str, Any]] = {}
    for name in scorers:
        out[name] = {k: _interval(estimates[name][k], stacked[name][k], confidence) for k in METRICS}
        if reference is not None and name != reference:
            out[name]["difference"] = {
                k: _interval(estimates[name][k] - estimates[reference][k],
                             stacked[name][k] - stacked[reference][k], confidence)
                for k in METRICS
            }
    return out


def comparison_sentence(name: str, reference: str, difference: Mapping[str, Any], test: Mapping[str, Any], *,
                        confidence: float = 0.95, alpha: float = 0.05) -> str:
    """One line that states an accuracy difference with its interval and p-value, and only the conclusion
    they support. The conclusion follows the test; with Tango's interval the two always agree, and should an
    interval from elsewhere disagree, the line says so.

    >>> comparison_sentence("prune-40", "baseline", {"estimate": 0.0007, "low": -0.002, "high": 0.003},
    ...                     {"p_value": 0.61})
    'prune-40 vs baseline: accuracy difference +0.07 pp, 95 % CI [-0.20, +0.30] pp, McNemar p = 0.61: no significant difference detected'
    """
    est, low, high = (100 * difference[k] for k in ("estimate", "low", "high"))
    p = float(test["p_value"])
    significant = p < alpha
    if not significant:
        verdict = "no significant difference detected"
    elif est < 0:
        verdict = f"significantly lower accuracy than {reference}"
    else:
        verdict = f"significantly higher accuracy than {reference}"
    if significant != (low > 0 or high < 0):
        verdict += (f" (the conclusion follows the test; the interval {'includes' if significant else 'excludes'} "
                    "0, as another method than the test's may)")
    p_text = f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"
    return (f"{name} vs {reference}: accuracy difference {est:+.2f} pp, {round(100 * confidence)} % CI "
            f"[{low:+.2f}, {high:+.2f}] pp, McNemar p = {p_text}: {verdict}")


def prediction_sets(predictions: Mapping[str, Mapping[str, Sequence[Any]]]) -> dict[str, tuple[str, np.ndarray]]:
    """The data sets the report names (``detector.report.collect.test_sets``) as (split, row indices) into one
    model's ``eval/<model>.predictions.json``: combined_val, combined_test, each source's test set (unless it
    is the only one: ``sources_with_own_set``) and, where a source has several generators, ``source/generator``."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    if "val" in predictions:
        out["combined_val"] = ("val", np.arange(len(predictions["val"]["labels"])))
    test = predictions["test"]
    out["combined_test"] = ("test", np.arange(len(test["labels"])))
    sources = np.asarray([str(s) for s in test.get("source", ["all"] * len(test["labels"]))])
    generators = np.asarray([generator_name(g) for g in test.get("generator", [None] * len(sources))])
    own = sources_with_own_set(sources.tolist())
    for source in sorted(set(sources.tolist())):
        sel = sources == source
        if source in own:
            out[source] = ("test", np.flatnonzero(sel))
        gens = sorted(set(generators[sel].tolist()))
        if len(gens) > 1:
            for gen in gens:
                out[f"{source}/{gen}"] = ("test", np.flatnonzero(sel & (generators == gen)))
    return out


def alignment(reference: Mapping[str, Sequence[Any]], other: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """Row indices that put ``other``'s predictions in ``reference``'s image order, matched by sha256.

    Raises ValueError naming the reason when the two were not scored on the same images.
    """
    ref, oth = reference.get("sha256"), other.get("sha256")
    if ref is None or oth is None:
        raise ValueError("predictions carry no sha256 per image, so the images cannot be matched")
    if len(ref) != len(oth):
        raise ValueError(f"scored on {len(ref)} and {len(oth)} images")
    if list(ref) == list(oth):
        order = np.arange(len(ref))
    else:
        if len(set(ref)) != len(ref) or set(ref) != set(oth):
            raise ValueError("the two prediction files hold different images (sha256 sets differ or repeat)")
        where = {h: i for i, h in enumerate(oth)}
        order = np.asarray([where[h] for h in ref])
    if not np.array_equal(np.asarray(reference["labels"]), np.asarray(other["labels"])[order]):
        raise ValueError("the same images carry different labels in the two prediction files")
    return order


SPLITS = ("val", "test")


def compare_on_images(labels: np.ndarray, probs: Mapping[str, np.ndarray], *, reference: str | None,
                      clusters: np.ndarray | None = None, name: Mapping[str, str] | None = None,
                      alpha: float = 0.05, confidence: float = 0.95, threshold: float = 0.5,
                      **bootstrap: Any) -> dict[str, dict[str, Any]]:
    """Intervals for every model scored on the same images (``probs`` in ``labels``' order), and each
    model's tests against ``reference``: model -> ``{"intervals": ..., "vs_reference": {...}}`` (no
    ``vs_reference`` for the reference, or without one). ``clusters``: one id per image, images sharing one
    (a video's frames) resampled and tested together; both results say which ``unit`` that was and how many
    ``clusters`` (``unit_of``). ``name``: how a sentence names a model (default: its key); ``bootstrap``:
    ``resamples`` and ``seed`` of ``bootstrap_metrics``."""
    ids = units(clusters, len(labels))
    unit = unit_of(ids)
    result = bootstrap_metrics(labels, probs, reference=reference, clusters=ids, confidence=confidence,
                               threshold=threshold, **bootstrap)
    out: dict[str, dict[str, Any]] = {}
    for n in probs:
        out[n] = {"intervals": {**{k: result[n][k] for k in METRICS}, **unit}}
        if reference is None or n == reference:
            continue
        correct = {m: (probs[m] >= threshold) == (labels == REAL) for m in (reference, n)}
        test, interval = accuracy_difference(correct[reference], correct[n], clusters=ids, confidence=confidence)
        # accuracy: the interval that inverts the test; F1 and AUC: the paired bootstrap
        diff = {**result[n]["difference"], "accuracy": interval}
        names = name or {}
        out[n]["vs_reference"] = {
            **{f"{k}_difference": diff[k] for k in METRICS},
            "mcnemar": test,
            "significant": test["p_value"] < alpha,
            **unit,
            "sentence": comparison_sentence(names.get(n, n), names.get(reference, reference), diff["accuracy"],
                                            test, confidence=confidence, alpha=alpha),
        }
    return out


def video_intervals(labels: np.ndarray, probs: Mapping[str, np.ndarray], videos: np.ndarray, *,
                    reference: str | None, **bootstrap: Any) -> dict[str, dict[str, Any]]:
    """Intervals of the video-level accuracy, F1 and AUC of ``detector.evaluate.metrics.video_metrics`` (a
    video's score: the mean of its frames' probabilities) for every model scored on the same frames,
    bootstrapped over videos with the same draws for every model (so ``difference`` from ``reference`` is
    paired). ``videos``: each frame's video id. Model -> ``bootstrap_metrics``' result with ``unit``
    "video", ``clusters`` (videos) and ``images`` (frames); ``bootstrap``: its keyword arguments.

    >>> r = video_intervals(np.array([1, 1, 0, 0]), {"m": np.array([0.9, 0.5, 0.6, 0.2])}, np.array([7, 7, 8, 8]),
    ...                     reference=None, resamples=100)
    >>> r["m"]["accuracy"]["estimate"], r["m"]["clusters"], r["m"]["images"]
    (1.0, 2, 4)
    """
    scored = {n: video_scores(labels, p, videos) for n, p in probs.items()}
    video_labels, _, frames = next(iter(scored.values()))
    result = bootstrap_metrics(video_labels, {n: score for n, (_, score, _) in scored.items()}, reference=reference,
                               **bootstrap)
    return {n: {**result[n], "unit": "video", "clusters": int(frames.size), "images": int(frames.sum())}
            for n in probs}


def video_sets(block: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Per source whose samples are video frames (``frame`` >= 0), those rows of a predictions block: the
    frames ``breakdown_metrics`` scores per video."""
    n = len(block["labels"])
    video = frame_numbers(block, n) >= 0
    sources = np.asarray([str(s) for s in block.get("source", ["all"] * n)])
    return {source: np.flatnonzero(video & (sources == source)) for source in sorted(set(sources[video].tolist()))}


def _aligned(predictions: Mapping[str, Mapping[str, Any]], reference: str | None, splits: Sequence[str]
             ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Per model and split, the row order that matches the reference's images; and why a model is unpaired."""
    ref_pred = predictions.get(reference) if reference is not None else None
    aligned: dict[str, dict[str, np.ndarray]] = {}
    unpaired: dict[str, str] = {}
    if ref_pred is None:
        return aligned, unpaired
    for name, pred in predictions.items():
        try:
            missing = [s for s in splits if s in ref_pred and s not in pred]
            if missing:
                raise ValueError(f"no {', '.join(missing)} predictions")
            aligned[name] = {split: alignment(ref_pred[split], pred[split]) for split in splits if split in ref_pred}
        except ValueError as e:
            unpaired[name] = str(e)
    return aligned, unpaired


def compare_models(
    predictions: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    *,
    reference: str | None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Intervals for every model on every data set, and tests of each model against ``reference``; the
    frames of a video are resampled and tested as one unit (``detector.evaluate.metrics.clusters``).

    ``predictions``: model name -> its predictions file (``{"val": {...}, "test": {...}}``; other keys, such
    as ``robustness``, are left to ``compare_robustness``). Returns model -> ``{"intervals": {set: bootstrap
    intervals, "unit", "clusters", "images"}, "vs_reference": {set: {"accuracy_difference", "f1_difference",
    "auc_difference", "mcnemar", "significant", "unit", "clusters", "images", "sentence"}} | {"unpaired":
    reason}, "video_intervals": {source: video_intervals' result}}`` (``video_intervals`` only where a test
    source is made of video frames). Pairs are formed by sha256, never by position alone.
    """
    aligned, unpaired = _aligned(predictions, reference, SPLITS)
    out: dict[str, dict[str, Any]] = {name: {"intervals": {}} for name in predictions}
    settings = {"resamples": resamples, "confidence": confidence, "seed": seed}
    # Paired models share the reference's image order, sets and draws; the others are bootstrapped alone.
    groups = [[n for n in predictions if n in aligned]] if aligned else []
    groups += [[n] for n in predictions if n not in aligned]
    for members in groups:
        paired = members[0] in aligned
        base = predictions[reference] if paired else predictions[members[0]]
        ref = reference if paired else None

        def probs_on(split: str, idx: np.ndarray) -> dict[str, np.ndarray]:
            p = {n: np.asarray(predictions[n][split]["probs_real"], dtype=np.float64) for n in members}
            return {n: (v[aligned[n][split]] if paired else v)[idx] for n, v in p.items()}

        for set_name, (split, idx) in prediction_sets(base).items():
            labels = np.asarray(base[split]["labels"])[idx]
            result = compare_on_images(labels, probs_on(split, idx), reference=ref,
                                       clusters=cluster_ids(base[split])[idx], alpha=alpha, threshold=threshold,
                                       **settings)
            for n in members:
                out[n]["intervals"][set_name] = result[n]["intervals"]
                if "vs_reference" in result[n]:
                    out[n].setdefault("vs_reference", {})[set_name] = result[n]["vs_reference"]
        for source, idx in video_sets(base["test"]).items():
            result = video_intervals(np.asarray(base["test"]["labels"])[idx], probs_on("test", idx),
                                     cluster_ids(base["test"])[idx], reference=ref, threshold=threshold, **settings)
            for n in members:
                out[n].setdefault("video_intervals", {})[source] = result[n]
    for name, reason in unpaired.items():
        if name != reference:
            out[name]["vs_reference"] = {"unpaired": reason}
    return out


def compare_robustness(
    predictions: Mapping[str, Mapping[str, Any]],
    labels_of: Mapping[str, str],
    *,
    reference: str | None,
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """Per perturbation (the keys of each predictions file's ``robustness``), intervals for every model and
    each model's paired test against ``reference`` on the same perturbed images (matched by sha256), with
    a video's frames as one unit where the predictions carry ``group`` and ``frame``.

    ``labels_of``: perturbation -> how a sentence names it ("JPEG q50"); ``settings``: ``resamples``,
    ``confidence``, ``seed``, ``alpha``, ``threshold`` as for ``compare_models``. Returns perturbation ->
    model -> ``{"intervals", "vs_reference"}`` (``{"unpaired": reason}`` where the images differ from the
    reference's).
    """
    perturbed = {n: p["robustness"] for n, p in predictions.items() if p.get("robustness")}
    out: dict[str, dict[str, Any]] = {}
    for pert in labels_of:
        have = {n: r for n, r in perturbed.items() if pert in r}
        if not have:
            continue
        ref = reference if reference in have else None
        aligned, unpaired = _aligned(have, ref, (pert,))
        members = [n for n in have if n in aligned] if ref else []
        base = have[ref] if ref else None
        out[pert] = {}
        if base is not None:
            labels = np.asarray(base[pert]["labels"])
            probs = {n: np.asarray(have[n][pert]["probs_real"], dtype=np.float64)[aligned[n][pert]] for n in members}
            names = {n: f"{n} under {labels_of[pert]}" for n in members}
            names[ref] = f"{ref} under the same perturbation"
            out[pert] = compare_on_images(labels, probs, reference=ref, clusters=cluster_ids(base[pert]), name=names,
                                          **settings)
        for n in have:
            if n in out[pert]:
                continue
            alone = have[n][pert]
            single = compare_on_images(np.asarray(alone["labels"]), {n: np.asarray(alone["probs_real"], float)},
                                       reference=None, clusters=cluster_ids(alone), **settings)
            out[pert][n] = {**single[n], **({"vs_reference": {"unpaired": unpaired[n]}} if n in unpaired else {})}
    return out
