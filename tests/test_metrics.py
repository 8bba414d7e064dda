import json

import numpy as np
import pytest

from detector.evaluate.metrics import breakdown_metrics, classification_metrics

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
                                     "matrix": [[3, 1], [1, 3]]}
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
    assert set(m["notes"]) == {"precision", "recall", "f1"}
    assert set(m["notes"].values()) == {"undefined: no real images in this set"}
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
