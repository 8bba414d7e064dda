"""What a person reads while `detector run` works: a line when each stage starts and ends (how long, what it
made), the search's winner per sparsity, a progress line per Tune stage; Tune's tables and the libraries'
chatter only with `detector -v`."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from console_helpers import run_detector, tiny_search_config
from detector.job.console import duration, winners
from detector.job.tune.progress import StageProgress, summarize

# Tune's boxed tables (its newer output, and its older CLIReporter), its checkpoint lines, raw result keys
TUNE_OUTPUT = ("╭", "+---", "Checkpoint successfully created", "time_now", "Trial status", "== Status ==",
               "A new study created")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run (baseline and search) as a user starts it, then its fine-tune with -v."""
    root = tmp_path_factory.mktemp("console")
    config = tiny_search_config(root)
    out = str(root / "run")
    plain = run_detector("run", "--config", str(config), "--out", out, "--stages", "baseline,search", cwd=root)
    assert plain.returncode == 0, plain.output[-4000:]
    verbose = run_detector("-v", "run", "--config", str(config), "--out", out, "--stages", "finetune", cwd=root)
    assert verbose.returncode == 0, verbose.output[-4000:]
    return plain, verbose


@pytest.mark.ray
@pytest.mark.slow  # two tiny runs, three trials: ~2 min on 2 loaded cores
def test_the_console_outlines_the_run_and_names_the_winners(runs):
    plain, _ = runs
    out = plain.output
    assert re.search(r"baseline: starts: resnet18 at 32 px, up to 2 epochs", out), out
    assert re.search(r"baseline: done in \d+ (s|min \d+ s): \S+/models/baseline\.pt \(best val accuracy 0\.\d{4} "
                     r"at epoch \d\)", out), out
    assert "search: starts: 1 trial (1 sparsity x 1), 1 trial-epoch, judged by val_accuracy" in out
    assert re.search(r"search: done in .*: 1 trial, 1 study, 1 trial-epoch, best per sparsity in "
                     r"\S+/search/results\.json", out), out
    assert re.search(r"search: best at sparsity 0\.5: val_accuracy \d\.\d{4} \((adam|sgd), lr [\d.e-]+, "
                     r"trial search/s50-t\d\)", out), out
    assert re.search(r"run: done in .*", out)
    trial_lines = [line for line in out.splitlines() if "[search/" in line or "[baseline/" in line]
    assert trial_lines and not [line for line in trial_lines if "\x1b[" in line]  # no terminal: no colour codes
    assert out.index("baseline: starts") < out.index("baseline: done") < out.index("search: starts")


@pytest.mark.ray
@pytest.mark.slow
def test_tunes_tables_and_chatter_are_off_by_default_and_back_with_verbose(runs):
    plain, verbose = runs
    assert not [s for s in TUNE_OUTPUT if s in plain.output], plain.output
    assert "== Status ==" in verbose.output and "+---" in verbose.output, verbose.output  # Tune's CLIReporter
    assert "val_accuracy" in verbose.output.split("== Status ==", 1)[1]  # with the search's objective
    assert "Checkpoint successfully created" in verbose.output  # Ray Train's lines in the trial's process
    assert "finetune: starts: 1 model (sparsity 0.5), up to 1 epoch each" in verbose.output


def rows(*trials):
    return [{"state": state, "epochs": epochs, "sparsity": sparsity, "objective": objective}
            for state, epochs, sparsity, objective in trials]


def test_progress_counts_a_finished_trial_in_full_and_keeps_the_best_finished_per_sparsity():
    p = summarize(rows(("done", 1, 0.5, 0.6), ("running", 1, 0.5, 0.7), ("running", 0, 0.2, None),
                       ("failed", 2, 0.2, None)), trials=6, epochs_per_trial=3, maximize=True)
    assert (p.epochs_done, p.epochs_planned, p.running, p.finished, p.trials) == (3 + 1 + 0 + 3, 18, 2, 2, 6)
    assert p.best == {0.5: 0.6}  # the running trial's 0.7 is an epoch's, not yet its objective
    assert summarize(rows(("done", 3, 0.5, 0.4), ("done", 3, 0.5, 0.3)), trials=2, epochs_per_trial=3,
                     maximize=False).best == {0.5: 0.3}


def _table(tmp_path, trials):
    table = tmp_path / "search.json"
    table.write_text(json.dumps({"stage": "search", "trials": trials}))
    return table


def test_without_a_terminal_progress_is_a_plain_line_every_interval(tmp_path, caplog):
    table = _table(tmp_path, rows(("done", 2, 0.5, 0.625), ("running", 1, 0.2, 0.5), ("done", 1, 0.2, 0.5)))
    caplog.set_level(logging.INFO, logger="detector.job.tune.progress")
    with StageProgress(table, "search", trials=4, epochs_per_trial=2, objective="val_accuracy", maximize=True,
                       stream=io.StringIO(), every_s=0.05):
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    line = caplog.records[0].getMessage()
    assert line.startswith("search: 5/8 trial-epochs; 1 running, 2 of 4 trials done; "
                           "best val_accuracy: 0.2 0.5000, 0.5 0.6250; "), line


def test_on_a_terminal_progress_is_a_bar_with_the_time_left(tmp_path):
    table = _table(tmp_path, rows(("running", 0, 0.5, None)))
    stream = io.StringIO()
    with StageProgress(table, "finetune", trials=2, epochs_per_trial=2, objective="val_accuracy", maximize=True,
                       stream=stream, bar=True, every_s=0.05) as progress:
        time.sleep(0.2)  # the bar shows "time left unknown" until an epoch is done in this block
        table.write_text(json.dumps({"trials": rows(("done", 1, 0.5, 0.75))}))
        deadline = time.monotonic() + 10
        while "about" not in progress.line() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # a redraw or two after the epoch
    shown = stream.getvalue()
    assert "finetune:" in shown and "2/4 trial-epochs" in shown and "best val_accuracy: 0.5 0.7500" in shown
    assert re.search(r"about \d+ s left", shown), shown


def test_durations_and_winners_read_as_words():
    assert [duration(s) for s in (42, 192, 3840)] == ["42 s", "3 min 12 s", "1 h 4 min"]
    results = {"metric": "val_accuracy", "best": {
        "0.4": {"sparsity": 0.4, "params": {"optimizer": "adam", "lr": 0.000312}, "objective": 0.8125,
                "name": "search/s40-t1"},
        "0.1": {"sparsity": 0.1, "params": {"optimizer": "sgd", "lr": 0.01}, "objective": 0.9,
                "name": "search/s10-t0"}}}
    assert winners(results) == [
        "best at sparsity 0.1: val_accuracy 0.9000 (sgd, lr 0.01, trial search/s10-t0)",
        "best at sparsity 0.4: val_accuracy 0.8125 (adam, lr 0.00031, trial search/s40-t1)",
    ]


def test_a_restored_tuner_takes_the_verbosity_of_this_driver(tmp_path):
    from ray import tune

    import detector.job.tune.private_api as private_api

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path)))
    private_api.set_tune_verbosity(tuner, 2)
    assert tuner._local_tuner.get_run_config().verbose == 2
