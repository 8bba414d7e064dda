"""The paired comparison of two models' accuracy on the same images: McNemar's test, and the interval of
the accuracy difference that agrees with it; per image, or per video where frames share one.

Only images on which the two models disagree carry information about which is more accurate: b (first
right, second wrong) and c (the reverse).

- **Every image its own unit** (``mcnemar``, ``paired_difference_interval``): the score form of McNemar's
  test, z = (c - b) / sqrt(b + c), without continuity correction: Fagerland, Lydersen & Laake (BMC Med Res
  Methodol 13:91, 2013) found the exact conditional and the continuity-corrected versions too conservative
  in every scenario they studied, and recommend this one where small, occasional excesses over the nominal
  level are acceptable. Tango's interval (Stat Med 17:891, 1998) is that same score test inverted, so the
  interval excludes 0 exactly when p < alpha: the interval and the conclusion never disagree. (A percentile
  bootstrap interval of the difference and an exact test can: "CI [+0.50, +4.00] pp" beside "p = 0.12".)
- **Frames grouped by video** (``clusters`` given, ``clustered_difference_interval``): a detector tends to
  get a video's frames all right or all wrong, so its frames are not independent pairs. Per cluster k (a
  video; any other image alone), d_k = c_k - b_k and n_k images: z = sum(d_k) / sqrt(sum(d_k^2)). That is
  Obuchowski's statistic for clustered matched pairs (Stat Med 17:1495, 1998; in the form Yang, Sun & Hardin
  reduce it to, Biom J 52:301, 2010) without its small-sample factor (K - 1) / K, and Durkalski et al.'s
  (Stat Med 22:2417, 2003) where all videos have the same number of frames. With every cluster a single
  image, sum(d_k^2) = b + c: McNemar's score test, number for number. Its interval inverts it as Tango's
  does McNemar's: every delta for which z(delta) = sum(d_k - n_k delta) / sqrt(sum((d_k - n_k delta)^2))
  lies within the normal quantile; z(0) is the test's statistic, so again the interval excludes 0 exactly
  when the test rejects.

``accuracy_difference`` applies that rule: the first where every cluster is one image (so results on sets
without video frames are those of McNemar and Tango), the second otherwise.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from detector.evaluate.metrics import unit_of, units

MCNEMAR_METHOD = "score test (z = (c - b) / sqrt(b + c), no continuity correction)"
DIFFERENCE_METHOD = "Tango's score interval (the McNemar score test inverted)"
CLUSTERED_MCNEMAR_METHOD = ("cluster-adjusted score test, frames grouped by video (z = sum(c_k - b_k) / "
                            "sqrt(sum((c_k - b_k)^2)) over videos k; Obuchowski 1998, Durkalski et al. 2003)")
CLUSTERED_DIFFERENCE_METHOD = "the cluster-adjusted score test inverted (frames grouped by video)"


def _correct_pair(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different numbers of images ({a.size}, {b.size})")
    return a, b


def _per_cluster(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster k: d_k = c_k - b_k (images right for B only, minus those right for A only), and n_k."""
    k = int(ids.max()) + 1
    d = np.bincount(ids, weights=(~a & b).astype(float) - (a & ~b), minlength=k)
    return d, np.bincount(ids, minlength=k).astype(float)


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, *,
            clusters: Sequence[int] | np.ndarray | None = None) -> dict[str, Any]:
    """McNemar's test of "A and B are equally accurate" on the same images (paired), score form.

    ``b``: images A gets right and B wrong; ``c``: the reverse. ``statistic`` is z = (c - b) / sqrt(b + c)
    (its square is the chi-square statistic on 1 df, without continuity correction), p two-sided.
    ``clusters`` (one id per image, as for ``bootstrap_metrics``): where images share one (the frames of a
    video), z = sum(c_k - b_k) / sqrt(sum((c_k - b_k)^2)) over the clusters k, the cluster-adjusted test of
    the module docstring. ``unit``, ``clusters``, ``images``: what was tested (``unit_of``).

    >>> r = mcnemar([1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0, 1])
    >>> r["b"], r["c"], round(r["statistic"], 4), round(r["p_value"], 4), r["unit"]
    (6, 1, -1.8898, 0.0588, 'image')
    >>> # the same images as frames of two videos: A's 5 wins in the first count as one video's
    >>> r = mcnemar([1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0, 1], clusters=[0, 0, 0, 0, 0, 0, 1, 1])
    >>> r["b"], r["c"], round(r["statistic"], 4), r["unit"], r["clusters"]
    (6, 1, -1.0, 'video', 2)
    """
    a, bb = _correct_pair(correct_a, correct_b)
    ids = units(clusters, a.size)
    unit = unit_of(ids)
    b, c = int(np.sum(a & ~bb)), int(np.sum(~a & bb))
    if unit["unit"] == "image":
        variance, method = b + c, MCNEMAR_METHOD
    else:
        d, _ = _per_cluster(a, bb, ids)
        variance, method = float(d @ d), CLUSTERED_MCNEMAR_METHOD
    # 0: the same right and wrong images (or, per video, as many won as lost): nothing speaks against equal
    # accuracy
    if variance == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "method": method, **unit}
    z = (c - b) / math.sqrt(variance)
    return {"b": b, "c": c, "statistic": z, "p_value": math.erfc(abs(z) / math.sqrt(2)), "method": method, **unit}


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


