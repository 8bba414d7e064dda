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


CONFIG = """\
name: tiny-paper
train: {arch: resnet18, image_size: 32, batch_size: 16, max_epochs: 4, lr: 1.0e-4}
search_train: {batch_size: 8, max_epochs: 2, patience: null}
finetune: {max_epochs: 3}
search: {sparsities: [0.1, 0.4], trials_per_sparsity: 3, tpe_startup_trials: 10}
evaluate: {bootstrap: 300, throughput_batch: 8}
"""
DATA = {"path": "/data/shards-pixels-32", "manifest_sha256": "ab" * 32, "format": "parquet",
        "splits": {"train": {"faces140k": {"real": 700, "fake": 700}, "synthbuster": {"real": 0, "fake": 90}},
                   "val": {"faces140k": {"real": 100, "fake": 100}},
                   "test": {"faces140k": {"real": 150, "fake": 150}, "synthbuster": {"real": 0, "fake": 100}}},
        "pixels": {"size": 32, "from": {"data": "/data/shards"}}}


def timings(latency: float, throughput: float) -> dict[str, float]:
    """A timing and the spread of its repeats (+-10 %)."""
    return {"latency_ms": latency, "latency_p10_ms": 0.9 * latency, "latency_p90_ms": 1.1 * latency,
            "throughput": throughput, "throughput_min": 0.9 * throughput, "throughput_max": 1.1 * throughput}


def write_eval(run: Path, name: str, sparsity: float, probs: np.ndarray, *, order: np.ndarray | None = None,
               timing: dict[str, float] | None = None, before: np.ndarray | None = None,
               sources: np.ndarray = SOURCES, data: dict | None = DATA, video: np.ndarray | None = None,
               **extra) -> None:
    """``video``: each image's video (-1: a still image); a video's images are its frames, in order."""
    metas = {"source": sources.tolist(), "generator": GENERATORS.tolist()}
    if video is not None:
        metas["group"] = [f"video{v}" if v >= 0 else f"image{i}" for i, v in enumerate(video)]
        metas["frame"] = [int(np.sum(video[:i] == v)) if v >= 0 else -1 for i, v in enumerate(video)]
    metrics = breakdown_metrics(LABELS, probs, metas)
    efficiency = {"sparsity": sparsity, "nonzero_params": 1000, "total_params": 1100, "size_mb": 90.0,
                  "sparse_size_mb": 90.0 * (1 - sparsity) + 3, "macs": 4.1e9, **(timing or timings(30.0, 100.0)),
                  "throughput_batch": 8, "repeats": 50, "throughput_repeats": 10, "device": "cpu: test"}
    if before is not None:
        b = breakdown_metrics(LABELS, before, metas)
        extra["before_finetune"] = {"status": "measured", "pruned_from": str(run / "models" / "baseline.pt"),
                                    "metrics": {"val": b, "test": b}}
    pruning = {"method": "unstructured" if sparsity else "none", "sparsity": sparsity}
    atomic_write_json(run / "eval" / f"{name}.json", {
        "name": name, "pruning": pruning, "sparsity": sparsity, "metrics": {"val": metrics, "test": metrics},
        "efficiency": efficiency, **({"data": data} if data else {}), **extra})
    # the stage's model file and fit summary, as the baseline and fine-tune stages leave them
    (run / "models").mkdir(exist_ok=True)
    (run / "models" / f"{name}.pt").write_bytes(b"\0" * (2**20 if sparsity == 0 else 3 * 2**19))
    fit = {"epochs_run": 4, "best_epoch": 3} if sparsity == 0 else {"epochs_run": 3, "best_epoch": 2}
    atomic_write_json(run / "models" / f"{name}.json", {
        "config": {"max_epochs": 4 if sparsity == 0 else 3, "batch_size": 16}, **fit, "stopped_early": False})
    o = np.arange(N) if order is None else order
    pred = {"labels": LABELS[o].tolist(), "probs_real": probs[o].tolist(), "source": sources[o].tolist(),
            "generator": GENERATORS[o].tolist(), "sha256": [SHA[i] for i in o],
            **{k: [metas[k][i] for i in o] for k in ("group", "frame") if k in metas}}
    atomic_write_json(run / "eval" / f"{name}.predictions.json", {"val": pred, "test": pred})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "experiment.yaml").write_text(CONFIG)
    write_eval(run, "baseline", 0.0, probs_with_errors([0, 1, 200, 390]),
               semistructured={"status": "skipped: CUDA is not available on this machine"})
    # prune-10: the baseline's errors plus two more, and one fixed: no detectable difference. Its timings
    # differ from the baseline's by less than their spread; right after pruning it had 10 errors more.
    write_eval(run, "prune-10", 0.1, probs_with_errors([1, 2, 3, 200, 390]),
               order=np.random.default_rng(0).permutation(N),  # stored in another order: paired by sha256
               timing=timings(31.0, 95.0), before=probs_with_errors([1, 2, 3, 200, 390, *range(10, 20)]))
    # prune-40: 40 more errors: a significant loss; faster than the baseline by more than the spread.
    write_eval(run, "prune-40", 0.4, probs_with_errors([0, 1, 200, 390, *range(100, 140)]),
               timing=timings(20.0, 150.0), before=probs_with_errors(range(0, 200)))
    trial = lambda tid, s, start, acc, lr: {  # noqa: E731 (a row as the search stage writes it)
        "trial_id": tid, "sparsity": s, "params": {"optimizer": "adam", "lr": lr}, "objective": acc,
        "val_accuracy": acc, "best_val_accuracy": acc + 0.01, "epochs": 2, "start": start, "end": start + 60,
        "status": "completed"}
    trials = [trial("t10a", 0.1, 100.0, 0.95, 1e-5), trial("t10b", 0.1, 50.0, 0.95, 3e-5),
              trial("t10c", 0.1, 150.0, 0.90, 1e-4), trial("t40a", 0.4, 60.0, 0.93, 2e-5),
              trial("t40b", 0.4, 70.0, 0.91, 5e-5), trial("t40c", 0.4, 80.0, 0.92, 7e-5)]
    best = {"0.1": {"sparsity": 0.1, "params": {"optimizer": "adam", "lr": 3e-5}, "objective": 0.95,
                    "val_accuracy": 0.95, "trial_id": "t10b"},
            "0.4": {"sparsity": 0.4, "params": {"optimizer": "adam", "lr": 2e-5}, "objective": 0.93,
                    "val_accuracy": 0.93, "trial_id": "t40a"}}
    atomic_write_json(run / "search" / "results.json", {
        "metric": "val_accuracy", "direction": "max", "scheduler": "none", "epochs_run": 12, "epochs_budget": 12,
        "trials": trials, "best": best})
    return run


