"""The frontier search's rule, on synthetic accuracy-against-sparsity curves: it finds the largest
non-inferior sparsity within its resolution, with fewer probes than a dense grid, and it reads nothing but
validation accuracies."""

from __future__ import annotations

import math

import pytest

from detector.job.frontier import FrontierRecord, FrontierRule, answer, next_probes


def search(rule: FrontierRule, val_accuracy, baseline: float) -> tuple[dict, list[list[float]]]:
    """Run the rule to its end on a curve ``val_accuracy(sparsity)``: (answer, the rounds' probes)."""
    outcomes: dict[float, bool] = {}
    rounds = []
    while probes := next_probes(rule, outcomes):
        rounds.append(probes)
        outcomes.update({p: rule.non_inferior(val_accuracy(p), baseline) for p in probes})
    return answer(rule, outcomes), rounds


def knee(at: float, slope: float = 0.5):
    """0.98 up to ``at``, then falling by ``slope`` per unit of sparsity."""
    return lambda s: 0.98 - slope * max(0.0, s - at)


@pytest.mark.parametrize("true_frontier", [0.55, 0.72, 0.81, 0.93])
@pytest.mark.parametrize("parallel", [1, 3])
def test_it_finds_the_frontier_within_its_resolution(true_frontier, parallel):
    rule = FrontierRule(grid=(0.5, 0.7, 0.8, 0.9, 0.95), margin=0.005, resolution=0.02, parallel=parallel)
    # non-inferior while the loss is within the margin: up to true_frontier + margin / slope
    limit = true_frontier + 0.005 / 0.5
    found, rounds = search(rule, knee(true_frontier), baseline=0.98)
    assert found["resolution_reached"]
    assert found["sparsity"] <= limit + 1e-9 < found["first_inferior"]
    assert found["first_inferior"] - found["sparsity"] <= rule.resolution + 1e-9
    probes = sum(len(r) for r in rounds)
    dense = math.floor((0.95 - 0.5) / rule.resolution) + 1
    assert probes <= 0.5 * dense  # the goal against a grid of the same resolution


def test_a_curve_that_never_falls_ends_at_the_grid_and_says_so():
    rule = FrontierRule(grid=(0.5, 0.7, 0.9), margin=0.005, resolution=0.02)
    found, rounds = search(rule, lambda s: 0.99, baseline=0.98)
    assert rounds == [[0.5, 0.7, 0.9]]
    assert found["sparsity"] == 0.9 and found["first_inferior"] is None and not found["resolution_reached"]
    assert "no probe was inferior" in found["stopped_because"]


def test_when_even_the_first_probe_is_inferior_it_searches_below_it():
    rule = FrontierRule(grid=(0.5, 0.7), margin=0.005, resolution=0.05)
    found, rounds = search(rule, knee(0.3, slope=1.0), baseline=0.98)
    assert rounds[0] == [0.5, 0.7] and rounds[1] == [0.25]
    limit = 0.3 + 0.005  # the loss reaches the margin there
    assert found["sparsity"] <= limit < found["first_inferior"]
    assert found["first_inferior"] - found["sparsity"] <= rule.resolution


def test_a_record_resumes_the_round_under_way(tmp_path):
    rule = FrontierRule(grid=(0.5, 0.9), margin=0.005, resolution=0.1)
    record = FrontierRecord.open(tmp_path / "frontier.json", rule, 0.98)
    assert record.open_round() == [0.5, 0.9]
    record.judge_against("dense-ft", 0.98)
    record.decide(0.5, 0.979)
    # the driver stops here; the next one opens the same round again, with its undecided probe
    again = FrontierRecord.open(tmp_path / "frontier.json", rule, 0.98)
    assert again.open_round() == [0.5, 0.9]
    again.judge_against("dense-ft", 0.98)
    again.decide(0.9, 0.90)
    assert again.open_round() == [0.7]
    with pytest.raises(ValueError, match="another rule"):
        FrontierRecord.open(tmp_path / "frontier.json", FrontierRule(grid=(0.5,), margin=0.01, resolution=0.1), 0.98)


def test_probes_are_judged_against_the_dense_control_not_the_baseline(tmp_path):
    """The control (dense-ft) had the search and fine-tune every probe has; the baseline had neither, so a probe
    beside the baseline would be credited with its extra training. frontier.json says which it used."""
    import json

    rule = FrontierRule(grid=(0.5, 0.9), margin=0.005, resolution=0.1)
    record = FrontierRecord.open(tmp_path / "frontier.json", rule, baseline_val_accuracy=0.95)
    record.open_round()
    with pytest.raises(ValueError, match="no reference to judge probe 0.5 against"):
        record.decide(0.5, 0.96)
    record.judge_against("dense-ft", 0.97)
    assert not record.decide(0.5, 0.96)  # 1 pp above the baseline, 1 pp below the control: inferior
    assert record.decide(0.9, 0.966)
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert saved["reference"] == {"model": "dense-ft", "val_accuracy": 0.97} and saved["baseline_val_accuracy"] == 0.95
    assert saved["rounds"][0]["probes"][0]["difference"] == pytest.approx(-0.01)
    with pytest.raises(ValueError, match="judged against dense-ft, not baseline"):
        FrontierRecord.open(tmp_path / "frontier.json", rule, 0.95).judge_against("baseline", 0.95)


def test_a_record_written_before_the_reference_was_recorded_was_judged_against_the_baseline(tmp_path):
    import json

    rule = FrontierRule(grid=(0.5,), margin=0.005, resolution=0.1)
    record = FrontierRecord.open(tmp_path / "frontier.json", rule, 0.98)
    record.open_round()
    record.judge_against("baseline", 0.98)
    record.decide(0.5, 0.99)
    older = json.loads((tmp_path / "frontier.json").read_text())
    del older["reference"]
    (tmp_path / "frontier.json").write_text(json.dumps(older))
    assert FrontierRecord.open(tmp_path / "frontier.json", rule, 0.98).reference == {"model": "baseline",
                                                                                     "val_accuracy": 0.98}


def test_the_test_claim_is_on_the_primary_set_and_names_robustness():
    from detector.report.frontier import test_claim

    diff = {"faces140k": {"accuracy_difference": {"estimate": -0.002, "low": -0.004, "high": 0.0}},
            "combined_test": {"accuracy_difference": {"estimate": -0.02, "low": -0.03, "high": -0.01}}}
    model = {"name": "prune-30", "sparsity": 0.3, "vs_baseline": diff,
             "robustness": {"perturbations": {"jpeg-q50": {"family": "jpeg", "severity": 50, "label": "JPEG q50",
                                                           "set": "faces140k", "images": 20}}},
             "robustness_vs_baseline": {"jpeg-q50": {"accuracy_difference": {"estimate": -0.061, "low": -0.074,
                                                                             "high": -0.048},
                                                     "mcnemar": {"p_value": 2e-5}, "significant": True}}}
    data = {"primary": {"set": "faces140k"}, "models": [model]}
    claim = test_claim(data, {"answer": {"sparsity": 0.3, "first_inferior": 0.4}, "rule": {"margin": 0.005}})
    # no baseline in this run's models: the claim still names the epochs (here: not recorded)
    assert ("on the faces140k test set the accuracy difference of prune-30 (epochs not recorded) from the baseline "
            "is -0.20 pp") in claim
    assert "within the 0.5 pp margin: non-inferior on the test set" in claim
    assert "Under perturbation, prune-30 against the baseline: significantly less accurate under JPEG q50." in claim
