"""The answer section on a run folder the stages wrote: a baseline, the equal-budget dense control (dense-ft:
the baseline's weights fine-tuned at sparsity 0) and two pruned models, trained and evaluated on miniature
140k faces and Celeb-DF videos (3 frames each), the margin read from the run's experiment.yaml."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import make_celebdf, make_faces140k

from detector.data.prepare import prepare
from detector.data.sources import CelebDFSource, Faces140kSource
from detector.evaluate.robustness import RobustnessSection
from detector.job.experiment import EvaluateSection
from detector.job.runfolder import BASELINE, CONTROL, RunFolder, model_name
from detector.job.stages import evaluate_stage, train_stage
from detector.report import write_report
from detector.train import TrainConfig

pytestmark = pytest.mark.slow  # ~1 min on 2 cores: an import, four tiny trainings, four evaluations

EVALUATE = EvaluateSection(batch_size=16, latency_repeats=3, throughput_batch=2, bootstrap=100, margin=0.05,
                           robustness=RobustnessSection(enabled=True, jpeg_quality=(50,), blur_sigma=(1.0,),
                                                        downscale=(), format_equalisation=False))
CONFIG = """\
name: answer-run
train: {arch: resnet18, image_size: 16, batch_size: 8, max_epochs: 1}
evaluate: {margin: 0.05}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("answer-run")
    faces = make_faces140k(root / "faces140k", {"train": 12, "valid": 6, "test": 12})
    celeb = make_celebdf(root / "celebdf", n_real=6, n_fake=6, test=(2, 2, 0))
    data = root / "data"
    prepare(data, sources=[Faces140kSource(faces), CelebDFSource(celeb, frames_per_video=3, split="official")],
            workers=1, progress=False)
    run = RunFolder(root / "run")
    run.root.mkdir()
    (run.root / "experiment.yaml").write_text(CONFIG)
    cfg = TrainConfig(arch="resnet18", image_size=16, batch_size=8, max_epochs=1, patience=None, num_workers=0,
                      channels_last=False, lr=1e-3, max_train_batches=2)
    train_stage(cfg, data=str(data), out_dir=root / "baseline", tb_dir=None, model_path=run.model(BASELINE))
    for s in (0.0, 0.2, 0.4):  # the control is the same fine-tune at sparsity 0
        train_stage(cfg, data=str(data), out_dir=root / f"ft-{s}", tb_dir=None, init=run.model(BASELINE),
                    sparsity=s, model_path=run.model(model_name(s)))
    for name in (BASELINE, CONTROL, model_name(0.2), model_name(0.4)):
        evaluate_stage(run.model(name), data=str(data), cfg=EVALUATE, out=run.evaluation(name),
                       predictions=run.predictions(name), pruned_from=run.model(BASELINE), name=name)
    write_report(run.root)
    return run.root


def test_the_answer_is_against_the_control_at_the_configured_margin(run):
    md = (run / "report" / "report.md").read_text()
    assert md.index("## The answer: how far can it be pruned?") < md.index("## The run")
    assert "Each pruned model against the equal-budget control dense-ft" in md
    assert "at a non-inferiority margin of 5 pp of accuracy (`evaluate.margin`)" in md
    assert "not an equal-budget control" not in md
    rows = list(csv.DictReader((run / "report" / "answer.csv").read_text().splitlines()))
    assert [(r["model"], r["reference"]) for r in rows] == [("prune-20", "dense-ft"), ("prune-40", "dense-ft")]
    assert all(r["verdict"] in ("non-inferior", "inconclusive", "inferior") for r in rows)
    assert all(r["video_source"] == "celebdf" for r in rows)  # 4 test videos, paired over videos
    assert all(r["robustness_worst"] in ("JPEG q50", "Gaussian blur sigma 1 px") for r in rows)


def test_report_json_keeps_both_comparisons_and_the_roles(run):
    r = json.loads((run / "report" / "report.json").read_text())
    assert [(m["name"], m["role"]) for m in r["models"]] == [
        ("baseline", "baseline"), ("dense-ft", "control"), ("prune-20", "pruned"), ("prune-40", "pruned")]
    for m in r["models"][2:]:
        assert "faces140k" in m["vs_control"] and "faces140k" in m["vs_baseline"]
        assert m["vs_baseline"]["faces140k"]["sentence"].startswith(f"{m['name']} (1 + 1 epochs) vs baseline (1 epoch)")
    assert r["models"][1]["vs_baseline"]["faces140k"]  # the control beside the baseline: the paper's view
    assert r["run"]["margin"] == 0.05


def test_every_figure_is_written(run):
    for name in ("answer", "robustness", "roc_curves", "confusion_matrices", "accuracy_vs_sparsity"):
        assert (run / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