def test_report_json_holds_intervals_and_tests_beside_the_existing_keys(run):
    write_report(run)
    r = json.loads((run / "report" / "report.json").read_text())
    assert r["statistics"]["bootstrap_resamples"] == 300  # from RUN/experiment.yaml
    assert "score test" in r["statistics"]["paired_test"] and "no continuity correction" in r["statistics"]["paired_test"]
    assert "Tango" in r["statistics"]["difference_interval"]
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
    assert not t10["significant"] and t10["accuracy_difference"]["low"] < 0 < t10["accuracy_difference"]["high"]
    assert (t40["mcnemar"]["b"], t40["mcnemar"]["c"]) == (40, 0) and t40["significant"]
    assert t40["accuracy_difference"]["estimate"] == pytest.approx(-0.1)
    assert t40["accuracy_difference"]["high"] < 0 and "Tango" in t40["accuracy_difference"]["method"]


def test_report_wording_follows_the_numbers_on_the_primary_set(run):
    md = write_report(run).read_text()
    # the conclusions are on the faces140k test set (images 0-299), the paper's set, not on everything
    assert "**Primary set: `faces140k`**, the faces140k test set, the paper's balanced 140k test set" in md
    # no control in this run: every model beside the baseline carries the epochs it ran
    assert "prune-10 (4 + 3 epochs) vs baseline (4 epochs): accuracy difference -0.33 pp" in md
    assert "no significant difference detected" in md
    assert "prune-40 (4 + 3 epochs) vs baseline (4 epochs): accuracy difference -13.33 pp" in md
    assert "significantly lower accuracy than baseline (4 epochs)" in md
    assert ("On the faces140k test set (the primary set) pruning lowered accuracy significantly against the "
            "baseline (4 epochs) for prune-40 (4 + 3 epochs): a claim of no loss in accuracy does not hold") in md
    assert "so these verdicts are not like-for-like" in md
    assert "statistically identical" not in md
    assert "2:4 variant of the baseline: skipped: CUDA is not available on this machine" in md
    assert (run / "report" / "statistics.csv").read_text().startswith("model,data_set,metric")


