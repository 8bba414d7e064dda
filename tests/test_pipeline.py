"""The whole job on a real local Ray: four concurrent sparsity searches and the dense control's beside them,
fine-tunes, evaluation, report."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.job.pipeline import pending_work, run
from detector.job.runfolder import BASELINE, CONTROL, RunFolder
from detector.job.status import read_status
from pipeline_helpers import make_tiny_data, tiny_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("data") / "shards")


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    # with the dense control (the default); decoded once, read by every stage
    run(tiny_experiment(data, data={"pixels": True}), run_dir)
    return run_dir


def search_experiment(data: Path, **sections):
    """The tiny experiment of the tests below that run the search alone, about its machinery (ASHA, where Tune
    stores trials), not about the dense control: without its search."""
    return tiny_experiment(data, control=False, **sections)


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "report.json").read_text())


def test_trials_of_different_sparsities_run_at_the_same_time(finished_run):
    trials = report(finished_run)["trials"]
    assert len(trials) == 10 and all(t["status"] == "completed" for t in trials)
    assert sorted(t["sparsity"] for t in trials) == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4]
    overlapping = [(a, b) for a, b in itertools.combinations(trials, 2)
                   if a["sparsity"] != b["sparsity"] and a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "no two trials of different sparsities overlapped in time"


def test_each_sparsity_gets_its_own_best_parameters(finished_run):
    r = report(finished_run)
    best = r["search"]["best"]
    for sparsity in (0.1, 0.2, 0.3, 0.4):
        mine = [t for t in r["trials"] if t["sparsity"] == sparsity]
        top = max(mine, key=lambda t: t["val_accuracy"])
        assert best[f"{sparsity:g}"]["trial_id"] == top["trial_id"]
        model = next(m for m in r["models"] if m["sparsity"] == sparsity)
        assert model["best_params"] == top["params"]
        # the fine-tune really used them
        used = json.loads((finished_run / "models" / f"prune-{round(sparsity * 100)}.json").read_text())["config"]
        assert (used["optimizer"], used["lr"]) == (top["params"]["optimizer"], top["params"]["lr"])


def test_report_holds_every_model_on_every_test_set(finished_run):
    r = report(finished_run)
    assert [m["name"] for m in r["models"]] == ["baseline", "dense-ft", "prune-10", "prune-20", "prune-30", "prune-40"]
    for m in r["models"]:
        assert abs(m["efficiency"]["sparsity"] - m["sparsity"]) < 1e-3
        for name in ("combined_val", "combined_test"):
            metrics = m["metrics"][name]
            assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "auc", "confusion_matrix"}
            assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == metrics["samples"]
        assert "demo" not in m["metrics"]  # the only source: its test set is combined_test, shown once
        if m["sparsity"] > 0:  # the evaluate stage also scored it pruned, before fine-tuning
            assert m["before_finetune"]["status"] == "measured"
            assert 0 <= m["before_finetune"]["metrics"]["combined_test"]["accuracy"] <= 1
    assert r["same_sets"] == {"demo": "combined_test"}
    assert r["run"]["arch"] == "resnet18" and r["run"]["data"]["counts"]
    md = (finished_run / "report" / "report.md").read_text()
    for title in ("Table 3.", "Table 4.", "Table 5.", "Table 6."):
        assert title in md
    for name in ("confusion_matrices", "roc_curves", "accuracy_vs_sparsity", "search_history"):
        assert (finished_run / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("table3_baseline", "table4_best_params", "table5_accuracy", "table6_efficiency", "trials"):
        assert (finished_run / "report" / f"{name}.csv").stat().st_size > 0


def test_every_stage_read_the_pixels_decoded_once(finished_run, data):
    from detector.data.loader import manifest_sha256, read_manifest

    pixels = data.parent / f"{data.name}-pixels-32"
    assert read_manifest(str(pixels))["pixels"]["from"]["manifest_sha256"] == manifest_sha256(str(data))
    from detector.checkpoint import load_checkpoint

    for name in ("baseline", "prune-10", "prune-40"):
        meta = load_checkpoint(finished_run / "models" / f"{name}.pt")["metadata"]
        assert meta["data_manifest_sha256"] == manifest_sha256(str(pixels))


def test_tensorboard_has_a_run_per_trial_and_fine_tune_named_by_what_it_is(finished_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb = finished_run / "tensorboard"
    assert sorted(p.name for p in (tb / "search").iterdir()) == [
        f"s{s}-t{t}" for s in (0, 10, 20, 30, 40) for t in (1, 2)]  # s0: the dense control's
    assert sorted(p.name for p in (tb / "finetune").iterdir()) == ["s0", "s10", "s20", "s30", "s40"]
    runs = sorted(p for p in (tb / "search").iterdir()) + sorted((tb / "finetune").iterdir())
    for run_dir in runs:
        acc = EventAccumulator(str(run_dir))
        acc.Reload()
        assert "val/accuracy" in acc.Tags()["scalars"]
        assert acc.Scalars("val/accuracy")
        # the HParams plugin's data sits in the same run, so TensorBoard relates params to accuracy;
        # what varies between runs comes first (TensorBoard ticks the first columns)
        content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
        # at most five: TensorBoard ticks five by default, and sparsity must be among them
        assert [h.name for h in experiment.hparam_infos] == ["sparsity", "optimizer", "lr", "method", "batch_size"]
        assert [m.name.tag for m in experiment.metric_infos][:2] == ["val/accuracy", "val/best_accuracy"]


def test_the_dense_control_has_the_search_fine_tune_and_evaluation_of_every_sparsity(finished_run):
    """dense-ft: sparsity 0 through the same search (trials s0-t1, s0-t2, its own study) and the same fine-tune
    as every sparsity, from the baseline's weights, with its own best parameters; evaluated like a pruned
    model, its "pruning alone" being the baseline itself."""
    from detector.checkpoint import load_checkpoint

    folder = RunFolder(finished_run)
    results = json.loads(folder.search_results.read_text())
    mine = [t for t in results["trials"] if t["sparsity"] == 0]
    assert sorted(t["name"] for t in mine) == ["search/s0-t1", "search/s0-t2"]
    assert all(t["status"] == "completed" and t["epochs"] == 1 for t in mine)
    best = results["best"]["0"]
    assert best["trial_id"] == max(mine, key=lambda t: t["objective"])["trial_id"]

    fit = json.loads(folder.model_summary(CONTROL).read_text())  # what the report reads
    assert fit["epochs_run"] == 1 and fit["best_epoch"] == 1
    assert (fit["config"]["max_epochs"], fit["config"]["optimizer"], fit["config"]["lr"]) == (
        1, best["params"]["optimizer"], best["params"]["lr"])
    meta = load_checkpoint(folder.model(CONTROL))["metadata"]
    assert meta["pruning"]["method"] == "none" and meta["init"] == str(folder.model(BASELINE))

    evaluation = json.loads(folder.evaluation(CONTROL).read_text())
    baseline = json.loads(folder.evaluation(BASELINE).read_text())
    assert evaluation["name"] == CONTROL and evaluation["pruning"]["method"] == "none"
    assert evaluation["pruning"]["sparsity"] == 0 and folder.predictions(CONTROL).is_file()
    before = evaluation["before_finetune"]
    assert before["status"] == "measured" and before["metrics"] == baseline["metrics"]
    assert "semistructured" in baseline and "semistructured" not in evaluation  # the dense architecture's: once

    rows = read_status(folder)["trial_stages"]
    assert [r["sparsity"] for r in rows["finetune"]["trials"] if r["name"] == "finetune/s0"] == [0.0]
    assert {r["name"]: r["sparsity"] for r in rows["evaluate"]["trials"]} == {
        "evaluate/baseline": 0.0, "evaluate/dense-ft": 0.0, "evaluate/prune-10": 0.1, "evaluate/prune-20": 0.2,
        "evaluate/prune-30": 0.3, "evaluate/prune-40": 0.4}
    assert report(finished_run)["run"]["search"]["control"] is True


def test_status_says_the_run_finished_and_lists_every_trial(finished_run):
    out = subprocess.run([sys.executable, "-m", "detector.cli", "status", str(finished_run), "--json"],
                         capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    assert status["state"] == "finished" and set(status["stages"].values()) == {"done"}
    assert sorted(status["trial_stages"]) == ["baseline", "evaluate", "finetune", "search"]
    search = status["trial_stages"]["search"]["trials"]
    assert sorted(r["name"] for r in search) == [f"search/s{s}-t{t}" for s in (0, 10, 20, 30, 40) for t in (1, 2)]
    assert all(r["state"] == "done" and r["epochs"] == r["epochs_planned"] == 1 for r in search)
    assert out.stderr == ""  # nothing from Tune's internals
    text = subprocess.run([sys.executable, "-m", "detector.cli", "status", str(finished_run)],
                          capture_output=True, text=True, check=True).stdout
    assert text.startswith(f"run {finished_run}: finished") and "val_accuracy (last epoch: the objective)" in text


def test_a_finished_run_is_reused_not_run_again(finished_run):
    from detector.config import from_dict, load_yaml
    from detector.job.experiment import ExperimentConfig

    # the config the run saved beside its results
    exp = from_dict(ExperimentConfig, load_yaml(finished_run / "experiment.yaml"))
    assert not any(pending_work(exp, finished_run, ["baseline", "search", "finetune", "evaluate"]).values())
    before = sorted(p.name for p in (finished_run / "tune" / "search").iterdir())
    run(exp, finished_run)  # starts no Ray at all
    assert sorted(p.name for p in (finished_run / "tune" / "search").iterdir()) == before


def test_a_run_folder_refuses_a_different_config(finished_run, data):
    from detector.config import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        run(tiny_experiment(data, search={"trials_per_sparsity": 3}), finished_run)


def test_asha_stops_weak_trials_and_saves_trial_epochs(data, tmp_path):
    from pipeline_helpers import write_untrained_baseline

    run_dir = tmp_path / "run"
    # val_loss, not val_accuracy: on tiny data accuracies tie at chance, and ASHA cannot rank ties.
    exp = search_experiment(data, search={"sparsities": [0.2], "trials_per_sparsity": 6, "scheduler": "asha",
                                        "metric": "val_loss", "direction": "min",
                                        "asha": {"grace_period": 1, "reduction_factor": 2}},
                              search_train={"max_epochs": 4})
    write_untrained_baseline(run_dir, exp)
    run(exp, run_dir, stages=["search", "report"])
    results = json.loads((run_dir / "search" / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 6 and all(t["status"] == "completed" for t in trials)
    assert results["epochs_budget"] == 24 and results["epochs_run"] == sum(t["epochs"] for t in trials) < 24
    assert any(t["epochs"] < 4 for t in trials), "ASHA stopped no trial"
    assert results["best"]["0.2"]["objective"] == min(t["objective"] for t in trials)
    assert "asha" in (run_dir / "report" / "report.md").read_text()


def test_trial_storage_can_live_outside_the_run_folder(data, tmp_path):
    """As with storage: s3://bucket/runs on a cluster; here a file:// URI stands in for the bucket. The trials
    checkpointed there, and the complete stage dropped those weights there too."""
    from pipeline_helpers import write_untrained_baseline

    from detector.job.runfolder import RunFolder
    from detector.job.status import read_status

    run_dir, remote = tmp_path / "run", tmp_path / "bucket"
    exp = search_experiment(data, search={"sparsities": [0.1, 0.2], "trials_per_sparsity": 1},
                            storage=f"file://{remote}")
    write_untrained_baseline(run_dir, exp)
    run(exp, run_dir, stages=["search"])
    assert list((remote / "run" / "search").glob("experiment_state-*.json"))
    results = list((remote / "run" / "search").glob("*/result.json"))
    assert len(results) == 2
    assert all(json.loads(r.read_text().splitlines()[-1])["checkpoint_dir_name"] == "checkpoint_000000"
               for r in results)
    assert not list((remote / "run" / "search").glob("*/checkpoint_*"))
    assert not (run_dir / "tune").exists()
    trials = read_status(RunFolder(run_dir))["trial_stages"]["search"]["trials"]
    assert sorted(t["sparsity"] for t in trials) == [0.1, 0.2] and all(t["state"] == "done" for t in trials)


def test_every_search_trial_is_in_the_run_s_optuna_storage(finished_run):
    """`optuna-dashboard RUN/search/optuna.journal` shows what Optuna's own API reads here."""
    import optuna

    journal = finished_run / "search" / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    results = json.loads((finished_run / "search" / "results.json").read_text())
    for sparsity in (0.0, 0.1, 0.2, 0.3, 0.4):
        study = optuna.load_study(study_name=f"sparsity-{sparsity:g}", storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        mine = sorted(t["objective"] for t in results["trials"] if t["sparsity"] == sparsity)
        assert sorted(t.value for t in study.trials) == pytest.approx(mine)


def test_a_complete_stage_keeps_no_trial_weights(finished_run):
    """Once a stage's outputs exist the pipeline drops its trials' checkpoints (`stages.drop_checkpoints`):
    nothing reads them again. Status, the report and a re-run (reused, no Ray) work without them."""
    from detector.config import from_dict, load_yaml
    from detector.job.experiment import ExperimentConfig
    from detector.report import write_report

    assert list((finished_run / "tune" / "search").iterdir())  # the trials' results stay
    assert not list((finished_run / "tune").rglob("*.pt")) and not list((finished_run / "tune").rglob("checkpoint_*"))
    assert read_status(RunFolder(finished_run))["state"] == "finished"
    write_report(finished_run)
    exp = from_dict(ExperimentConfig, load_yaml(finished_run / "experiment.yaml"))
    assert not any(pending_work(exp, finished_run, ["baseline", "search", "finetune", "evaluate"]).values())
