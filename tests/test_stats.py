"""Bootstrap intervals and McNemar's test against examples worked by hand."""

import math

import numpy as np
import pytest

from detector.evaluate.metrics import classification_metrics
from detector.evaluate.statistics import alignment, bootstrap_metrics, comparison_sentence, compare_models, mcnemar


def test_bootstrap_interval_of_three_right_out_of_four():
    # Resampled accuracy is Binomial(4, 3/4) / 4: P(0) = 1/256, P(1/4) = 12/256, P(1/2) = 54/256,
    # P(3/4) = 108/256, P(1) = 81/256. The 2.5 % quantile falls in the mass at 1/4 (cumulative 13/256 = 5.1 %),
    # the 97.5 % quantile in the mass at 1 (cumulative up to 3/4 is 175/256 = 68 %).
    r = bootstrap_metrics([1, 1, 0, 0], {"m": [0.9, 0.8, 0.1, 0.7]}, resamples=20_000, seed=1)["m"]["accuracy"]
    assert (r["estimate"], r["low"], r["high"]) == (0.75, 0.25, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation_on_a_large_set():
    # 900 of 1000 right: standard error sqrt(0.9 * 0.1 / 1000) = 0.00949, so the 95 % interval is 0.9 +- 0.0186.
    labels = np.ones(1000, dtype=int)
    probs = np.r_[np.full(900, 0.9), np.full(100, 0.1)]
    r = bootstrap_metrics(labels, {"m": probs}, resamples=4000, seed=0)["m"]["accuracy"]
    assert r["low"] == pytest.approx(0.9 - 0.0186, abs=0.003)
    assert r["high"] == pytest.approx(0.9 + 0.0186, abs=0.003)


def test_point_estimates_equal_the_reported_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(500), 0, 1).round(2)  # rounded: plenty of tied scores
    r = bootstrap_metrics(labels, {"m": probs}, resamples=10)["m"]
    m = classification_metrics(labels, probs)
    for k in ("accuracy", "f1", "auc"):
        assert r[k]["estimate"] == pytest.approx(m[k], abs=1e-12)
        assert r[k]["low"] <= r[k]["estimate"] <= r[k]["high"]


def test_auc_and_f1_are_undefined_on_a_fake_only_set_and_resamples_without_reals_are_left_out():
    r = bootstrap_metrics([0, 0, 0], {"m": [0.1, 0.7, 0.2]}, resamples=50)["m"]
    assert r["auc"]["estimate"] is None and r["auc"]["low"] is None
    # F1 (Real positive) without a real image is undefined, like its recall (not 2TP / (2TP + FP) = 0)
    assert r["f1"]["estimate"] is None and r["f1"]["undefined_resamples"] == 50
    assert r["accuracy"]["estimate"] == pytest.approx(2 / 3)
    # one real among five: resamples that miss it are counted as undefined, not averaged in
    r = bootstrap_metrics([1, 0, 0, 0, 0], {"m": [0.9, 0.7, 0.2, 0.1, 0.3]}, resamples=200)["m"]
    assert r["f1"]["estimate"] == pytest.approx(2 / 3)
    assert 0 < r["f1"]["undefined_resamples"] < 200


def test_difference_of_a_model_with_itself_is_exactly_zero_and_paired():
    labels = [1, 0, 1, 0, 1, 1]
    probs = [0.9, 0.2, 0.3, 0.6, 0.8, 0.7]
    r = bootstrap_metrics(labels, {"a": probs, "b": probs}, reference="a", resamples=200)
    assert "difference" not in r["a"]
    for k in ("accuracy", "f1", "auc"):
        assert (r["b"]["difference"][k]["low"], r["b"]["difference"][k]["high"]) == (0.0, 0.0)