def test_without_a_significant_loss_the_report_does_not_claim_equality(run):
    (run / "eval" / "prune-40.json").unlink()
    (run / "eval" / "prune-40.predictions.json").unlink()
    md = write_report(run).read_text()
    assert "On the faces140k test set (the primary set) no pruned model's accuracy differs significantly" in md
    assert "That is not proof of equal accuracy: the intervals still allow a loss of up to" in md


def test_models_scored_on_other_images_are_reported_but_not_paired(run):
    path = run / "eval" / "prune-10.predictions.json"
    pred = json.loads(path.read_text())
    pred["test"]["sha256"][5] = "0" * 64 + "x"
    atomic_write_json(path, pred)
    md = write_report(run).read_text()
    assert "prune-10: not compared with baseline: the two prediction files hold different images" in md
    r = json.loads((run / "report" / "report.json").read_text())
    assert r["models"][1]["intervals"]["combined_test"]["accuracy"]["low"] is not None


def test_the_header_says_what_the_run_ran_on(run):
    md = write_report(run).read_text()
    r = json.loads((run / "report" / "report.json").read_text())["run"]
    assert (r["arch"], r["image_size"]) == ("resnet18", 32)
    assert "**resnet18 at 32x32 px** (the paper's setting is resnet50 at 224 px: this run is not that)" in md
    stages = r["stages"]
    assert (stages["baseline"]["max_epochs"], stages["baseline"]["batch_size"]) == (4, 16)
    assert (stages["search trial"]["max_epochs"], stages["search trial"]["batch_size"]) == (2, 8)
    assert stages["search trial"]["patience"].startswith("none")
    assert (stages["fine-tune"]["max_epochs"], stages["fine-tune"]["batch_size"]) == (3, 16)
    assert r["pruning"] == {"method": "unstructured", "sparsities": [0.1, 0.4]}
    assert {"split": "test", "source": "synthbuster", "real": 0, "fake": 100} in r["data"]["counts"]
    assert "decoded once into 32 px pixels from `/data/shards`" in md
    assert "| baseline     | 4          | 3 epochs" in md and "4 (best 3)" in md  # planned and run
    assert "prune-10: 3 (best 2); prune-40: 3 (best 2)" in md
    assert "every trial of this search was a random draw" in md  # 3 trials, TPE starts after 10


def test_table4_shows_the_objective_once_names_its_epoch_and_marks_ties(run):
    md = write_report(run).read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| 10%")}
    assert rows["10%"].count("95.00%") == 1 and "0.9500" not in md
    assert "Val accuracy, last epoch (objective)" in md
    assert "| t10b " in rows["10%"] and "| t10a " in rows["10%"]  # chosen, and the trial it tied with
    assert "a tie on the objective goes to the trial launched first" in md
    assert "at 10 % trial t10b tied with t10a and was launched first" in md
    csv = (run / "report" / "table4_best_params.csv").read_text().splitlines()
    assert csv[0] == "sparsity,optimizer,lr,objective,trial_id,tied_with,trials"
    assert csv[2].endswith(",t40a,,3")  # 40 %: no tie


def test_each_pruned_model_right_after_pruning_beside_after_fine_tuning(run):
    md = write_report(run).read_text()
    rows = {r["model"]: r for r in csv_rows(run / "report" / "pruning_before_after.csv")}
    # on the primary set (faces140k, images 0-299): prune-10 has 14 errors of 300 right after pruning, 4 after
    # fine-tuning; prune-40 200 right after pruning
    assert float(rows["prune-10"]["test_pruned"]) == pytest.approx(286 / 300)
    assert float(rows["prune-10"]["test_finetuned"]) == pytest.approx(296 / 300)
    assert float(rows["prune-10"]["recovered_pp"]) == pytest.approx(10 / 3)
    assert float(rows["prune-40"]["test_pruned"]) == pytest.approx(100 / 300)
    # the baseline's best epoch 3 plus the fine-tune's best epoch 2
    assert rows["prune-10"]["epochs_total"] == "5" and rows["prune-10"]["finetune_epochs"] == "3 (best 2)"
    assert "The baseline's saved weights are those of its epoch 3 (of 4 run)" in md
    assert "each pruned model had more training than the baseline" in md


