"""Shared pieces of the pipeline tests: a tiny experiment on tiny demo data, and a baseline to prune."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from detector.checkpoint import save_checkpoint
from detector.config import from_dict, save_yaml
from detector.data.demo import DemoConfig
from detector.data.loader import manifest_sha256
from detector.data.prepare import prepare
from detector.job.experiment import ExperimentConfig
from detector.model import build_model
from detector.job.runfolder import BASELINE, RunFolder

# The paper's workflow in miniature: 4 sparsities x 2 trials, resnet18 at 32 px, a few dozen images. Two
# trials at a time on the 2 CPUs: each trial process first imports torch, torchvision and Ray (~5 s of CPU),
# and four at a time made the same pipeline run cost a third more CPU (116-123 s against 84-92 s,
# measured 2026-12-07 on the 2-core VM).
TINY: dict[str, Any] = {
    "name": "tiny",
    "train": {"arch": "resnet18", "image_size": 32, "batch_size": 16, "max_epochs": 2, "patience": 2,
              "num_workers": 0, "channels_last": False, "lr": 1e-3},
    "search_train": {"max_epochs": 1, "patience": None},  # a trial's epochs are its budget
    "search": {"trials_per_sparsity": 2, "lr_min": 1e-5, "lr_max": 1e-3, "tpe_startup_trials": 1},
    "finetune": {"max_epochs": 1},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "local_num_cpus": 2, "max_failures": 1},
    "evaluate": {"batch_size": 32, "latency_repeats": 2, "throughput_batch": 4, "bootstrap": 10},
}


def tiny_experiment(data: Path, /, *, control: bool = True, **sections: dict[str, Any]) -> ExperimentConfig:
    """TINY on ``data``, each of ``sections`` merged into its section. ``control=False``: without the dense
    control's search, fine-tune and evaluation, for tests about something else that need not pay for them."""
    cfg = copy.deepcopy(TINY)
    cfg["data"] = {"path": str(data)}
    cfg["search"]["control"] = control
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(ExperimentConfig, cfg)


def make_tiny_data(out: Path) -> Path:
    prepare(out, demo=DemoConfig(image_size=32, train=64, val=32, test=32), workers=1, progress=False)
    return out


def write_untrained_baseline(run_dir: Path, exp: ExperimentConfig) -> Path:
    """Stand-in for the baseline stage where a test is about the search only; with the config a run saves
    first (a run folder with outputs and no config is refused)."""
    cfg = exp.stage_train("baseline")
    save_yaml(exp, RunFolder(run_dir).config)
    path = RunFolder(run_dir).model(BASELINE)
    save_checkpoint(path, build_model(cfg.arch, seed=0), metadata={
        "arch": cfg.arch, "image_size": cfg.image_size, "data_manifest_sha256": manifest_sha256(exp.data.path),
    })
    return path
