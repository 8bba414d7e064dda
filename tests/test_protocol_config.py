"""jobs/configs/paper.yaml is the paper's protocol, and docs/protocol.md accounts for every one of its keys."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import yaml

from detector.job.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "jobs" / "configs" / "paper.yaml"


def leaf_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return keys


def test_every_key_of_paper_yaml_is_in_docs_protocol():
    doc = (REPO / "docs" / "protocol.md").read_text()
    missing = [k for k in leaf_keys(yaml.safe_load(PAPER.read_text()))
               if f"`{k}`" not in doc and not any(f"`{k.rsplit('.', n)[0]}.*`" in doc for n in (1, 2))]
    assert not missing, f"docs/protocol.md does not explain {missing}"


def test_where_the_paper_is_silent_paper_yaml_takes_the_librarys_default():
    exp = load_experiment(PAPER)
    sgd = inspect.signature(torch.optim.SGD).parameters
    adam = inspect.signature(torch.optim.Adam).parameters
    assert exp.train.momentum == sgd["momentum"].default == 0
    assert exp.train.weight_decay == adam["weight_decay"].default == sgd["weight_decay"].default == 0
    assert exp.search.tpe_startup_trials == 10  # optuna.samplers.TPESampler's n_startup_trials
    import optuna

    assert inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default == 10


def test_paper_yaml_tests_on_the_140k_test_set_and_adds_the_fields_evaluation():
    e = load_experiment(PAPER).evaluate
    assert e.primary_set == "faces140k" and e.threshold_calibration == "eer"
    r = e.robustness
    assert r.enabled and r.jpeg_quality == (95, 75, 50, 30) and r.blur_sigma == (1, 2, 3)
    assert r.downscale == (0.5, 0.25) and r.format_equalisation
    assert load_experiment(PAPER).search.objective == "last"


def test_demo_yaml_runs_a_small_robustness_subset():
    r = load_experiment(REPO / "jobs" / "configs" / "demo.yaml").evaluate.robustness
    assert r.enabled and 1 <= len(r.perturbations()) <= 4