def clustered_difference_interval(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray,
                                  clusters: Sequence[int] | np.ndarray, *, confidence: float = 0.95
                                  ) -> dict[str, Any]:
    """The interval of accuracy(B) - accuracy(A) that inverts ``mcnemar``'s cluster-adjusted test: every
    delta with z(delta)^2 = (sum(d_k - n_k delta))^2 / sum((d_k - n_k delta)^2) <= q^2 (d_k = c_k - b_k and
    n_k images in cluster k, q the normal quantile). That is a quadratic inequality in delta, so the bounds
    are its roots, clipped to [-1, 1]; z(0) is the test's statistic, so the interval excludes 0 exactly when
    the test's p < 1 - confidence.

    With so few clusters that (sum n_k)^2 <= q^2 sum(n_k^2) (fewer than about four equal videos) the set of
    such deltas is unbounded: then [-1, 1], or, where the test rejects, the side of 0 the estimate is on.
    Where every cluster's d_k is 0 (no discordant image, or as many won as lost in each video) the test has
    nothing to measure its variance by (p = 1): the interval is then Tango's for 0 discordant of as many
    independent units as there are clusters.

    >>> # two videos of 6 and 2 frames: A alone is right on 5 frames of the first; on the second each on one
    >>> r = clustered_difference_interval([1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0, 1], [0] * 6 + [1] * 2)
    >>> r["estimate"], (r["low"], r["high"])
    (-0.625, (-1.0, 1.0))
    """
    a, bb = _correct_pair(correct_a, correct_b)
    d, sizes = _per_cluster(a, bb, units(clusters, a.size))
    big_d, big_n, estimate = float(d.sum()), float(sizes.sum()), float(d.sum() / sizes.sum())
    if not d.any():
        return {**paired_difference_interval(0, 0, d.size, confidence=confidence),
                "method": CLUSTERED_DIFFERENCE_METHOD}
    q2 = NormalDist().inv_cdf(1 - (1 - confidence) / 2) ** 2
    # z(delta)^2 <= q^2  <=>  a2 delta^2 - 2 a1 delta + a0 <= 0
    a2 = big_n**2 - q2 * float(sizes @ sizes)
    a1 = big_n * big_d - q2 * float(sizes @ d)
    a0 = big_d**2 - q2 * float(d @ d)
    root = math.sqrt(max(a1 * a1 - a2 * a0, 0.0))
    if a2 > 0:
        low, high = (a1 - root) / a2, (a1 + root) / a2
    elif a0 <= 0:  # unbounded, and 0 inside
        low, high = -1.0, 1.0
    else:  # the test rejects: the bound between 0 and the estimate, the set runs on to the end beyond it
        roots = [a0 / (2 * a1)] if a2 == 0 else [(a1 - root) / a2, (a1 + root) / a2]
        bound = min(roots, key=lambda r: max(min(0.0, estimate) - r, r - max(0.0, estimate), 0.0))
        low, high = (bound, 1.0) if estimate > 0 else (-1.0, bound)
    return {"estimate": estimate, "low": max(-1.0, min(low, estimate)), "high": min(1.0, max(high, estimate)),
            "method": CLUSTERED_DIFFERENCE_METHOD}


def accuracy_difference(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, *,
                        clusters: Sequence[int] | np.ndarray | None = None, confidence: float = 0.95
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paired test of A against B and the interval of accuracy(B) - accuracy(A) that agrees with it:
    McNemar's score test and Tango's interval where every cluster is one image, the cluster-adjusted test
    and its inversion otherwise (module docstring). Returns (``mcnemar``'s result, the interval).

    >>> test, iv = accuracy_difference([1, 1, 1, 0], [1, 1, 0, 1])
    >>> test["method"] == MCNEMAR_METHOD, iv["method"] == DIFFERENCE_METHOD, iv["estimate"]
    (True, True, 0.0)
    """
    test = mcnemar(correct_a, correct_b, clusters=clusters)
    if test["unit"] == "image":
        return test, paired_difference_interval(test["b"], test["c"], test["images"], confidence=confidence)
    return test, clustered_difference_interval(correct_a, correct_b, clusters, confidence=confidence)
