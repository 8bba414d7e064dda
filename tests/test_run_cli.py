"""`detector run` refuses bad input at once, with a message that names what is wrong (no Ray started)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PAPER = str(Path(__file__).parents[1] / "jobs" / "configs" / "paper.yaml")


def detector(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--config", PAPER, "--set", "search.bogus=1"], "unknown key(s) search.bogus"),
        (["run", "--config", PAPER, "--stages", "baseline,bogus"], "unknown stage(s) ['bogus']"),
        (["run", "--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["run"], "--config is required"),
        (["run", "--resume"], "--resume needs --out"),
        (["run", "--resume", "--out", "nowhere"], "is nowhere a run folder"),
        (["run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards",
          "--set", "data.faces140k=/no/such/folder"], "/no/such/folder: 140k Real and Fake Faces folder not found"),
    ],
)
def test_bad_input_fails_with_a_message_naming_it(tmp_path, args, message):
    if "--out" not in args and "--resume" not in args:
        args = [*args, "--out", str(tmp_path / "run")]
    result = detector(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_start_does_not_lock_the_run_folder_to_its_config(tmp_path):
    out = str(tmp_path / "run")
    detector("run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards",
             "--set", "data.faces140k=/no/such/folder", "--out", out, cwd=tmp_path)
    again = detector("run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards2",
                     "--set", "data.faces140k=/no/such/folder2", "--out", out, cwd=tmp_path)
    assert "/no/such/folder2" in again.stderr and "different config" not in again.stderr


# Each value loaded without error before, and then started work (an import, Ray, a whole baseline) or
# never failed at all. Every one must now stop `detector run` at load, naming the key and the --set.
BAD_VALUES = {
    "evaluate.batch_size=0": "evaluate.batch_size: 0 is not in [1, inf)",
    "search.metric=val_acc": "search.metric: 'val_acc' is not one of val_accuracy, val_loss",
    "train.image_size=100000": "train.image_size: 100000 is not in [16, 1024]",
    "resources.cpus_per_trial=-1": "resources.cpus_per_trial: -1.0 is not in (0, inf)",
    "resources.local_num_cpus=-4": "resources.local_num_cpus: -4 is not in [0, inf)",
    "resources.gpus_per_trial=-1": "resources.gpus_per_trial: -1.0 is not in [0, inf)",
    "search.tpe_startup_trials=-1": "search.tpe_startup_trials: -1 is not in [0, inf)",
    "search.lr_max=.inf": "search.lr_max: expected a finite number, got inf",
    "name=../../etc": "name: '../../etc' is not a plain folder name",
    # a mode's keys, in their sections or in the flat spelling of older configs: named as written
    "search.frontier_margin=abc": "search.frontier_margin: expected a number, got 'abc'",
    "search.frontier.margin=abc": "search.frontier.margin: expected a number, got 'abc'",
    "search.asha.grace_period=0": "search.asha.grace_period: 0 is not in [1, inf)",
    "search.asha_grace_period=0": "search.asha_grace_period: 0 is not in [1, inf)",
    "search.asha_reduction_factor=1": "search.asha_reduction_factor: 1 is not in [2, inf)",
    "search.scheduler=asha --set search.asha_grace_period=11":
        "search.asha_grace_period: 11 is more than search_train.max_epochs (10)",
    "train.lr=abc": "train.lr: expected a number, got 'abc'",
    "train.lr=.nan": "train.lr: expected a finite number, got nan",
    "train.seed=-1": "train.seed: -1 is not in [0, 2.14748e+09]",
    "train.num_workers=-1": "train.num_workers: -1 is not in [0, inf)",
    "baseline.max_epochs=0": "baseline.max_epochs: 0 is not in [1, inf)",
    "search.sparsities=[0.1, 1.0]": "search.sparsities[1]: 1.0 is not in (0, 1)",
    "search.metric=val_loss": "search.direction: max would look for the worst val_loss; use direction: min",
    "search.lr_min=1.0e-3": "search.lr_min/lr_max: need lr_min < lr_max",
    "resources.max_failures=-2": "resources.max_failures: -2 is not in [-1, inf)",
    "resources.max_concurrent_trials=-1": "resources.max_concurrent_trials: -1 is not in [0, inf)",
    "evaluate.bootstrap=0": "evaluate.bootstrap: 0 is not in [1, inf)",
    "evaluate.concurrent_trials=0": "evaluate.concurrent_trials: 0 is not in [1, inf)",
    "data.seed=-3": "data.seed: -3 is not in [0, 2.14748e+09]",
    "data.path=''": "data.path: '' is not a non-empty string",
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad value through `detector run --set`, in one process, which then says whether Ray was imported."""
    root = tmp_path_factory.mktemp("bad_values")
    script = f"""
import contextlib, io, json, sys
from detector.cli import main
cases = {list(BAD_VALUES)!r}
results = {{}}
for i, case in enumerate(cases):
    err = io.StringIO()
    sets = [arg for item in case.split(" --set ") for arg in ("--set", item)]
    with contextlib.redirect_stderr(err):
        status = main(["run", "--config", {PAPER!r}, *sets, "--out", f"run{{i}}"])
    results[case] = {{"status": status, "stderr": err.getvalue(), "run_folder": f"run{{i}}"}}
print(json.dumps({{"results": results, "ray_imported": "ray" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_stops_the_run_at_load_naming_the_key_and_the_set(bad_runs, case):
    root, out = bad_runs
    result = out["results"][case]
    assert result["status"] == 2
    last_set = case.split(" --set ")[-1]
    assert result["stderr"].startswith(f"detector run: error: --set {last_set}: {BAD_VALUES[case]}")
    assert not (root / result["run_folder"]).exists()  # nothing was started: not even the run folder
    assert not out["ray_imported"]  # ...and Ray was never imported, let alone started


def test_a_bad_value_in_the_file_blames_the_file_and_a_set_may_repair_it(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(Path(PAPER).read_text().replace("lr: 1.0e-4", "lr: fast", 1))
    from detector.config import ConfigError
    from detector.job.experiment import load_experiment

    with pytest.raises(ConfigError, match=rf"^{config}: train\.lr: expected a number, got 'fast'$"):
        load_experiment(config, ["search.trials_per_sparsity=2"])
    assert load_experiment(config, ["train.lr=3.0e-4"]).train.lr == 3e-4


def test_resuming_a_run_saved_before_the_dense_control_keeps_it_without_one(tmp_path):
    """`detector run --resume` reads the run folder's own config as saved: a run started before
    `search.control` existed had no control and goes on without one (its config is saved so, explicitly).
    (Asking for the control there is another config, refused: test_experiment_config.py.)"""
    import yaml

    from detector.job.runfolder import RunFolder

    run = RunFolder(tmp_path / "run")
    (run.root / "models").mkdir(parents=True)  # it has results under its config
    older = yaml.safe_load((Path(PAPER).parent / "demo.yaml").read_text())
    del older["search"]["control"]
    run.config.write_text(yaml.safe_dump(older))

    # the report stage alone: nothing to train, and nothing to report on yet
    resumed = detector("run", "--resume", "--out", str(run.root), "--stages", "report", cwd=tmp_path)
    assert "neither evaluations (eval/) nor search results" in resumed.stderr
    assert "different config" not in resumed.stderr
    assert yaml.safe_load(run.config.read_text())["search"]["control"] is False
