"""Bootstrap intervals, McNemar's test and Tango's interval against examples worked by hand, per image and with
the frames of a video as one unit."""

import json
import math

import numpy as np
import pytest

from detector.evaluate.metrics import classification_metrics, video_metrics
from detector.evaluate.paired import (CLUSTERED_DIFFERENCE_METHOD, CLUSTERED_MCNEMAR_METHOD, MCNEMAR_METHOD,
                                      accuracy_difference, clustered_difference_interval, mcnemar,
                                      paired_difference_interval)
from detector.evaluate.scoring import Scored
from detector.evaluate.statistics import alignment, bootstrap_metrics, comparison_sentence, compare_models


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


@pytest.mark.parametrize("a, b, want_b, want_c, z", [
    # b = 6, c = 1: z = (1 - 6) / sqrt(7) = -1.8898, p = erfc(1.8898 / sqrt 2) = 0.0588
    ([1] * 7 + [0], [1, 0, 0, 0, 0, 0, 0, 1], 6, 1, -5 / math.sqrt(7)),
    # 5 vs 5: z = 0, p = 1
    ([1] * 5 + [0] * 5, [0] * 5 + [1] * 5, 5, 5, 0.0),
    # no discordant pair: nothing speaks against equal accuracy
    ([1, 0, 1], [1, 0, 1], 0, 0, 0.0),
])
def test_mcnemar_score_test(a, b, want_b, want_c, z):
    r = mcnemar(a, b)
    assert (r["b"], r["c"]) == (want_b, want_c) and "no continuity correction" in r["method"]
    assert r["statistic"] == pytest.approx(z, abs=1e-12)
    assert r["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-12)


def test_mcnemar_on_forty_discordant_images():
    # b = 10, c = 30: z = 20 / sqrt(40) = 3.1623, p = 2 * (1 - Phi(3.1623)) = 0.001565
    a = np.r_[np.ones(10), np.zeros(30), np.ones(60)].astype(bool)
    b = np.r_[np.zeros(10), np.ones(30), np.ones(60)].astype(bool)
    r = mcnemar(a, b)
    assert (r["b"], r["c"]) == (10, 30)
    assert r["statistic"] == pytest.approx(3.16228, abs=1e-5)
    assert r["p_value"] == pytest.approx(0.001565, abs=2e-6)
    assert mcnemar(b, a)["p_value"] == r["p_value"]  # symmetric


Z95 = 1.959963984540054


def test_tango_interval_against_values_worked_by_hand():
    # b = c = 0 of n: the score equation reduces to n d / (1 - d) = z^2, so the bounds are +-z^2 / (n + z^2)
    r = paired_difference_interval(0, 0, 10)
    assert r["estimate"] == 0.0
    assert r["high"] == pytest.approx(Z95**2 / (10 + Z95**2), abs=1e-12)  # 0.277532
    assert r["low"] == pytest.approx(-Z95**2 / (10 + Z95**2), abs=1e-12)
    # b = 0, c = n = 3 (every image right for B only): the restricted estimate is (1 - d) / 2, the statistic
    # sqrt(3 (1 - d) / (1 + d)), so the lower bound is (3 - z^2) / (3 + z^2) = -0.1230 and the upper is 1
    r = paired_difference_interval(0, 3, 3)
    assert (r["estimate"], r["high"]) == (1.0, 1.0)
    assert r["low"] == pytest.approx((3 - Z95**2) / (3 + Z95**2), abs=1e-12)
    # the mirror image
    r = paired_difference_interval(3, 0, 3)
    assert (r["estimate"], r["low"]) == (-1.0, -1.0) and r["high"] == pytest.approx((Z95**2 - 3) / (3 + Z95**2))


def test_tango_interval_against_the_published_example():
    # Cavo et al. (2012), as analysed in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables" (ch. 8) and their R package contingencytables: n12 = 6, n21 = 16, N = 161,
    # estimate -0.0621, Tango 95 % CI -0.1240 to -0.0054.
    r = paired_difference_interval(16, 6, 161)
    assert round(r["estimate"], 4) == -0.0621
    assert (round(r["low"], 4), round(r["high"], 4)) == (-0.1240, -0.0054)


@pytest.mark.parametrize("n", [20, 200, 5000])
def test_the_interval_excludes_zero_exactly_when_the_test_rejects(n):
    # every split of up to 30 discordant images: never "CI [+0.50, +4.00]" beside "p = 0.12"
    for b in range(31):
        for c in range(31 - b):
            if b + c > n:
                continue
            correct_a = np.r_[np.ones(b), np.zeros(c), np.ones(n - b - c)].astype(bool)
            correct_b = np.r_[np.zeros(b), np.ones(c), np.ones(n - b - c)].astype(bool)
            p = mcnemar(correct_a, correct_b)["p_value"]
            iv = paired_difference_interval(b, c, n)
            assert iv["low"] <= iv["estimate"] <= iv["high"]
            assert (iv["low"] > 0 or iv["high"] < 0) == (p < 0.05), (b, c, n, p, iv)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        paired_difference_interval(5, 6, 10)


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


def test_an_interval_that_disagrees_with_the_test_is_said_to():
    # a percentile bootstrap interval beside the test, as the report once printed them
    text = comparison_sentence("prune-10", "baseline", {"estimate": 0.02, "low": 0.005, "high": 0.04},
                               {"p_value": 0.12})
    assert "no significant difference detected (the conclusion follows the test; the interval excludes 0" in text


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


def test_every_image_its_own_cluster_gives_the_same_numbers_as_no_clusters():
    rng = np.random.default_rng(5)
    labels, a, b = rng.integers(0, 2, 300), rng.random(300).round(2), rng.random(300).round(2)
    plain = bootstrap_metrics(labels, {"a": a, "b": b}, reference="a", resamples=300, seed=4)
    assert bootstrap_metrics(labels, {"a": a, "b": b}, reference="a", clusters=np.arange(300), resamples=300,
                             seed=4) == plain
    right_a, right_b = (a >= 0.5) == labels, (b >= 0.5) == labels
    test, interval = accuracy_difference(right_a, right_b, clusters=np.arange(300))
    assert test == mcnemar(right_a, right_b) and test["unit"] == "image" and test["clusters"] == 300
    assert interval == paired_difference_interval(test["b"], test["c"], 300)


def test_a_video_of_three_identical_frames_counts_as_one_image():
    labels, probs = [1, 1, 0, 0], [0.9, 0.8, 0.1, 0.7]
    images = bootstrap_metrics(labels, {"m": probs}, resamples=2000, seed=1)["m"]
    videos = bootstrap_metrics(np.repeat(labels, 3), {"m": np.repeat(probs, 3)}, clusters=np.repeat([7, 3, 5, 1], 3),
                               resamples=2000, seed=1)["m"]
    assert videos == images  # the same draws of four units, every count three times over
    assert (videos["accuracy"]["low"], videos["accuracy"]["high"]) == (0.25, 1.0)  # as for the four images


# Three videos of 3, 2 and 2 frames; A and B right (1) or wrong (0) on each frame:
#   video 0: A 1 1 1, B 0 0 0  -> b_0 = 3, c_0 = 0, d_0 = c_0 - b_0 = -3
#   video 1: A 0 1,   B 1 1    -> d_1 = +1
#   video 2: A 1 0,   B 0 1    -> d_2 = 0
VIDEO_IDS = [0, 0, 0, 1, 1, 2, 2]
RIGHT_A = [1, 1, 1, 0, 1, 1, 0]
RIGHT_B = [0, 0, 0, 1, 1, 0, 1]


def test_mcnemar_by_video_against_values_worked_by_hand():
    # b = 4, c = 2 over all frames; z = sum(d_k) / sqrt(sum(d_k^2)) = -2 / sqrt(9 + 1 + 0) = -0.63246, where
    # frames as images would give -2 / sqrt(6) = -0.8165
    r = mcnemar(RIGHT_A, RIGHT_B, clusters=VIDEO_IDS)
    assert (r["b"], r["c"], r["unit"], r["clusters"], r["images"]) == (4, 2, "video", 3, 7)
    assert r["statistic"] == pytest.approx(-2 / math.sqrt(10), abs=1e-12)
    assert r["p_value"] == pytest.approx(math.erfc(2 / math.sqrt(10) / math.sqrt(2)), abs=1e-12)  # 0.527
    assert r["method"] == CLUSTERED_MCNEMAR_METHOD
    assert mcnemar(RIGHT_A, RIGHT_B)["statistic"] == pytest.approx(-2 / math.sqrt(6))


def test_the_interval_by_video_without_a_discordant_frame_is_tangos_over_videos():
    iv = clustered_difference_interval(RIGHT_A, RIGHT_A, VIDEO_IDS)
    assert iv["estimate"] == 0.0 and iv["method"] == CLUSTERED_DIFFERENCE_METHOD
    tango = paired_difference_interval(0, 0, 3)  # 3 videos, not 7 frames
    assert (iv["low"], iv["high"]) == (tango["low"], tango["high"])


def clustered_z(delta: float, right_a: np.ndarray, right_b: np.ndarray, ids: np.ndarray) -> float:
    """The statistic for "accuracy(B) - accuracy(A) = delta", written out: sum(e_k) / sqrt(sum(e_k^2))."""
    e = np.bincount(ids, weights=right_b.astype(float) - right_a) - delta * np.bincount(ids)
    return float(e.sum() / math.sqrt(e @ e))


@pytest.mark.parametrize("seed", range(6))
def test_the_interval_by_video_excludes_zero_exactly_when_the_test_by_video_rejects(seed):
    rng = np.random.default_rng(seed)
    rejected = 0
    for videos in [2, 3, 5, 10, 30, 60] * 20:
        ids = np.repeat(np.arange(videos), rng.integers(1, 13, videos))
        # per video, how likely each model is to get a frame right: frames of a video agree
        p_a, p_b = rng.random(videos), np.clip(rng.random(videos) + rng.normal(0.1, 0.2), 0, 1)
        right_a, right_b = rng.random(ids.size) < p_a[ids], rng.random(ids.size) < p_b[ids]
        test, iv = accuracy_difference(right_a, right_b, clusters=ids)
        assert iv["low"] <= iv["estimate"] <= iv["high"]
        assert (iv["low"] > 0 or iv["high"] < 0) == (test["p_value"] < 0.05), (videos, test, iv)
        rejected += test["p_value"] < 0.05
        d = np.bincount(ids, weights=right_b.astype(float) - right_a)
        if test["unit"] == "video" and d.any():
            for end, sign in (("low", 1), ("high", -1)):  # an end inside (-1, 1) is where |z| meets 1.96
                if abs(iv[end]) < 1:
                    assert clustered_z(iv[end], right_a, right_b, ids) == pytest.approx(sign * Z95, abs=1e-9)
    assert 0 < rejected < 120  # both outcomes were exercised


def video_predictions(probs: np.ndarray) -> dict:
    """A test split of 40 single images (faces) and 8 videos of 5 frames (celebdf), reals first in each."""
    labels = np.r_[np.repeat([1, 0], 20), np.repeat([1, 0], 20)]
    return {"test": {"labels": labels.tolist(), "probs_real": probs.tolist(),
                     "source": ["faces"] * 40 + ["celebdf"] * 40, "generator": ["None"] * 80,
                     "sha256": [f"{i:064x}" for i in range(80)],
                     "group": [f"img{i}" for i in range(40)] + [f"video{i // 5}" for i in range(40)],
                     "frame": [-1] * 40 + [i % 5 for i in range(40)]}}


def test_compare_models_resamples_and_tests_videos_and_gives_video_level_intervals():
    rng = np.random.default_rng(8)
    labels = np.asarray(video_predictions(np.zeros(80))["test"]["labels"])
    base = np.clip(np.where(labels == 1, 0.7, 0.3) + rng.normal(0, 0.25, 80), 0, 1)
    other = np.clip(base + np.repeat(rng.normal(0, 0.2, 16), 5), 0, 1)  # moves each video's frames together
    r = compare_models({"baseline": video_predictions(base), "m": video_predictions(other)}, reference="baseline",
                       resamples=200)["m"]
    units_of = {name: (iv["unit"], iv["clusters"], iv["images"]) for name, iv in r["intervals"].items()}
    assert units_of == {"combined_test": ("video", 48, 80), "faces": ("image", 40, 40), "celebdf": ("video", 8, 40)}
    assert r["vs_reference"]["celebdf"]["mcnemar"]["method"] == CLUSTERED_MCNEMAR_METHOD
    assert r["vs_reference"]["celebdf"]["accuracy_difference"]["method"] == CLUSTERED_DIFFERENCE_METHOD
    assert (r["vs_reference"]["celebdf"]["unit"], r["vs_reference"]["celebdf"]["clusters"]) == ("video", 8)
    assert r["vs_reference"]["faces"]["mcnemar"]["method"] == MCNEMAR_METHOD
    # video level: one score per video (the mean of its frames), resampled over the 8 videos
    video = r["video_intervals"]["celebdf"]
    frames = slice(40, 80)
    want = video_metrics(labels[frames], other[frames], [f"v{i // 5}" for i in range(40)])["metrics"]
    assert (video["unit"], video["clusters"], video["images"]) == ("video", 8, 40)
    for k in ("accuracy", "f1", "auc"):
        assert video[k]["estimate"] == pytest.approx(want[k], abs=1e-12)
        assert video[k]["low"] <= video[k]["estimate"] <= video[k]["high"]
    assert "difference" in video and set(r["video_intervals"]) == {"celebdf"}


def test_the_predictions_file_keeps_the_scores_the_metrics_saw():
    # float32 scores as the model gives them, one just below the threshold: rounded to 6 decimals it would
    # read 0.5, be predicted real, and the accuracy recomputed from the file would differ from Table 3's
    just_below = np.nextafter(np.float32(0.5), np.float32(0))
    probs = np.array([just_below, 0.9, 0.2, 0.7312345678], dtype=np.float32)
    scored = Scored("test", "ab" * 32, np.array([0, 1, 0, 1]), probs,
                    {"source": ["demo"] * 4, "generator": ["None"] * 4, "sha256": [f"{i:064x}" for i in range(4)]})
    saved = json.loads(json.dumps({"test": scored.predictions()}))
    assert np.array_equal(np.asarray(saved["test"]["probs_real"], dtype=np.float32), probs)  # every bit
    recomputed = compare_models({"m": saved}, reference=None, resamples=10)["m"]["intervals"]["combined_test"]
    assert recomputed["accuracy"]["estimate"] == scored.metrics()["all"]["accuracy"] == 1.0
