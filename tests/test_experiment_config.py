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


def test_the_dense_control_is_on_in_every_shipped_config_and_searched_last():
    """sparsity 0 (dense-ft) joins the searches and fine-tunes after the pruned ones, so each pruned search keeps
    its sampler's seed (seed + its position); false runs exactly the paper's searches."""
    assert ExperimentConfig().search.control
    for config in sorted(CONFIGS.glob("*.yaml")):
        search = load_experiment(config).search
        assert search.control, config
        assert search.searched_sparsities() == (*search.sparsities, 0.0)
    paper = load_experiment(CONFIGS / "paper.yaml", ["search.control=false"]).search
    assert paper.searched_sparsities() == paper.sparsities == (0.1, 0.2, 0.3, 0.4)


def test_a_run_folder_saved_before_the_control_existed_resumes_without_one(tmp_path):
    """A new config without `search.control` has the control (the default); a run folder's experiment.yaml
    without it was saved before the key existed, ran without a control, and resumes so: no control in its
    pending work, and no "different config" error. Turning it on there is a different config."""
    from detector.config import load_yaml, save_yaml
    from detector.job.experiment import load_saved_experiment
    from detector.job.pipeline import check_run_config, pending_work
    from detector.job.runfolder import RunFolder

    run = RunFolder(tmp_path / "run")
    (run.root / "models").mkdir(parents=True)  # it has results under its config
    older = load_yaml(CONFIGS / "demo.yaml")
    del older["search"]["control"]
    save_yaml(older, run.config)
    assert load_experiment(run.config).search.control  # read as a new config: the default

    saved = load_saved_experiment(run.config)  # what `detector run --resume` reads
    assert not saved.search.control
    check_run_config(saved, run)
    todo = pending_work(saved, run.root, ["search", "finetune", "evaluate"])
    assert todo["search"] == todo["finetune"] == [0.1, 0.2, 0.3, 0.4]
    assert todo["evaluate"] == ["baseline", "prune-10", "prune-20", "prune-30", "prune-40"]
    with pytest.raises(ConfigError, match=r"different config \(sections that differ: search\)"):
        check_run_config(load_experiment(CONFIGS / "demo.yaml"), run)
    del older["search"]  # a hand-written one that left the whole section at its defaults
    save_yaml(older, run.config)
    assert not load_saved_experiment(run.config).search.control


# Each mode's keys were flat in the search section before they had sections of their own; a value for each.
FLAT_KEYS = {
    "frontier_margin": ("frontier", "margin", 0.01), "frontier_resolution": ("frontier", "resolution", 0.05),
    "frontier_parallel": ("frontier", "parallel", 3),
    "objectives": ("pareto", "objectives", ["val_accuracy", "model_bytes"]),
    "pareto_trials": ("pareto", "trials", 8), "pareto_sparsity_min": ("pareto", "sparsity_min", 0.2),
    "pareto_sparsity_max": ("pareto", "sparsity_max", 0.8), "pareto_models": ("pareto", "models", 2),
    "asha_grace_period": ("asha", "grace_period", 3), "asha_reduction_factor": ("asha", "reduction_factor", 3),
}


def paper_with_search(tmp_path, search: dict) -> Path:
    import yaml

    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    data["search"].update(search)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_every_flat_key_is_read_as_its_nested_key(tmp_path):
    assert set(FLAT_KEYS) == set(ExperimentConfig().search.MOVED_KEYS)
    flat = {old: value for old, (_, _, value) in FLAT_KEYS.items()}
    nested: dict = {}
    for section, key, value in FLAT_KEYS.values():
        nested.setdefault(section, {})[key] = value
    exp = load_experiment(paper_with_search(tmp_path, flat))
    assert exp == load_experiment(paper_with_search(tmp_path, nested))
    assert (exp.search.frontier.margin, exp.search.pareto.objectives, exp.search.asha.grace_period) == (
        0.01, ("val_accuracy", "model_bytes"), 3)
    sets = [f"search.{old}={value}" for old, value in flat.items()]
    assert load_experiment(CONFIGS / "paper.yaml", sets) == exp


def test_a_key_in_both_spellings_is_an_error_naming_both(tmp_path):
    config = paper_with_search(tmp_path, {"frontier_margin": 0.01, "frontier": {"margin": 0.02}})
    with pytest.raises(ConfigError, match=rf"^{config}: search\.frontier_margin and search\.frontier\.margin are one "
                                          r"key, in its old and its new spelling; give it once"):
        load_experiment(config)
    with pytest.raises(ConfigError, match=r"^--set search\.pareto_trials=4 and --set search\.pareto\.trials=6: one key"):
        load_experiment(CONFIGS / "paper.yaml", ["search.pareto_trials=4", "search.pareto.trials=6"])


