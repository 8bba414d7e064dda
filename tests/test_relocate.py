"""A run folder carries its whole state: copied (`cp -a`) or moved (`mv`) while stopped, it resumes where it
is, and never writes into the folder it came from. Tune's saved state holds the Optuna journal's absolute
path; the resumed search opens the journal of the folder it runs in."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from detector.config import save_yaml
from detector.job.runfolder import RunFolder
from driver_helpers import resume_search, stop_during_search, tree_digest
from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline

SPARSITIES = [0.2, 0.4]
TRIALS = 3  # per sparsity: two trials wait at a time on 2 CPUs, so the last ones are made after the resume
EPOCHS = 2  # per trial: a trial stopped after its first epoch has an epoch left to run


def studies(journal: Path) -> dict[str, list[str]]:
    """Study name -> the states of its trials, read from a copy of the journal (reading never writes)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return {s.study_name: [t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
            for s in optuna.get_all_study_summaries(storage)}


def assert_finished_once(run_dir: Path) -> None:
    """Every search trial in the results once, done, with its whole budget; the studies hold exactly the
    trials Tune ran, all complete."""
    results = json.loads(RunFolder(run_dir).search_results.read_text())
    trials = results["trials"]
    assert sorted(t["name"] for t in trials) == sorted({t["name"] for t in trials})
    assert sorted((t["sparsity"], t["trial"]) for t in trials) == [(s, n) for s in SPARSITIES
                                                                   for n in range(1, TRIALS + 1)]
    assert all(t["status"] == "completed" and t["epochs"] == EPOCHS for t in trials), trials
    journal = RunFolder(run_dir).optuna_journal
    assert studies(journal) == {f"sparsity-{s:g}": ["COMPLETE"] * TRIALS for s in SPARSITIES}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_copied_and_a_moved_run_folder_resume_where_they_are(tmp_path):
    data = make_tiny_data(tmp_path / "shards")
    exp = tiny_experiment(data, control=False, search={"sparsities": SPARSITIES, "trials_per_sparsity": TRIALS},
                          search_train={"max_epochs": EPOCHS})
    config = tmp_path / "tiny.yaml"
    save_yaml(exp, config)
    run_dir = tmp_path / "run"
    write_untrained_baseline(run_dir, exp)
    made = stop_during_search(config, run_dir, tmp_path / "stop.log")
    assert len(made) < len(SPARSITIES) * TRIALS, "every trial was made before the stop: none is made by a resume"
    assert str(run_dir) in (run_dir / "tune" / "search" / "tuner.pkl").read_bytes().decode("latin-1"), \
        "Tune's saved state no longer holds the run folder's path: this test no longer tests what it says"

    # cp -a RUN COPY, then resume the copy: RUN stays as it was, byte for byte.
    before = tree_digest(run_dir)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    resumed = resume_search(copy, tmp_path / "copy.log")
    assert resumed.proc.returncode == 0, resumed.output()[-3000:]
    assert tree_digest(run_dir) == before, "resuming the copy changed the original"
    assert_finished_once(copy)

    # mv RUN MOVED, then resume it: it finishes, and nothing appears at the old path.
    moved = tmp_path / "moved"
    os.rename(run_dir, moved)
    resumed = resume_search(moved, tmp_path / "moved.log")
    assert resumed.proc.returncode == 0, resumed.output()[-3000:]
    assert not run_dir.exists()
    assert_finished_once(moved)


def searcher(journal: Path) -> "SparsitySearcher":
    from ray import tune

    from detector.job.tune.searchers import SparsitySearcher

    return SparsitySearcher([0.1], trials_per_sparsity=2, space={"lr": tune.loguniform(1e-6, 1e-4)},
                            metric="val_accuracy", seed=0, tpe_startup_trials=1, storage=str(journal))


def test_a_new_search_sent_whole_to_where_tunes_loop_runs_asks_its_studies(tmp_path):
    """Through Ray Client, Tune's loop runs on the cluster: the new searcher is pickled there before any
    trial (no driver restores anything there), and asks its own studies for trials."""
    import pickle

    import ray.cloudpickle as cloudpickle

    journal = tmp_path / "run" / "optuna.journal"
    sent = pickle.loads(cloudpickle.dumps(searcher(journal)))
    assert sent.suggest("t0")["sparsity"] == 0.1
    assert studies(journal) == {"sparsity-0.1": ["RUNNING"]}


def test_a_restored_searcher_opens_the_journal_it_is_driven_with(tmp_path):
    """What Tune pickles (tuner.pkl) holds the journal's path where the search began; restored beside a
    copy of that journal, the searcher writes to the copy, and the original is left as it was."""
    import pickle

    import ray.cloudpickle as cloudpickle

    from detector.job.tune.searchers import driving

    old, new = tmp_path / "run" / "optuna.journal", tmp_path / "copy" / "optuna.journal"
    first = searcher(old)
    first.suggest("t0")
    first.suggest("t1")
    first.on_trial_complete("t0", {"val_accuracy": 0.6, "training_iteration": 1})
    first.save(str(tmp_path / "searcher-state.json"))
    pickled = cloudpickle.dumps(first)
    new.parent.mkdir()
    shutil.copy2(old, new)
    before = old.read_bytes()

    with driving(searcher(new), str(tmp_path / "copy" / "tune" / "search"), restoring=True):
        # read back but not restored (Tune failed to, and would start the experiment over): it asks nothing
        with pytest.raises(ValueError, match="could not restore the search's saved state"):
            pickle.loads(pickled).suggest("t2")
        restored = pickle.loads(pickled)
        restored.restore(str(tmp_path / "searcher-state.json"))
    restored.on_trial_complete("t1", {"val_accuracy": 0.7, "training_iteration": 1})
    assert old.read_bytes() == before
    assert studies(new) == {"sparsity-0.1": ["COMPLETE", "COMPLETE"]}
