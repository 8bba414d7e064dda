import json

import numpy as np
import pytest

from detector.evaluate.metrics import (EER_DEFINITION, breakdown_metrics, calibrate_threshold, classification_metrics,
                                      clusters, equal_error_rate, video_metrics)

# 8 images, Real = 1. Predicted real when p >= 0.5:
#   labels 1 1 1 1 0 0 0 0
#   probs  .9 .8 .6 .3 .7 .4 .2 .1  -> pred 1 1 1 0 1 0 0 0
# TP = 3, FN = 1, FP = 1, TN = 3.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]


def test_against_hand_computed_values():
    m = classification_metrics(LABELS, PROBS)
    assert m["positive_class"] == "real"
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)  # TP / (TP + FP)
    assert m["recall"] == pytest.approx(3 / 4)  # TP / (TP + FN)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["per_class"]["fake"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    # AUC = share of (real, fake) pairs where the real scores higher: 0.9 and 0.8 beat all 4 fakes,
    # 0.6 beats 3 (not 0.7), 0.3 beats 2 (0.2, 0.1): 13 of 16.
    assert m["auc"] == pytest.approx((4 + 4 + 3 + 2) / 16)
    assert m["confusion_matrix"] == {"rows": "true", "columns": "predicted", "labels": ["fake", "real"],
                                     "matrix": [[3, 1], [1, 3]],
                                     "cells": {"fake predicted fake": 3, "fake predicted real": 1,
                                               "real predicted fake": 1, "real predicted real": 3}}
    # AP (real positive): ranked .9R .8R .7F .6R .4F .3R .2F .1F, precision at each real: 1, 1, 3/4, 4/6
    assert m["ap_real"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    # AP (fake positive): ranked by 1 - p: .1F .2F .3R .4F .6R .7F .8R .9R -> 1, 1, 3/4, 4/6 again
    assert m["ap_fake"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    # EER: at threshold 0.6 one fake of four is predicted real (.7) and one real of four predicted fake (.3)
    assert m["eer"] == pytest.approx(0.25)
    assert m["support"] == {"fake": 4, "real": 4} and m["samples"] == 8 and m["notes"] == {}
    json.dumps(m)  # plain data


def test_unbalanced_values_and_macro_average():
    # labels 1 1 1 0 0, pred 1 1 0 0 1 -> real: P 2/3, R 2/3; fake: P 1/2, R 1/2.
    m = classification_metrics([1, 1, 1, 0, 0], [0.9, 0.5, 0.49, 0.0, 0.51])
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["per_class"]["fake"]["precision"] == pytest.approx(1 / 2)
    assert m["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_threshold_moves_the_decision():
    m = classification_metrics(LABELS, PROBS, threshold=0.75)
    assert m["confusion_matrix"]["matrix"] == [[4, 0], [2, 2]] and m["threshold"] == 0.75


def test_fake_only_set_has_no_auc_and_no_real_recall():
    m = classification_metrics([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3])
    assert m["accuracy"] == 0.75
    assert m["auc"] is None and "only one class (fake)" in m["auc_note"]
    # no real image: recall, F1 and precision of the real class are n/a, not 0 (the fake at 0.7 was called
    # real, which scikit-learn's precision would count as 0 %)
    assert m["recall"] is None and m["f1"] is None and m["precision"] is None
    assert set(m["notes"]) == {"precision", "recall", "f1", "ap_real", "ap_fake", "eer"}
    assert {m["notes"][k] for k in ("precision", "recall", "f1")} == {"undefined: no real images in this set"}
    assert m["ap_real"] is None and m["eer"] is None and m["notes"]["eer"] == m["auc_note"]
    assert m["per_class"]["real"]["precision"] is None and m["macro"]["precision"] == m["per_class"]["fake"]["precision"]
    assert m["macro"]["f1"] == pytest.approx(m["per_class"]["fake"]["f1"])  # the undefined one left out
    assert m["per_class"]["fake"]["recall"] == 0.75
    assert m["confusion_matrix"]["matrix"] == [[3, 1], [0, 0]]


@pytest.mark.parametrize("labels, probs, message", [
    ([1, 0], [0.5], "differ in length"),
    ([], [], "no samples"),
    ([2, 0], [0.5, 0.5], "labels must be"),
    ([1, 0], [np.nan, 0.5], "NaN"),
])
def test_bad_input(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probs)


def test_breakdown_by_source_and_generator():
    metas = {
        "source": ["faces140k"] * 4 + ["synthbuster"] * 4,
        "generator": ["", "", "stylegan", "stylegan", "dalle3", "dalle3", "midjourney", "midjourney"],
    }
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.4, 0.1, 0.2, 0.6, 0.3, 0.2, 0.1])
    out = breakdown_metrics(labels, probs, metas)
    assert out["all"]["accuracy"] == pytest.approx(6 / 8)
    assert set(out["sources"]) == {"faces140k", "synthbuster"}
    faces = out["sources"]["faces140k"]
    assert faces["all"]["accuracy"] == 0.75 and faces["all"]["auc"] == 1.0
    assert set(faces["generators"]) == {"unspecified", "stylegan"}
    assert faces["generators"]["unspecified"]["recall"] == 0.5
    sb = out["sources"]["synthbuster"]
    assert sb["all"]["auc"] is None
    assert sb["generators"]["dalle3"]["accuracy"] == 0.5 and sb["generators"]["midjourney"]["accuracy"] == 1.0


def test_nothing_predicted_real_leaves_precision_undefined_with_its_reason():
    m = classification_metrics([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4])
    assert m["precision"] is None and m["recall"] == 0.0
    assert m["notes"]["precision"] == "undefined: no image was predicted real"


def test_equal_error_rate_interpolates_where_the_error_curves_cross():
    # decisions (threshold, fakes predicted real, reals predicted fake): (.95, 0, 1), (.7, 0, 1/2), (.35, 1, 1/2),
    # (0, 1, 0): the curves cross half-way between the second and third, at 0.5
    assert equal_error_rate([1, 1, 0], [0.9, 0.2, 0.5]) == pytest.approx(0.5)
    assert equal_error_rate([1, 0], [0.9, 0.1]) == 0.0  # separable: no error at the threshold in between


@pytest.mark.parametrize("method, expected", [("accuracy", 0.65), ("eer", 0.25)])
def test_calibrated_threshold_against_hand_computed_values(method, expected):
    # reals .9 .3, fakes .4 .2 .1 .05. Candidate thresholds are midpoints: .95 .65 .35 .25 .15 .075 0.
    # accuracy: 5/6 at .65 (only .3 wrong) and at .25 (only .4 wrong); the nearer to 0.5 is .65.
    # eer: |fakes predicted real - reals predicted fake| is 1/4 at .35 (1/4 vs 1/2) and at .25 (1/4 vs 0); .25
    # makes fewer errors (1 against 2).
    labels, probs = [1, 1, 0, 0, 0, 0], [0.9, 0.3, 0.4, 0.2, 0.1, 0.05]
    t = calibrate_threshold(labels, probs, method=method)
    assert t == pytest.approx(expected)
    m = classification_metrics(labels, probs, calibrated=t)
    assert m["at_calibrated"]["threshold"] == t
    # at .65 only the real .3 is wrong, at .25 only the fake .4
    assert m["at_calibrated"]["cells"]["real predicted fake"] == (1 if method == "accuracy" else 0)
    assert m["at_calibrated"]["cells"]["fake predicted real"] == (0 if method == "accuracy" else 1)
    assert m["at_calibrated"]["accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="real and fake"):
        calibrate_threshold([0, 0], [0.1, 0.2])


def test_video_level_scores_are_the_mean_of_each_videos_frames():
    # v1 real (.9 .5 .7 -> .7), v2 real (.2 .4 -> .3), v3 fake (.5 .7 -> .6), v4 fake (.1 .3 .2 -> .2)
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    probs = [0.9, 0.5, 0.7, 0.2, 0.4, 0.5, 0.7, 0.1, 0.3, 0.2]
    videos = ["v1", "v1", "v1", "v2", "v2", "v3", "v3", "v4", "v4", "v4"]
    v = video_metrics(labels, probs, videos)
    assert (v["videos"], v["frames"]) == (4, 10)
    assert v["frames_per_video"] == {"min": 2, "median": 2.5, "max": 3}
    # videos: reals .7 .3, fakes .6 .2: (.7 > .6) + (.7 > .2) + (.3 < .6) + (.3 > .2) = 3 of 4 pairs
    assert v["metrics"]["auc"] == pytest.approx(3 / 4)
    assert v["metrics"]["accuracy"] == 0.5  # v1 and v4 right; v2 (.3) and v3 (.6) wrong
    # frame level, for comparison: 17.5 of 25 real-fake pairs ranked right (ties count 1/2)
    assert classification_metrics(labels, probs)["auc"] == pytest.approx(17.5 / 25)
    with pytest.raises(ValueError, match="v1 has frames labelled real and frames labelled fake"):
        video_metrics([1, 0], [0.5, 0.5], ["v1", "v1"])


def test_breakdown_adds_videos_and_each_generator_against_the_reals():
    metas = {"source": ["celebdf"] * 4 + ["synthbuster"] * 6,
             "generator": [""] * 4 + ["raise", "raise", "dalle3", "dalle3", "glide", "glide"],
             "group": ["a", "a", "b", "b"] + [f"s{i}" for i in range(6)],
             "frame": ["3", "9", "3", "9"] + ["-1"] * 6}
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.7, 0.2, 0.4, 0.8, 0.6, 0.7, 0.1, 0.3, 0.2])
    out = breakdown_metrics(labels, probs, metas)
    videos = out["sources"]["celebdf"]["videos"]
    assert videos["videos"] == 2 and videos["metrics"]["auc"] == 1.0 and "videos" not in out["sources"]["synthbuster"]
    vs = out["sources"]["synthbuster"]["vs_reals"]
    assert set(vs) == {"dalle3", "glide"}  # the reals' own group ("raise") is not a generator of fakes
    # reals .8 .6 against dalle3 .7 .1: (.8 > .7, .8 > .1, .6 < .7, .6 > .1) = 3 of 4; against glide .3 .2: 4 of 4
    assert vs["dalle3"]["auc"] == pytest.approx(3 / 4) and vs["glide"]["auc"] == 1.0
    assert vs["dalle3"]["support"] == {"fake": 2, "real": 2}