def test_a_set_replaces_a_key_in_either_spelling(tmp_path):
    nested = paper_with_search(tmp_path, {"frontier": {"margin": 0.02}})
    assert load_experiment(nested, ["search.frontier_margin=0.01"]).search.frontier.margin == 0.01
    flat = paper_with_search(tmp_path, {"asha_grace_period": 4})
    assert load_experiment(flat, ["search.asha.grace_period=5"]).search.asha.grace_period == 5


@pytest.mark.parametrize("override, message", [
    ("search.frontier_margin=abc", "search.frontier_margin: expected a number, got 'abc'"),
    ("search.frontier.margin=abc", "search.frontier.margin: expected a number, got 'abc'"),
    ("search.pareto_trials=1", "search.pareto_trials: 1 is not in [2, inf)"),
    ("search.objectives=[val_accuracy, size]", "search.objectives[1]: 'size' is not one of val_accuracy, val_loss"),
    ("search.pareto.objectives=[val_accuracy]", "search.pareto.objectives: needs at least 2 values"),
])
def test_a_bad_mode_value_names_the_key_as_written_and_the_set(override, message):
    with pytest.raises(ConfigError) as e:
        load_experiment(CONFIGS / "paper.yaml", [override])
    assert str(e.value).startswith(f"--set {override}: {message}")


def test_a_mode_s_rules_across_its_keys_apply_only_while_it_is_on():
    """Values are checked against their declarations in every mode (pareto.trials: 1 is refused in grid mode
    too); the rules between a mode's keys only in that mode: a grid search does not refuse a Pareto setting it
    never reads."""
    across = ["search.pareto.models=9", "search.pareto.trials=4"]
    assert load_experiment(CONFIGS / "paper.yaml", across).search.pareto.models == 9  # mode: grid
    with pytest.raises(ConfigError, match=r"^--set search\.mode=pareto: search\.pareto\.models: 9 is more than "
                                          r"search\.pareto\.trials \(4\)"):
        load_experiment(CONFIGS / "paper.yaml", [*across, "search.mode=pareto"])
    with pytest.raises(ConfigError, match=r"search\.pareto_sparsity_min/sparsity_max: need min < max"):
        load_experiment(CONFIGS / "paper.yaml", ["search.mode=pareto", "search.pareto_sparsity_min=0.9",
                                                 "search.pareto.sparsity_max=0.5"])
    assert load_experiment(CONFIGS / "paper.yaml", ["search.asha.grace_period=50"]).search.scheduler == "none"
    with pytest.raises(ConfigError, match=r"search\.asha\.grace_period: 50 is more than search_train\.max_epochs"):
        load_experiment(CONFIGS / "paper.yaml", ["search.asha.grace_period=50", "search.scheduler=asha"])


def test_a_run_folder_saved_with_flat_search_keys_still_resumes(tmp_path):
    """experiment.yaml of a run started before the modes had sections: flat keys. It loads as the same config and
    the run resumes; the config saved now is the nested one."""
    from detector.config import load_yaml, save_yaml
    from detector.job.pipeline import check_run_config
    from detector.job.runfolder import RunFolder

    exp = load_experiment(CONFIGS / "demo.yaml", ["search.mode=frontier", "search.frontier.margin=0.01",
                                                  "search.scheduler=asha", "search.asha.grace_period=1"])
    run = RunFolder(tmp_path)
    (tmp_path / "models").mkdir()  # it has results under its config
    save_yaml(exp, run.config)
    saved = load_yaml(run.config)["search"]
    assert saved["frontier"]["margin"] == 0.01 and "frontier_margin" not in saved
    older = load_yaml(run.config)
    search = older["search"]
    for old, (section, key, _) in FLAT_KEYS.items():
        search[old] = search[section].pop(key)
    for section in ("frontier", "pareto", "asha"):
        del search[section]
    save_yaml(older, run.config)
    check_run_config(exp, run)
    assert load_experiment(run.config) == exp  # what `detector run --resume` reads

    search["frontier_margin"] = 0.02
    save_yaml(older, run.config)
    with pytest.raises(ConfigError, match=r"different config \(sections that differ: search\)"):
        check_run_config(exp, run)
