"""Experiment configs: the shipped ones load, and a bad one fails before any work, naming the key."""

from pathlib import Path

import pytest

from detector.config import ConfigError
from detector.job.experiment import ExperimentConfig, load_experiment

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


def test_paper_config_states_the_papers_protocol():
    exp = load_experiment(CONFIGS / "paper.yaml")
    baseline = exp.stage_train("baseline")
    assert (baseline.arch, baseline.optimizer, baseline.lr, baseline.batch_size) == ("resnet50", "adam", 1e-4, 16)
    assert (baseline.max_epochs, baseline.patience, baseline.image_size) == (100, 3, 224)
    trial = exp.stage_train("search_train")
    assert (trial.batch_size, trial.max_epochs) == (64, 10)
    s = exp.search
    assert s.sparsities == (0.1, 0.2, 0.3, 0.4)
    assert (s.trials_per_sparsity, s.lr_min, s.lr_max, s.optimizers) == (5, 1e-6, 1e-4, ("adam", "sgd"))
    assert s.scheduler == "none"
    assert exp.stage_train("finetune").max_epochs == 100


def test_demo_config_is_small():
    exp = load_experiment(CONFIGS / "demo.yaml")
    assert exp.data.demo and exp.train.arch == "resnet18"
    assert exp.resources.gpus_per_trial == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.trials=3", "search.trials"),
        ("search.sparsities=[0.1, 1.5]", "search.sparsities"),
        ("baseline.lrr=0.1", "baseline"),
        ("train.optimizer=rmsprop", "optimizer"),
        ("search.lr_min=1e-3", "lr_min"),
        ("resources.gpus_per_trial=many", "resources.gpus_per_trial"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_experiment(CONFIGS / "paper.yaml", [override])


def test_overrides_reach_the_stage_configs():
    exp = load_experiment(CONFIGS / "paper.yaml", ["search_train.max_epochs=2", "train.seed=7"])
    assert exp.stage_train("search_train").max_epochs == 2
    assert exp.stage_train("baseline").seed == 7


def test_stage_train_applies_trial_parameters():
    cfg = ExperimentConfig().stage_train("search_train", optimizer="sgd", lr=3e-5)
    assert (cfg.optimizer, cfg.lr) == ("sgd", 3e-5)


def test_pixels_decoded_once_have_one_size_for_every_stage():
    assert load_experiment(CONFIGS / "demo.yaml").data.pixels
    with pytest.raises(ConfigError, match=r"finetune\.image_size: 256 differs from train\.image_size \(224\)"):
        load_experiment(CONFIGS / "paper.yaml", ["data.pixels=true", "finetune.image_size=256"])
    load_experiment(CONFIGS / "paper.yaml", ["finetune.image_size=256"])  # without pixels, stages may differ


def test_detector_train_blames_the_set_or_the_file_too(tmp_path):
    from detector.commands.train import load_train_config

    with pytest.raises(ConfigError, match=r"^--set lr=abc: lr: expected a number, got 'abc'$"):
        load_train_config(None, ["lr=abc"])
    config = tmp_path / "train.yaml"
    config.write_text("batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"^{config}: batch_size: 0 is not in \[1, inf\)$"):
        load_train_config(config, ["lr=1.0e-3"])


def test_stages_take_their_own_resources_where_they_set_them():
    exp = load_experiment(CONFIGS / "paper.yaml", ["resources.baseline.workers_per_trial=4",
                                                  "resources.finetune.workers_per_trial=2",
                                                  "resources.search.gpus_per_trial=0.25",
                                                  "resources.search.cpus_per_trial=2"])
    r = exp.resources
    assert [(r.stage(s).workers_per_trial, r.stage(s).gpus_per_trial, r.stage(s).cpus_per_trial)
            for s in ("baseline", "search", "finetune", "evaluate")] == [(4, 1, 8), (1, 0.25, 2), (2, 1, 8), (1, 1, 8)]
    assert r.stage("baseline").data_parallel and not r.stage("search").data_parallel
    assert (r.key("search", "gpus_per_trial"), r.key("baseline", "gpus_per_trial")) == (
        "resources.search.gpus_per_trial", "resources.gpus_per_trial")


@pytest.mark.parametrize(
    "overrides, message",
    [
        # batch_size is the global batch: it must split evenly over a trial's workers
        (["resources.workers_per_trial=3"],
         r"baseline\.batch_size: batch_size 16 is not divisible by the 3 ranks .* use 15 or 18 "
         r"\(resources\.workers_per_trial: 3\)"),
        (["resources.finetune.workers_per_trial=3", "finetune.batch_size=64"],
         r"finetune\.batch_size: batch_size 64 .* \(resources\.finetune\.workers_per_trial: 3\)"),
        # a data-parallel worker has a GPU of its own or none
        (["resources.search.workers_per_trial=2", "resources.search.gpus_per_trial=0.5"],
         r"resources\.search\.gpus_per_trial: 0\.5 with 2 workers per trial .* set it to 1 or 0"),
        (["resources.gpus_per_trial=1.5"], r"resources\.gpus_per_trial: 1\.5 is neither a share of one GPU"),
        (["resources.baseline.workers_per_trial=0"], r"resources\.baseline\.workers_per_trial: 0 is not in \[1, inf\)"),
        (["resources.evaluate.workers_per_trial=2"], r"unknown key\(s\) resources\.evaluate"),
    ],
)
def test_bad_resources_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(CONFIGS / "paper.yaml", overrides)


def test_a_quarter_gpu_per_search_trial_is_valid_with_whole_gpus_elsewhere():
    exp = load_experiment(CONFIGS / "paper.yaml", ["resources.search.gpus_per_trial=0.25"])
    assert exp.resources.stage("search").gpus_per_trial == 0.25 and exp.resources.stage("finetune").gpus_per_trial == 1


def test_a_run_folder_started_before_a_key_existed_still_resumes(tmp_path):
    """A run saved by an older version lacks keys added since (at their defaults they change nothing): it
    resumes. A value that differs is still refused."""
    from detector.config import load_yaml, save_yaml
    from detector.job.pipeline import check_run_config
    from detector.job.runfolder import RunFolder

    exp = load_experiment(CONFIGS / "demo.yaml")
    run = RunFolder(tmp_path)
    (tmp_path / "models").mkdir()  # it has results under its config
    save_yaml(exp, run.config)
    older = load_yaml(run.config)
    del older["resources"]["workers_per_trial"]  # as saved before the data-parallel stages
    save_yaml(older, run.config)
    check_run_config(exp, run)

    older["resources"]["cpus_per_trial"] = 1.0
    save_yaml(older, run.config)
    with pytest.raises(ConfigError, match=r"different config \(sections that differ: resources\)"):
        check_run_config(exp, run)