def test_table6_in_mib_with_file_sizes_the_throughput_batch_and_noise_flags(run):
    md = write_report(run).read_text()
    assert "MB)" not in md and "State dict (MiB)" in md and "Model file (MiB)" in md
    assert "Throughput, batch 8 (img/s)" in md
    rows = {r["model"]: r for r in csv_rows(run / "report" / "table6_efficiency.csv")}
    assert float(rows["baseline"]["file_mib"]) == 1.0 and float(rows["prune-10"]["file_mib"]) == 1.5
    assert rows["baseline"]["throughput_batch"] == "8"  # the CSV keeps what the Markdown puts in a title
    assert rows["prune-10"]["vs_baseline"] == "latency 1.03x (within noise); throughput 0.95x (within noise)"
    assert rows["prune-40"]["vs_baseline"].startswith("latency 0.67x (beyond the spread; same GMACs, so from the "
                                                      "load, not from pruning)")
    assert "keeps its pruning masks beside the weights" in md


def test_undefined_metrics_say_why(run):
    md = write_report(run).read_text()
    assert ("- n/a on synthbuster: AP (fake positive), AP (real positive), AUC, EER undefined: only one class "
            "(fake) present; F1 (real), precision (real), recall (real) undefined: no real images in this set.") in md
    r = json.loads((run / "report" / "report.json").read_text())
    synth = r["models"][0]["metrics"]["synthbuster"]
    assert synth["precision"] is None and synth["notes"]["precision"] == "undefined: no real images in this set"


def test_a_source_that_is_the_whole_test_set_is_shown_once(tmp_path):
    run = tmp_path / "run"
    one = np.full(N, "demo")
    for name, s, wrong in (("baseline", 0.0, [0, 1]), ("prune-10", 0.1, [0, 2, 3])):
        write_eval(run, name, s, probs_with_errors(wrong), sources=one)
    md = write_report(run).read_text()
    r = json.loads((run / "report" / "report.json").read_text())
    assert r["same_sets"] == {"demo": "combined_test"}
    for m in r["models"]:
        assert "demo" not in m["metrics"] and "demo/dalle3" in m["metrics"]
        assert set(m["intervals"]) == set(m["metrics"])
    assert "The test data has one source, `demo`: its test set is the combined test set, shown once" in md
    assert "Accuracy: demo" not in md
    assert "its configuration is unknown" in md  # no experiment.yaml here: said, not guessed


def test_runs_evaluated_before_the_data_summary_read_it_from_the_dataset(tmp_path, demo_shards):
    run = tmp_path / "run"
    write_eval(run, "baseline", 0.0, probs_with_errors([0]), data=None)
    (run / "experiment.yaml").write_text(f"data: {{path: {demo_shards}}}\n")
    write_report(run)
    counts = json.loads((run / "report" / "report.json").read_text())["run"]["data"]["counts"]
    assert counts == [{"split": "train", "source": "demo", "real": 27, "fake": 26},
                      {"split": "val", "source": "demo", "real": 6, "fake": 6},
                      {"split": "test", "source": "demo", "real": 5, "fake": 5}]


def test_figures_are_written(run):
    write_report(run)
    for name in ("confusion_matrices", "roc_curves", "accuracy_vs_sparsity", "search_history"):
        assert (run / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("low, words", [(-0.0158, "a loss of up to 1.58 pp (prune-10)"),
                                        (-0.00003, "a loss of up to less than 0.01 pp (prune-10)"),
                                        (0.0, "The intervals' lower ends are at 0: they allow no loss")])
def test_the_loss_sentence_is_never_minus_zero(low, words):
    from detector.report.statistics import _conclusions

    vs = {"significant": False, "sentence": "s", "accuracy_difference": {"estimate": 0.001, "low": low, "high": 0.02}}
    text = " ".join(_conclusions([{"name": "prune-10", "sparsity": 0.1, "vs_baseline": {"combined_test": vs}}], {}))
    assert words in text and "-0.00" not in text


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(path.read_text().splitlines()))