@pytest.mark.parametrize("a, b, want_b, want_c, p", [
    # exact: n = 7 discordant, min(b, c) = 1: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125
    ([1] * 7 + [0], [1, 0, 0, 0, 0, 0, 0, 1], 6, 1, 0.125),
    # exact: 5 vs 5 (n = 10): p = 2 * P(X <= 5) = 2 * 638 / 1024 > 1, capped at 1
    ([1] * 5 + [0] * 5, [0] * 5 + [1] * 5, 5, 5, 1.0),
    # no discordant pair: nothing speaks against equal accuracy
    ([1, 0, 1], [1, 0, 1], 0, 0, 1.0),
])
def test_mcnemar_exact_binomial(a, b, want_b, want_c, p):
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["method"]) == (want_b, want_c, "exact binomial")
    assert r["p_value"] == pytest.approx(p, abs=1e-12)


def test_mcnemar_chi_square_with_continuity_correction():
    # b = 10, c = 30 (40 >= 25 discordant): chi2 = (|10 - 30| - 1)^2 / 40 = 361 / 40 = 9.025,
    # p = P(chi2_1 > 9.025) = 2 * (1 - Phi(3.0042)) = 0.002663
    a = np.r_[np.ones(10), np.zeros(30), np.ones(60)].astype(bool)
    b = np.r_[np.zeros(10), np.ones(30), np.ones(60)].astype(bool)
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["method"]) == (10, 30, "chi-square with continuity correction")
    assert r["statistic"] == pytest.approx(9.025)
    assert r["p_value"] == pytest.approx(0.002663, abs=2e-6)
    assert mcnemar(b, a)["p_value"] == r["p_value"]  # symmetric


@pytest.mark.parametrize("estimate, p, verdict", [
    (0.0007, 0.61, "no significant difference detected"),
    (-0.0007, 0.2, "no significant difference detected"),
    (-0.02, 0.001, "significantly lower accuracy than baseline"),
    (0.02, 0.01, "significantly higher accuracy than baseline"),
])
def test_the_sentence_follows_the_numbers(estimate, p, verdict):
    text = comparison_sentence("prune-40", "baseline", {"estimate": estimate, "low": estimate - 0.01,
                                                        "high": estimate + 0.01}, {"p_value": p})
    assert text.endswith(": " + verdict)
    assert f"{100 * estimate:+.2f} pp" in text and "95 % CI" in text


def _predictions(labels, probs, order=None):
    order = np.arange(len(labels)) if order is None else np.asarray(order)
    sha = [f"{i:064x}" for i in range(len(labels))]
    return {"test": {"labels": [labels[i] for i in order], "probs_real": [probs[i] for i in order],
                     "source": ["demo"] * len(labels), "generator": ["None"] * len(labels),
                     "sha256": [sha[i] for i in order]}}


def test_models_are_paired_by_image_not_by_position():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60).tolist()
    base = rng.random(60).round(3).tolist()
    other = rng.random(60).round(3).tolist()
    shuffled = rng.permutation(60)
    in_order = compare_models({"baseline": _predictions(labels, base), "m": _predictions(labels, other)},
                              reference="baseline", resamples=100)
    permuted = compare_models({"baseline": _predictions(labels, base), "m": _predictions(labels, other, shuffled)},
                              reference="baseline", resamples=100)
    assert permuted["m"]["vs_reference"]["combined_test"] == in_order["m"]["vs_reference"]["combined_test"]


def test_models_scored_on_different_images_are_not_compared():
    labels, probs = [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]
    other = _predictions(labels, probs)
    other["test"]["sha256"][0] = "f" * 64
    r = compare_models({"baseline": _predictions(labels, probs), "m": other}, reference="baseline", resamples=20)
    assert "different images" in r["m"]["vs_reference"]["unpaired"]
    assert r["m"]["intervals"]["combined_test"]["accuracy"]["estimate"] == 1.0  # still has its own intervals
    with pytest.raises(ValueError, match="no sha256"):
        alignment({"labels": [1]}, {"labels": [1]})
    assert not math.isnan(r["baseline"]["intervals"]["combined_test"]["auc"]["estimate"])