def test_a_fake_only_source_says_why_it_has_no_auc_per_generator():
    out = breakdown_metrics(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.6]),
                            {"source": ["faces140k", "synthbuster", "synthbuster"], "generator": ["", "dalle3", "glide"]})
    assert "vs_reals" not in out["sources"]["synthbuster"]
    assert "no real images in this source's test set" in out["sources"]["synthbuster"]["vs_reals_note"]
    assert "--synthbuster-raise" in out["sources"]["synthbuster"]["vs_reals_note"]


def test_each_video_is_one_unit_and_every_other_image_its_own():
    block = {"labels": [1] * 7, "source": ["celebdf"] * 4 + ["faces140k", "celebdf", "other"],
             # "a" is a video in celebdf; the still image "a" of faces140k and a video "a" elsewhere are not it
             "group": ["a", "a", "b", "a", "a", "c", "a"], "frame": ["0", "5", "0", "9", "-1", "None", "0"]}
    assert clusters(block).tolist() == [0, 0, 1, 0, 2, 3, 4]
    assert clusters({"labels": [1, 0, 1]}).tolist() == [0, 1, 2]  # no video frames: every image alone
    with pytest.raises(ValueError, match="carry no group"):
        clusters({"labels": [1, 1], "frame": [0, 1]})


def test_the_eer_is_interpolated_where_the_error_curves_cross_not_taken_at_the_nearest_point():
    # reals .9 .4, fakes .6 .3 .2. Below 0.5: a third of the fakes predicted real (.6), half the reals predicted
    # fake (.4); below 0.35: a third, and none. The two curves cross a third of the way from the first
    # threshold to the second, where both are 1/3: the EER. DeepfakeBench takes the nearest point, the
    # threshold 0.5 (gap 1/6), and reports its false-positive rate: with fake the positive class, 1/2.
    labels, probs = [1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.3, 0.2]
    assert equal_error_rate(labels, probs) == pytest.approx(1 / 3)
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.array(labels) == 0, 1 - np.array(probs))
    assert fpr[np.nanargmin(np.abs((1 - tpr) - fpr))] == 0.5
    assert "interpolated" in EER_DEFINITION and "DeepfakeBench takes the nearest point" in EER_DEFINITION
