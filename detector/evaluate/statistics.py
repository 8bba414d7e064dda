"""Uncertainty of the results: bootstrap confidence intervals, and McNemar's test between two models with the
interval of their accuracy difference that agrees with it.

A test set is a sample; an accuracy of 98.86 % against 98.79 % on it says nothing until we know how much
such numbers move from sample to sample. Two tools:

- **Percentile bootstrap** (``bootstrap_metrics``): draw the test images with replacement ``resamples``
  times, recompute accuracy, F1 (Real positive) and ROC AUC on each draw, and report the central
  ``confidence`` share of those values. Several models scored on the same images are resampled with the
  *same* draws, so the interval of a difference between two models is paired (it accounts for the images
  both get right or wrong). The report uses it for each model's own metrics, and for F1 and AUC differences.
- **McNemar's test** (``mcnemar``) and **Tango's score interval** (``paired_difference_interval``) for the
  accuracy difference of two models on the same images. Only images on which the two disagree carry
  information about which is more accurate: b (first right, second wrong) and c (the reverse). The test is
  the score form, z = (c - b) / sqrt(b + c), without continuity correction: Fagerland, Lydersen & Laake
  (BMC Med Res Methodol 13:91, 2013) found the exact conditional and the continuity-corrected versions too
  conservative in every scenario they studied, and recommend this one where small, occasional excesses over
  the nominal level are acceptable. Tango's interval (Stat Med 17:891, 1998) is that same score test
  inverted, so the interval excludes 0 exactly when p < alpha: the interval and the conclusion never
  disagree. (A percentile bootstrap interval of the difference and an exact test can: "CI [+0.50, +4.00]
  pp" beside "p = 0.12".)

Each draw is a vector of counts (how often each image was drawn), so every metric is a weighted count:
accuracy and F1 are matrix products, AUC is the weighted Mann-Whitney statistic over scores sorted once.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from detector import REAL
from detector.evaluate.metrics import generator_name
from detector.evaluate.sets import sources_with_own_set

METRICS = ("accuracy", "f1", "auc")
MCNEMAR_METHOD = "score test (z = (c - b) / sqrt(b + c), no continuity correction)"
DIFFERENCE_METHOD = "Tango's score interval (the McNemar score test inverted)"


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
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap intervals of accuracy, F1 (Real positive) and AUC for each model scored on the
    same images (``labels``), and of each model's difference from ``reference`` on the same draws.

    ``{model: {"accuracy": {"estimate", "low", "high", "undefined_resamples"}, "f1": ..., "auc": ...,
    "difference": {metric: {...}}}}``; ``difference`` is ``model - reference`` (absent for the reference).
    A metric undefined on the data (AUC with one class present) has ``estimate: None``; resamples on
    which it is undefined (e.g. no image predicted Real, for F1) are left out and counted.

    >>> r = bootstrap_metrics([1, 1, 0, 0], {"m": [0.9, 0.8, 0.3, 0.6]}, resamples=200)
    >>> r["m"]["accuracy"]["estimate"], r["m"]["auc"]["estimate"]
    (0.75, 1.0)
    """
    y = np.asarray(labels).astype(int).ravel()
    if y.size == 0:
        raise ValueError("no samples to bootstrap")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    if reference is not None and reference not in probs_by_model:
        raise ValueError(f"reference {reference!r} is not one of the models {list(probs_by_model)}")
    scorers = {}
    for name, probs in probs_by_model.items():
        p = np.asarray(probs, dtype=np.float64).ravel()
        if p.shape != y.shape:
            raise ValueError(f"{name}: {p.size} probabilities for {y.size} labels")
        scorers[name] = _Scorer(y, p, threshold)
    estimates = {name: {k: float(v[0]) for k, v in s(np.ones((1, y.size))).items()} for name, s in scorers.items()}
    draws: dict[str, dict[str, list[np.ndarray]]] = {name: {k: [] for k in METRICS} for name in scorers}
    for w in resample_counts(y.size, resamples, seed=seed):
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


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """McNemar's test of "A and B are equally accurate" on the same images (paired), score form.

    ``b``: images A gets right and B wrong; ``c``: the reverse. ``statistic`` is z = (c - b) / sqrt(b + c)
    (its square is the chi-square statistic on 1 df, without continuity correction), p two-sided.

    >>> r = mcnemar([1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0, 1])
    >>> r["b"], r["c"], round(r["statistic"], 4), round(r["p_value"], 4)
    (6, 1, -1.8898, 0.0588)
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    bb = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != bb.shape:
        raise ValueError(f"the two models were scored on different numbers of images ({a.size}, {bb.size})")
    b, c = int(np.sum(a & ~bb)), int(np.sum(~a & bb))
    if b + c == 0:  # the same right and wrong images: nothing speaks against equal accuracy
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": MCNEMAR_METHOD}
    z = (c - b) / math.sqrt(b + c)
    return {"b": b, "c": c, "statistic": z, "p_value": math.erfc(abs(z) / math.sqrt(2)), "method": MCNEMAR_METHOD}


def _tango_statistic(delta: float, b: int, c: int, n: int) -> float:
    """Tango's score statistic for "accuracy(B) - accuracy(A) = delta": (c - b - n delta) / its standard error
    under that hypothesis, with the restricted maximum-likelihood estimate of P(A right, B wrong)."""
    big_a = 2 * n
    big_b = -b - c + (2 * n - c + b) * delta
    big_c = -b * delta * (1 - delta)
    p_b = (math.sqrt(max(big_b * big_b - 4 * big_a * big_c, 0.0)) - big_b) / (2 * big_a)
    numerator = c - b - n * delta
    variance = n * (2 * p_b + delta * (1 - delta))
    if variance <= 0:  # at the ends of (-1, 1): the sign decides
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(variance)


def paired_difference_interval(b: int, c: int, n: int, *, confidence: float = 0.95) -> dict[str, Any]:
    """Tango's score interval of accuracy(B) - accuracy(A) = (c - b) / n for two models scored on the same
    ``n`` images, ``b`` of them right for A only and ``c`` for B only (see ``mcnemar``).

    Every difference whose score statistic lies within the normal quantile; at a difference of 0 the
    statistic is McNemar's z, so the interval excludes 0 exactly when ``mcnemar``'s p < 1 - confidence.

    >>> # Cavo et al. (2012) as in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8
    >>> r = paired_difference_interval(16, 6, 161)
    >>> round(r["estimate"], 4), round(r["low"], 4), round(r["high"], 4)
    (-0.0621, -0.124, -0.0054)
    """
    if not (0 <= b and 0 <= c and b + c <= n and n > 0):
        raise ValueError(f"need 0 <= b, c and b + c <= n > 0, got b={b}, c={c}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    estimate = (c - b) / n

    def bound(inside: float, outside: float, limit: float) -> float:
        # The statistic falls as delta grows: bisect between a point inside the interval and its end.
        for _ in range(200):
            mid = (inside + outside) / 2
            if mid in (inside, outside):
                break
            if abs(_tango_statistic(mid, b, c, n)) <= limit:
                inside = mid
            else:
                outside = mid
        return inside

    low = -1.0 if estimate == -1 else bound(estimate, -1.0, z)
    high = 1.0 if estimate == 1 else bound(estimate, 1.0, z)
    return {"estimate": estimate, "low": low, "high": high, "method": DIFFERENCE_METHOD}


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
                      name: Mapping[str, str] | None = None, alpha: float = 0.05, confidence: float = 0.95,
                      threshold: float = 0.5, **bootstrap: Any) -> dict[str, dict[str, Any]]:
    """Intervals for every model scored on the same images (``probs`` in ``labels``' order), and each
    model's tests against ``reference``: model -> ``{"intervals": ..., "vs_reference": {...}}`` (no
    ``vs_reference`` for the reference, or without one). ``name``: how a sentence names a model (default:
    its key); ``bootstrap``: ``resamples`` and ``seed`` of ``bootstrap_metrics``."""
    result = bootstrap_metrics(labels, probs, reference=reference, confidence=confidence, threshold=threshold,
                               **bootstrap)
    out: dict[str, dict[str, Any]] = {}
    for n in probs:
        out[n] = {"intervals": {k: result[n][k] for k in METRICS}}
        if reference is None or n == reference:
            continue
        correct = {m: (probs[m] >= threshold) == (labels == REAL) for m in (reference, n)}
        test = mcnemar(correct[reference], correct[n])
        # accuracy: the interval that inverts the test; F1 and AUC: the paired bootstrap
        diff = {**result[n]["difference"], "accuracy": paired_difference_interval(
            test["b"], test["c"], len(labels), confidence=confidence)}
        names = name or {}
        out[n]["vs_reference"] = {
            **{f"{k}_difference": diff[k] for k in METRICS},
            "mcnemar": test,
            "significant": test["p_value"] < alpha,
            "sentence": comparison_sentence(names.get(n, n), names.get(reference, reference), diff["accuracy"],
                                            test, confidence=confidence, alpha=alpha),
        }
    return out


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
    """Intervals for every model on every data set, and tests of each model against ``reference``.

    ``predictions``: model name -> its predictions file (``{"val": {...}, "test": {...}}``; other keys, such
    as ``robustness``, are left to ``compare_robustness``). Returns model -> ``{"intervals": {set: bootstrap
    intervals}, "vs_reference": {set: {"accuracy_difference", "f1_difference", "auc_difference", "mcnemar",
    "significant", "sentence"}} | {"unpaired": reason}}``. Pairs are formed by sha256, never by position alone.
    """
    aligned, unpaired = _aligned(predictions, reference, SPLITS)
    out: dict[str, dict[str, Any]] = {name: {"intervals": {}} for name in predictions}
    # Paired models share the reference's image order, sets and draws; the others are bootstrapped alone.
    groups = [[n for n in predictions if n in aligned]] if aligned else []
    groups += [[n] for n in predictions if n not in aligned]
    for members in groups:
        paired = members[0] in aligned
        base = predictions[reference] if paired else predictions[members[0]]
        for set_name, (split, idx) in prediction_sets(base).items():
            labels = np.asarray(base[split]["labels"])[idx]
            probs = {}
            for n in members:
                p = np.asarray(predictions[n][split]["probs_real"], dtype=np.float64)
                probs[n] = (p[aligned[n][split]] if paired else p)[idx]
            result = compare_on_images(labels, probs, reference=reference if paired else None, resamples=resamples,
                                       confidence=confidence, seed=seed, alpha=alpha, threshold=threshold)
            for n in members:
                out[n]["intervals"][set_name] = result[n]["intervals"]
                if "vs_reference" in result[n]:
                    out[n].setdefault("vs_reference", {})[set_name] = result[n]["vs_reference"]
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
    each model's paired test against ``reference`` on the same perturbed images (matched by sha256).

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
            out[pert] = compare_on_images(labels, probs, reference=ref, name=names, **settings)
        for n in have:
            if n in out[pert]:
                continue
            alone = have[n][pert]
            single = compare_on_images(np.asarray(alone["labels"]), {n: np.asarray(alone["probs_real"], float)},
                                       reference=None, **settings)
            out[pert][n] = {**single[n], **({"vs_reference": {"unpaired": unpaired[n]}} if n in unpaired else {})}
    return out
