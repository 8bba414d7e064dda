"""The report's intervals, paired tests and wording, on a run folder written by hand (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detector.io import atomic_write_json
from detector.evaluate.metrics import breakdown_metrics
from detector.report import write_report

N = 400
LABELS = np.r_[np.ones(150, int), np.zeros(250, int)]  # the last 100 images: a fake-only set
SOURCES = np.where(np.arange(N) < 300, "faces140k", "synthbuster")
GENERATORS = np.where(SOURCES == "synthbuster", np.where(np.arange(N) % 2, "dalle3", "midjourney"), "None")
SHA = [f"{i:064x}" for i in range(N)]


def probs_with_errors(wrong: list[int] | range) -> np.ndarray:
    """P(real) that is right on every image except ``wrong``; scores vary so that AUC has few ties."""
    right = np.where(LABELS == 1, 0.9, 0.1) + np.linspace(-0.05, 0.05, N)
    right[list(wrong)] = 1 - right[list(wrong)]
    return right.round(6)


def write_eval(run: Path, name: str, sparsity: float, probs: np.ndarray, *, order: np.ndarray | None = None,
               **extra) -> None:
    metas = {"source": SOURCES.tolist(), "generator": GENERATORS.tolist()}
    metrics = breakdown_metrics(LABELS, probs, metas)
    efficiency = {"sparsity": sparsity, "nonzero_params": 1000, "total_params": 1100, "size_mb": 90.0,
                  "sparse_size_mb": 90.0 * (1 - sparsity) + 3, "macs": 4.1e9, "latency_ms": 30.0,
                  "throughput": 100.0, "device": "cpu: test"}
    atomic_write_json(run / "eval" / f"{name}.json", {
        "name": name, "target_sparsity": sparsity, "sparsity": sparsity, "metrics": {"val": metrics, "test": metrics},
        "efficiency": efficiency, **extra})
    o = np.arange(N) if order is None else order
    pred = {"labels": LABELS[o].tolist(), "probs_real": probs[o].tolist(), "source": SOURCES[o].tolist(),
            "generator": GENERATORS[o].tolist(), "sha256": [SHA[i] for i in o]}
    atomic_write_json(run / "eval" / f"{name}.predictions.json", {"val": pred, "test": pred})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "experiment.yaml").write_text("evaluate:\n  bootstrap: 300\n")
    write_eval(run, "baseline", 0.0, probs_with_errors([0, 1, 200, 390]),
               semistructured={"status": "skipped: CUDA is not available on this machine"})
    # prune-10: the baseline's errors plus two more, and one fixed: no detectable difference.
    write_eval(run, "prune-10", 0.1, probs_with_errors([1, 2, 3, 200, 390]),
               order=np.random.default_rng(0).permutation(N))  # stored in another order: paired by sha256
    # prune-40: 40 more errors: a significant loss.
    write_eval(run, "prune-40", 0.4, probs_with_errors([0, 1, 200, 390, *range(100, 140)]))
    return run


def test_report_json_holds_intervals_and_tests_beside_the_existing_keys(run):
    write_report(run)
    r = json.loads((run / "report" / "report.json").read_text())
    assert r["statistics"]["bootstrap_resamples"] == 300  # from RUN/experiment.yaml
    assert "exact binomial" in r["statistics"]["paired_test"] and "continuity" in r["statistics"]["paired_test"]
    for m in r["models"]:
        assert {"name", "sparsity", "best_params", "metrics", "efficiency"} <= set(m)
        assert set(m["intervals"]) == set(m["metrics"])  # every data set, generators included
        for name, iv in m["intervals"].items():
            acc = iv["accuracy"]
            assert acc["estimate"] == pytest.approx(m["metrics"][name]["accuracy"])
            assert acc["low"] <= acc["estimate"] <= acc["high"]
    baseline, p10, p40 = r["models"]
    assert baseline["vs_baseline"] is None
    assert baseline["intervals"]["synthbuster"]["auc"]["estimate"] is None  # one class: AUC undefined
    t10, t40 = p10["vs_baseline"]["combined_test"], p40["vs_baseline"]["combined_test"]
    assert (t10["mcnemar"]["b"], t10["mcnemar"]["c"]) == (2, 1)  # images 2, 3 lost; image 0 gained
    assert t10["mcnemar"]["method"] == "exact binomial" and not t10["significant"]
    assert (t40["mcnemar"]["b"], t40["mcnemar"]["c"]) == (40, 0)
    assert t40["mcnemar"]["method"] == "chi-square with continuity correction" and t40["significant"]
    assert t40["accuracy_difference"]["estimate"] == pytest.approx(-0.1)
    assert t40["accuracy_difference"]["high"] < 0


def test_report_wording_follows_the_numbers(run):
    md = write_report(run).read_text()
    assert "prune-10 vs baseline: accuracy difference -0.25 pp" in md
    assert "no significant difference detected" in md
    assert "prune-40 vs baseline: accuracy difference -10.00 pp" in md
    assert "significantly lower accuracy than baseline" in md
    assert "pruning lowered accuracy significantly for prune-40: a claim of no loss in accuracy does not hold" in md
    assert "statistically identical" not in md
    assert "2:4 variant of the baseline: skipped: CUDA is not available on this machine" in md
    assert (run / "report" / "statistics.csv").read_text().startswith("model,data_set,metric")


def test_without_a_significant_loss_the_report_does_not_claim_equality(run):
    (run / "eval" / "prune-40.json").unlink()
    (run / "eval" / "prune-40.predictions.json").unlink()
    md = write_report(run).read_text()
    assert "No pruned model's accuracy on the combined test set differs significantly" in md
    assert "That is not proof of equal accuracy: the intervals still allow a loss of up to" in md


def test_models_scored_on_other_images_are_reported_but_not_paired(run):
    path = run / "eval" / "prune-10.predictions.json"
    pred = json.loads(path.read_text())
    pred["test"]["sha256"][5] = "0" * 64 + "x"
    atomic_write_json(path, pred)
    md = write_report(run).read_text()
    assert "prune-10: not compared with the baseline: the two prediction files hold different images" in md
    r = json.loads((run / "report" / "report.json").read_text())
    assert r["models"][1]["intervals"]["combined_test"]["accuracy"]["low"] is not None