def test_errors_are_named_by_direction_and_both_classes_get_precision_and_recall(run):
    import re

    md = write_report(run).read_text()
    # never a bare FP/FN: the paper's "false negative" is a fake predicted real, the opposite of real-positive
    assert re.search(r"\bF[PN]\b|\bT[PN]\b", md) is None
    assert "| Model    | Fake predicted real | Real predicted fake |" in md
    assert "With real as the positive class (as precision and recall here), a fake predicted real is a false positive" in md
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    for column in ("Precision (real)", "Recall (real)", "Precision (fake)", "Recall (fake)", "F1 (fake)", "Macro F1",
                   "AP (real positive)", "EER"):
        assert column in header
    assert "## Table 4. Optimal hyper-parameters found by random sampling (TPE start-up), per sparsity" in md
    csv = (run / "report" / "metrics.csv").read_text().splitlines()[0]
    assert "fake_as_real" in csv and "real_as_fake" in csv


def test_the_paper_is_compared_only_where_its_numbers_agree(run):
    md = write_report(run).read_text()
    rows = {r["model"]: r for r in csv_rows(run / "report" / "paper_comparison.csv")}
    assert rows["baseline"]["paper"] == "" and rows["baseline"]["within"] == "not compared"
    assert float(rows["prune-10"]["paper"]) == pytest.approx(0.9883) and rows["prune-10"]["within"] == "yes"
    assert rows["prune-40"]["within"] == "no"  # 85.67 % here, 98.86 % in the paper
    assert "98.79 % in Table 3 and 95.48 % in Table 5" in md


def test_celebdf_frames_are_resampled_and_tested_by_video_and_video_scores_get_intervals(tmp_path):
    # images 100-219 are Celeb-DF frames: 12 videos of 10 frames, videos 0-4 real, 5-11 fake
    run = tmp_path / "run"
    i = np.arange(N)
    video = np.where((i >= 100) & (i < 220), (i - 100) // 10, -1)
    sources = np.where(video >= 0, "celebdf", SOURCES)
    write_eval(run, "baseline", 0.0, probs_with_errors([0, 1, 200, 390]), sources=sources, video=video)
    # prune-10 gets every frame of fake video 5 (images 150-159) wrong, and nothing else: ten frames, one video
    write_eval(run, "prune-10", 0.1, probs_with_errors([0, 1, 200, 390, *range(150, 160)]), sources=sources,
               video=video)
    md = write_report(run).read_text()
    r = json.loads((run / "report" / "report.json").read_text())
    stats = r["statistics"]
    assert stats["resampling_unit"] == "videos (Celeb-DF frames grouped by video), images otherwise"
    assert "cluster-adjusted" in stats["paired_test"] and "interpolated" in stats["eer_definition"]
    assert "DeepfakeBench takes the nearest point" in stats["eer_definition"]
    baseline, pruned = r["models"]
    celebdf = pruned["vs_baseline"]["celebdf"]
    # frame by frame, 10 lost of 10 discordant would be significant (z = -10 / sqrt(10) = -3.16); it is one
    # video's worth of evidence: z = -10 / sqrt(10^2) = -1
    assert (celebdf["mcnemar"]["b"], celebdf["mcnemar"]["c"], celebdf["unit"], celebdf["clusters"]) == (10, 0, "video", 12)
    assert celebdf["mcnemar"]["statistic"] == pytest.approx(-1.0) and not celebdf["significant"]
    assert pruned["intervals"]["faces140k"]["unit"] == "image"
    assert pruned["intervals"]["combined_test"]["clusters"] == N - 120 + 12
    videos = pruned["video_intervals"]["celebdf"]
    assert videos["accuracy"]["estimate"] == pytest.approx(11 / 12) and videos["clusters"] == 12
    assert videos["accuracy"]["low"] < 11 / 12 <= videos["accuracy"]["high"]
    assert baseline["video_intervals"]["celebdf"]["auc"]["estimate"] == 1.0
    assert "| Video AUC [95 % CI]" in md and "91.67% [" in md  # the video section shows each interval
    rows = {row["model"]: row for row in csv_rows(run / "report" / "videos.csv")}
    assert float(rows["prune-10"]["video_accuracy_low"]) == videos["accuracy"]["low"]
