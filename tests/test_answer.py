"""The report's answer first: each pruned model against the equal-budget dense control (dense-ft), a verdict at
the non-inferiority margin, what it costs and saves; and, without a control, against the baseline, saying
that the baseline trained fewer epochs. Run folders written by hand, as the stages leave them (no training)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from detector.evaluate.metrics import breakdown_metrics, classification_metrics
from detector.io import atomic_write_json
from detector.report import write_report
from detector.report.answer import images_to_decide, verdict

# 600 faces (the primary set: 300 real, 300 fake), then 40 Celeb-DF videos of 3 frames (20 real, 20 fake)
FACES, VIDEOS, FRAMES = 600, 40, 3
N = FACES + VIDEOS * FRAMES
LABELS = np.r_[np.ones(300, int), np.zeros(300, int), np.repeat(np.r_[np.ones(20, int), np.zeros(20, int)], FRAMES)]
SOURCES = np.r_[np.full(FACES, "faces140k"), np.full(VIDEOS * FRAMES, "celebdf")]
GROUPS = np.r_[np.full(FACES, ""), np.repeat([f"v{i:02d}" for i in range(VIDEOS)], FRAMES)]
FRAME = np.r_[np.full(FACES, -1), np.tile(np.arange(FRAMES), VIDEOS)]
SHA = [f"{i:064x}" for i in range(N)]
PERTURBATIONS = {"jpeg-q50": ("jpeg", 50, "JPEG q50"), "blur-s1": ("blur", 1, "Gaussian blur sigma 1 px")}

CONFIG = """\
name: answer
train: {arch: resnet18, image_size: 16, batch_size: 8, max_epochs: 4}
finetune: {max_epochs: 3}
search: {sparsities: [0.1, 0.2, 0.3, 0.4], trials_per_sparsity: 2}
evaluate: {bootstrap: 200, margin: 0.01}
"""


def probs(wrong, video_noise: float, seed: int) -> np.ndarray:
    """P(real): right on every face except ``wrong``, each face at its own confidence (so that ROC curves
    differ); video frames scored with noise of that size."""
    rng = np.random.default_rng(seed)
    confidence = 0.49 * rng.uniform(0.01, 1, N) ** 0.3
    p = np.where(LABELS == 1, 0.5 + confidence, 0.5 - confidence)
    p[list(wrong)] = 1 - p[list(wrong)]
    frames = slice(FACES, N)
    p[frames] = np.clip(np.where(LABELS[frames] == 1, 0.65, 0.35)
                        + rng.normal(0, video_noise, N - FACES), 0.001, 0.999)
    return p.round(6)


def write_model(run: Path, name: str, sparsity: float, wrong, *, perturbed: dict[str, list[int]],
                before=None, video_noise: float = 0.3, seed: int = 0) -> None:
    """``eval/<name>.json``, its predictions and ``models/<name>.json`` as the evaluate and training stages
    write them; ``perturbed``: the faces it gets wrong under each perturbation."""
    p = probs(wrong, video_noise, seed)
    metas = {"source": SOURCES.tolist(), "group": GROUPS.tolist(), "frame": FRAME.tolist()}
    metrics = breakdown_metrics(LABELS, p, metas)
    robustness, robustness_pred = {}, {}
    for key, (family, severity, label) in PERTURBATIONS.items():
        q = probs(perturbed[key], video_noise, seed)[:FACES]
        robustness[key] = {"family": family, "severity": severity, "label": label, "set": "faces140k",
                           "images": FACES, "metrics": classification_metrics(LABELS[:FACES], q)}
        robustness_pred[key] = {"labels": LABELS[:FACES].tolist(), "probs_real": q.tolist(), "sha256": SHA[:FACES]}
    dense = sparsity == 0
    efficiency = {"sparsity": sparsity, "nonzero_params": round(11_000_000 * (1 - sparsity)),
                  "total_params": 11_000_000, "size_mb": 42.7, "sparse_size_mb": 42.7 * (1 - sparsity) + 1.3,
                  "macs": 1.8e9, "latency_ms": 5.0, "latency_p10_ms": 4.6, "latency_p90_ms": 5.5,
                  "throughput": 400.0, "throughput_min": 380.0, "throughput_max": 420.0, "throughput_batch": 16,
                  "repeats": 50, "throughput_repeats": 10, "device": "cpu: test"}
    extra = {}
    if before is not None:
        b = breakdown_metrics(LABELS, probs(before, video_noise, seed), metas)
        extra["before_finetune"] = {"status": "measured", "pruned_from": str(run / "models" / "baseline.pt"),
                                    "metrics": {"val": b, "test": b}}
    atomic_write_json(run / "eval" / f"{name}.json", {
        "name": name, "pruning": {"method": "none" if dense else "unstructured", "sparsity": sparsity},
        "sparsity": sparsity, "metrics": {"val": metrics, "test": metrics}, "efficiency": efficiency,
        "robustness": {"perturbations": robustness}, **extra})
    pred = {"labels": LABELS.tolist(), "probs_real": p.tolist(), "sha256": SHA, "source": SOURCES.tolist(),
            "group": GROUPS.tolist(), "frame": [str(f) for f in FRAME]}
    atomic_write_json(run / "eval" / f"{name}.predictions.json", {"val": pred, "test": pred,
                                                                  "robustness": robustness_pred})
    (run / "models").mkdir(exist_ok=True)
    (run / "models" / f"{name}.pt").write_bytes(b"\0" * 1024)
    fit = {"epochs_run": 4, "best_epoch": 4} if name == "baseline" else {"epochs_run": 3, "best_epoch": 3}
    atomic_write_json(run / "models" / f"{name}.json", {"config": {"max_epochs": 3, "batch_size": 8}, **fit,
                                                        "stopped_early": False})


CONTROL_WRONG = list(range(0, 6))  # the control: 6 of 600 faces wrong (99.0 %); the baseline 12 (98.0 %)
# against the control on the faces: prune-10 loses image 0 and gains 20 (b = c = 1), prune-20 the same with
# 2 and 2; prune-30 4 more wrong (b = 4, c = 0); prune-40 30 more (b = 30, c = 0)
PRUNED = {0.1: [*range(1, 6), 20], 0.2: [*range(2, 6), 20, 21], 0.3: [*CONTROL_WRONG, *range(30, 34)],
          0.4: [*CONTROL_WRONG, *range(100, 130)]}


def build_run(run: Path, *, with_control: bool = True) -> Path:
    (run / "eval").mkdir(parents=True)
    (run / "experiment.yaml").write_text(CONFIG)
    robust = {"jpeg-q50": [*range(0, 10)], "blur-s1": [*range(0, 8)]}
    write_model(run, "baseline", 0.0, range(0, 12), perturbed=robust, seed=0)
    if with_control:
        write_model(run, "dense-ft", 0.0, CONTROL_WRONG, perturbed=robust, before=range(0, 12), seed=1)
    for k, (s, wrong) in enumerate(PRUNED.items()):
        # under JPEG q50 each pruned model loses 3 * k more faces than the control, under blur k
        worse = {"jpeg-q50": [*robust["jpeg-q50"], *range(200, 200 + 3 * k)],
                 "blur-s1": [*robust["blur-s1"], *range(250, 250 + k)]}
        # right after pruning: the unpruned weights' 12 errors and 20 * k more
        write_model(run, f"prune-{100 * s:g}", s, wrong, perturbed=worse,
                    before=[*range(0, 12), *range(300, 300 + 20 * k)], video_noise=0.3 + 0.05 * k, seed=2 + k)
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, dict]:
    run = build_run(tmp_path_factory.mktemp("answer") / "run")
    md = write_report(run).read_text()
    return run, md, json.loads((run / "report" / "report.json").read_text())


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def answer_csv(run: Path) -> dict[str, dict[str, str]]:
    return {r["model"]: r for r in csv.DictReader((run / "report" / "answer.csv").read_text().splitlines())}


@pytest.mark.parametrize("low, high, expected", [
    (-0.0099, 0.01, "non-inferior"),   # the whole interval above -1 pp
    (-0.01, 0.01, "inconclusive"),     # the lower end exactly at -margin: not above it
    (-0.03, -0.0101, "inferior"),      # the whole interval below -1 pp
    (-0.03, -0.01, "inconclusive"),    # the upper end exactly at -margin: not below it
    (-0.02, 0.002, "inconclusive"),    # reaches across -margin
])
def test_the_verdict_at_the_margin_boundaries(low, high, expected):
    assert verdict({"estimate": (low + high) / 2, "low": low, "high": high}, 0.01) == expected


def test_images_to_decide_follow_the_paired_sample_size():
    # psi = 2 %, delta = -0.4 pp, margin 1 pp: (1.960 + 0.842)^2 * 0.02 / 0.006^2 = 4,360.5
    assert images_to_decide(12, 8, 1000, 0.01) == 4361
    # a gain needs fewer images than a loss of the same size: the distance to -margin is what counts
    assert images_to_decide(8, 12, 1000, 0.01) < images_to_decide(12, 8, 1000, 0.01)
    assert images_to_decide(0, 0, 1000, 0.01) is None  # no discordant image: psi unknown
    assert images_to_decide(30, 20, 1000, 0.01) is None  # at -margin exactly: no number of images decides


def test_the_answer_comes_first_with_one_row_per_pruned_model(report):
    run, md, _ = report
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles[:2] == ["The answer: how far can it be pruned?", "The run"]
    rows = answer_csv(run)
    assert list(rows) == ["prune-10", "prune-20", "prune-30", "prune-40"]
    assert {r["reference"] for r in rows.values()} == {"dense-ft"}
    assert [rows[m]["verdict"] for m in rows] == ["non-inferior", "non-inferior", "inconclusive", "inferior"]
    # prune-40: 30 more faces wrong than the control, of 600
    assert float(rows["prune-40"]["diff_estimate"]) == pytest.approx(-30 / 600)
    # pruning alone: prune-20 right after pruning (12 + 20 wrong) against the unpruned weights (12 wrong)
    assert float(rows["prune-20"]["pruning_alone"]) == pytest.approx(-20 / 600)
    assert rows["prune-40"]["robustness_worst"] == "JPEG q50"
    assert float(rows["prune-40"]["robustness_estimate"]) == pytest.approx(-9 / 600)
    assert rows["prune-10"]["video_source"] == "celebdf"
    low, high = float(rows["prune-40"]["video_auc_low"]), float(rows["prune-40"]["video_auc_high"])
    assert low <= float(rows["prune-40"]["video_auc_estimate"]) <= high
    assert int(rows["prune-40"]["nonzero_params"]) == 6_600_000
    text = section(md, "The answer: how far can it be pruned?")
    assert "(celebdf, 40 videos)" in text and "![answer](answer.png)" in text
    assert "![answer](answer.png)" not in section(md, "Figures")  # shown once, beside its answer


def test_the_answer_sentence_names_the_largest_non_inferior_sparsity_and_its_price(report):
    _, md, _ = report
    text = section(md, "The answer: how far can it be pruned?")
    assert ("**The largest sparsity non-inferior to the equal-budget control dense-ft at the 1 pp margin is "
            "20 %**, prune-20: accuracy +0.00 [") in text
    assert "sparse file 35.46 against 44.00 MiB" in text  # 42.7 MiB dense: 0.8 of it plus 1.3 MiB of masks
    assert "batch-1 latency 5.00 against 5.00 ms (1.00x, within noise)" in text
    assert "unstructured pruning keeps the dense arithmetic, so no speed-up is expected" in text


def test_an_undecided_model_says_how_many_test_images_would_decide(report):
    run, md, _ = report
    rows = answer_csv(run)
    # prune-30 against the control: b = 4, c = 0 of 600, so psi = 0.667 % and delta = -0.667 pp, 0.333 pp
    # above -margin: (1.960 + 0.842)^2 * 0.00667 / 0.00333^2 = 4,709.3
    expected = images_to_decide(4, 0, 600, 0.01)
    assert int(rows["prune-30"]["images_to_decide"]) == expected == 4710
    assert rows["prune-40"]["images_to_decide"] == ""  # decided: inferior
    assert (f"Too few test images to decide prune-30: about {expected:,} test images would decide it (it was "
            "tested on 600).") in md
    assert "Connor (1987, Biometrics 43:207)" in md and "power 80 %" in md


def test_report_json_holds_the_tests_against_each_reference(report):
    _, _, r = report
    models = {m["name"]: m for m in r["models"]}
    assert [m["name"] for m in r["models"]] == ["baseline", "dense-ft", "prune-10", "prune-20", "prune-30", "prune-40"]
    assert [m["role"] for m in r["models"]] == ["baseline", "control", *["pruned"] * 4]
    assert r["statistics"]["references"] == {"vs_control": "dense-ft", "vs_baseline": "baseline"}
    p40 = models["prune-40"]
    assert p40["vs_control"]["faces140k"]["mcnemar"]["b"] == 30
    assert p40["vs_baseline"]["faces140k"]["accuracy_difference"]["estimate"] == pytest.approx(-24 / 600)
    assert set(p40["robustness_vs_control"]) == set(p40["robustness_vs_baseline"]) == set(PERTURBATIONS)
    assert models["dense-ft"]["vs_control"] is None and models["dense-ft"]["vs_baseline"] is not None
    assert models["baseline"]["vs_baseline"] is None
    # the paper's view names each side's epochs: the baseline 4, a fine-tuned model the baseline's 4 + its 3
    assert p40["vs_baseline"]["faces140k"]["sentence"].startswith("prune-40 (4 + 3 epochs) vs baseline (4 epochs)")
    assert p40["video_vs_reference"]["reference"] == "dense-ft"


def test_verdicts_are_against_the_control_and_the_paper_s_view_keeps_the_epochs(report):
    run, md, _ = report
    stats = section(md, "Uncertainty: 95 % confidence intervals and paired tests against the control")
    assert "### Each pruned model against the equal-budget control dense-ft, on the same images" in stats
    assert "### The paper's view: every model against the baseline, with the epochs each had" in stats
    assert "| dense-ft | 4 + 3 " in stats  # the control beside the baseline: what the extra epochs alone do
    robustness = section(md, "Robustness: does pruning cost robustness?")
    assert "Difference vs dense-ft, same images" in robustness
    assert "Timing vs dense-ft" in md
    rows = list(csv.DictReader((run / "report" / "statistics.csv").read_text().splitlines()))
    assert {r["reference"] for r in rows if r["model"] == "prune-40"} == {"dense-ft", "baseline"}


def test_no_conclusion_mentions_the_baseline_without_the_epochs(report, tmp_path):
    without = build_run(tmp_path / "run", with_control=False)
    for md in (report[1], write_report(without).read_text()):
        for title in ("The answer", "Uncertainty", "Robustness", "Pruning alone"):
            text = section(md, next(t for t in re.findall(r"^## (.+)$", md, flags=re.M) if t.startswith(title)))
            prose = [line for line in text.splitlines() if not line.startswith(("|", "#"))]
            for sentence in re.split(r"(?<=\.)\s+", " ".join(prose)):
                if re.search(r"\bbaseline\b", sentence) and re.search(r"\b(beats?|above|higher|better)\b", sentence):
                    assert "epoch" in sentence, sentence


def test_without_a_control_the_answer_is_against_the_baseline_and_says_it_is_not_like_for_like(tmp_path):
    run = build_run(tmp_path / "run", with_control=False)
    md = write_report(run).read_text()
    text = section(md, "The answer: how far can it be pruned?")
    assert "**Against the baseline, not an equal-budget control.**" in text
    assert "every pruned model is compared with the baseline, which ran 4 epochs" in text
    assert "The baseline trained fewer epochs, so these verdicts are not like-for-like" in text
    assert "Accuracy vs baseline (pp, 95 % CI)" in text
    # beside the baseline, the chosen model carries its epochs too (here prune-30 is non-inferior)
    assert "the 1 pp margin is 30 %**, prune-30 (4 + 3 epochs): accuracy +0.33 [" in text
    assert {r["reference"] for r in answer_csv(run).values()} == {"baseline"}
    r = json.loads((run / "report" / "report.json").read_text())
    assert all(m["vs_control"] is None for m in r["models"])
    assert r["statistics"]["references"] == {"vs_baseline": "baseline"}
    assert "paired tests against the baseline" in md


def test_the_answer_figure_and_the_others_are_written(report):
    run, _, _ = report
    for name in ("answer", "robustness", "roc_curves", "confusion_matrices", "accuracy_vs_sparsity"):
        assert (run / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_model_to_use_is_the_largest_non_inferior_sparsity_else_the_reference(report, tmp_path):
    from detector.report.answer import model_to_use

    _, md, data = report
    assert model_to_use(data) == "prune-20"
    assert ("The model to use: prune-20, `RUN/models/prune-20.pt`; `detector predict --checkpoint "
            "RUN/models/prune-20.pt IMAGES`") in section(md, "The answer: how far can it be pruned?")
    inferior = {**data, "models": [m for m in data["models"] if m["name"] not in ("prune-10", "prune-20")]}
    assert model_to_use(inferior) == "dense-ft"  # no pruned model non-inferior: the equal-budget control
    alone = {**data, "models": [m for m in data["models"] if m["name"] == "baseline"]}
    assert model_to_use(alone) == "baseline"
    assert model_to_use({**data, "models": []}) is None
