"""Damaged state in a run folder is named in one line, with what to do, and a failed command never makes it
worse: a journal cut mid-record is left as it was until `detector repair` cuts it back, and the run then
resumes to its end; a folder whose outputs lost their config is refused; garbage in a state file is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import save_yaml
from detector.job.runfolder import RunFolder
from driver_helpers import Driver, resume_search, stop_during_search
from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline


def detector(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                          timeout=120)


def error_line(output: str) -> str:
    """The error a command ended with: its one line, and nothing of a traceback before it."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "error:" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_cut_journal_is_named_left_alone_and_repaired_then_the_run_resumes(tmp_path):
    data = make_tiny_data(tmp_path / "shards")
    exp = tiny_experiment(data, control=False, search={"sparsities": [0.2, 0.4], "trials_per_sparsity": 2},
                          search_train={"max_epochs": 2})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    run_dir = tmp_path / "run"
    write_untrained_baseline(run_dir, exp)
    stop_during_search(config, run_dir, tmp_path / "stop.log")

    # The journal cut in the middle of its last record, as a driver killed while writing leaves it.
    journal = RunFolder(run_dir).optuna_journal
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    cut = whole[:last + (len(whole) - last) // 2]
    journal.write_bytes(cut)

    failed = Driver(["run", "--resume", "--out", str(run_dir), "--stages", "search"], tmp_path / "failed.log")
    assert failed.wait(timeout=300) == 2
    line = error_line(failed.output())
    assert str(journal) in line and f"detector repair {run_dir}" in line, line
    assert journal.read_bytes() == cut, "the failed resume wrote to the damaged journal"

    repaired = detector("repair", str(run_dir))
    assert repaired.returncode == 0, repaired.stderr
    records = cut.count(b"\n")
    assert f"kept its {records} complete records" in repaired.stdout, repaired.stdout
    backups = list(journal.parent.glob("optuna.journal.damaged-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == cut and str(backups[0]) in repaired.stdout
    assert journal.read_bytes() == whole[:last]

    resumed = resume_search(run_dir, tmp_path / "resumed.log")
    assert resumed.proc.returncode == 0, resumed.output()[-3000:]
    results = json.loads(RunFolder(run_dir).search_results.read_text())
    assert len(results["trials"]) == 4 and sorted(results["best"]) == ["0.2", "0.4"]


def test_outputs_without_their_config_are_refused(tmp_path):
    """With experiment.yaml gone, nothing says which config made the outputs: a run with another one
    (here another architecture) would reuse them under its name."""
    run_dir = tmp_path / "run"
    exp = tiny_experiment(tmp_path / "shards")
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "models" / "baseline.pt").write_bytes(b"weights")
    refused = detector("run", "--config", str(config), "--out", str(run_dir), "--set", "train.arch=resnet34")
    assert refused.returncode == 2
    line = error_line(refused.stderr)
    assert f"{RunFolder(run_dir).config}: missing" in line and "models" in line, line
    assert not RunFolder(run_dir).config.exists()


def test_garbage_in_a_state_file_is_named(tmp_path):
    run_dir = tmp_path / "run"
    folder = RunFolder(run_dir)
    exp = tiny_experiment(tmp_path / "shards", search={"mode": "pareto", "pareto": {"trials": 2, "models": 1}})
    config = tmp_path / "pareto.yaml"
    save_yaml(exp, config)
    save_yaml(exp, folder.config)

    # a status table, as `detector status` reads it
    folder.stage_status("search").parent.mkdir(parents=True)
    folder.stage_status("search").write_text('{"stage": "search", "trials": [')
    status = detector("status", str(run_dir))
    assert status.returncode == 2
    assert str(folder.stage_status("search")) in error_line(status.stderr)

    # the search's results, which a Pareto run reads to know its models
    folder.search_results.parent.mkdir(parents=True)
    folder.search_results.write_bytes(b"\x00\x01garbage")
    resumed = detector("run", "--resume", "--out", str(run_dir), "--stages", "finetune")
    assert resumed.returncode == 2
    line = error_line(resumed.stderr)
    assert str(folder.search_results) in line and "damaged" in line, line

    # the saved config itself: resuming reads it, and so does a run that checks its config against it
    folder.config.write_text("train: {arch: resnet18\nsearch: [")
    for args in (["--resume"], ["--config", str(config)]):
        again = detector("run", *args, "--out", str(run_dir))
        assert again.returncode == 2
        line = error_line(again.stderr)
        assert str(folder.config) in line and "not valid YAML at line 2" in line, line


def test_a_search_whose_journal_lost_its_last_trials_to_a_repair_goes_on(tmp_path):
    """The searcher's state was saved after records that a cut journal lost: the trials Tune was told of but
    whose Optuna trials are gone are finished without telling their study, and those whose results were lost
    are failed in it; the search goes on to its end."""
    import optuna
    from ray import tune

    from detector.job.repair import check_journal, repair_journal
    from detector.job.tune import SparsitySearcher

    journal, saved = tmp_path / "optuna.journal", str(tmp_path / "searcher-state.json")

    def searcher() -> SparsitySearcher:
        return SparsitySearcher([0.1, 0.2], trials_per_sparsity=2, space={"lr": tune.loguniform(1e-6, 1e-4)},
                                metric="val_accuracy", seed=0, tpe_startup_trials=1, storage=str(journal))

    s = searcher()
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val_accuracy": 0.6, "training_iteration": 1})
    s.save(saved)
    # cut in the middle of the record that made t2's Optuna trial: t0's result went with it
    records = journal.read_bytes().splitlines(keepends=True)
    last_made = max(i for i, r in enumerate(records) if b'"op_code":4' in r)
    journal.write_bytes(b"".join(records[:last_made]) + records[last_made][:20])
    with pytest.raises(ValueError, match="detector repair"):
        check_journal(journal)
    assert repair_journal(journal).kept == last_made

    resumed = searcher()
    resumed.restore(saved)
    resumed.on_trial_complete("t2", {"val_accuracy": 0.7, "training_iteration": 1})  # no Optuna trial: not told
    resumed.on_trial_complete("t1", {"val_accuracy": 0.5, "training_iteration": 1})
    resumed.suggest("t3")
    resumed.on_trial_complete("t3", {"val_accuracy": 0.8, "training_iteration": 1})
    assert resumed.suggest("t4") == SparsitySearcher.FINISHED
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    states = {st.study_name: sorted(t.state.name for t in optuna.load_study(study_name=st.study_name,
                                                                            storage=storage).trials)
              for st in optuna.get_all_study_summaries(storage)}
    # t0 and t2 were 0.1's (round robin): t0's result lost, t2's trial lost; 0.2's t1 and t3 told as usual
    assert states == {"sparsity-0.1": ["FAIL"], "sparsity-0.2": ["COMPLETE", "COMPLETE"]}
