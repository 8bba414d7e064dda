"""The evaluate stage without Ray: what a pruned model scores right after pruning, beside after fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.checkpoint import load_model, save_checkpoint
from detector.data.loader import manifest_sha256
from detector.evaluate.scoring import evaluate_split
from detector.job.experiment import EvaluateSection
from detector.job.stages import evaluate_stage, train_stage
from detector.model import build_model
from detector.prune import prune
from detector.train import TrainConfig

CFG = TrainConfig(arch="resnet18", image_size=16, batch_size=16, max_epochs=1, patience=None, num_workers=0,
                  channels_last=False, lr=1e-3, max_train_batches=2)
EVALUATE = EvaluateSection(batch_size=32, latency_repeats=1, throughput_batch=2)


@pytest.fixture(scope="module")
def models(demo_shards, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    baseline = save_checkpoint(folder / "baseline.pt", build_model("resnet18", seed=0), metadata={
        "arch": "resnet18", "image_size": 16, "data_manifest_sha256": manifest_sha256(str(demo_shards))})
    train_stage(CFG, data=str(demo_shards), out_dir=folder / "ft", tb_dir=None, init=baseline, sparsity=0.3,
                model_path=folder / "prune-30.pt")
    # the dense control: the same fine-tune from the same baseline, at sparsity 0
    train_stage(CFG, data=str(demo_shards), out_dir=folder / "control", tb_dir=None, init=baseline, sparsity=0.0,
                model_path=folder / "dense-ft.pt")
    return {"baseline": baseline, "prune-30": folder / "prune-30.pt", "dense-ft": folder / "dense-ft.pt"}


def test_a_pruned_model_is_also_scored_as_pruned_before_fine_tuning(models, demo_shards, tmp_path):
    result = evaluate_stage(models["prune-30"], data=str(demo_shards), cfg=EVALUATE, out=tmp_path / "e.json",
                            predictions=tmp_path / "p.json")
    before = result["before_finetune"]
    assert before["status"] == "measured" and before["pruned_from"] == str(models["baseline"])
    assert before["pruning"]["method"] == "unstructured" and before["pruning"]["sparsity"] == 0.3
    # the same numbers as pruning the baseline by hand and scoring it, untrained
    model, _ = load_model(models["baseline"])
    prune(model, 0.3, method="unstructured", arch="resnet18")
    for split in ("val", "test"):
        expected = evaluate_split(model, str(demo_shards), split, image_size=16,
                                  calibrated=before["threshold"]["value"])["metrics"]
        assert before["metrics"][split]["all"] == expected["all"]
    # the fine-tuned model's own numbers are those of the fine-tuned checkpoint
    tuned, _ = load_model(models["prune-30"])
    assert result["metrics"]["test"]["all"] == evaluate_split(tuned, str(demo_shards), "test", image_size=16,
                                                              calibrated=result["threshold"]["value"])["metrics"]["all"]
    # the data the numbers are about, counted per split, source and class
    assert result["data"]["splits"]["test"] == {"demo": {"real": 5, "fake": 5}}
    assert result["data"]["manifest_sha256"] == manifest_sha256(str(demo_shards))


def test_a_missing_source_is_said_not_hidden(models, demo_shards, tmp_path):
    result = evaluate_stage(models["prune-30"], data=str(demo_shards), cfg=EVALUATE, out=tmp_path / "e.json",
                            predictions=tmp_path / "p.json", pruned_from=tmp_path / "gone.pt")
    assert result["before_finetune"] == {"status": f"not measured: {tmp_path / 'gone.pt'}, the model it was "
                                                   "pruned from, is missing"}


def test_the_threshold_is_calibrated_on_validation_images_only(models, demo_shards, tmp_path):
    import json

    from detector.evaluate.metrics import calibrate_threshold

    result = evaluate_stage(models["baseline"], data=str(demo_shards), cfg=EVALUATE, out=tmp_path / "e.json",
                            predictions=tmp_path / "p.json")
    pred = json.loads((tmp_path / "p.json").read_text())
    threshold = result["threshold"]
    assert (threshold["method"], threshold["chosen_on"]) == ("eer", "combined_val")
    # the EER threshold of the validation predictions (stored rounded to 6 digits), applied to test
    assert threshold["value"] == pytest.approx(calibrate_threshold(pred["val"]["labels"], pred["val"]["probs_real"]),
                                               abs=1e-5)
    assert result["metrics"]["test"]["all"]["at_calibrated"]["threshold"] == threshold["value"]
    # demo data: no faces140k test set, so the whole test split is primary
    assert result["primary"] == {"configured": "faces140k", "source": None}
    # the data summary carries the shortcut audit (demo images: all PNG, one size: nothing to find)
    assert result["data"]["audit"]["classifier"]["warn"] is False


def test_the_dense_control_starts_from_the_baseline_as_it_is_and_is_scored_from_there_too(models, demo_shards,
                                                                                          tmp_path):
    """Fine-tuned at sparsity 0, the control has no masks and no pruning; its evaluation carries
    before_finetune like a pruned model's, which is the baseline itself (pruning at 0 % removes nothing), and
    leaves the 2:4 benchmark of the dense architecture to the baseline's evaluation."""
    import json

    from detector.prune import PruningInfo

    tuned, meta = load_model(models["dense-ft"])
    assert not any(name.endswith("_orig") for name, _ in tuned.named_parameters())  # no pruning masks
    assert PruningInfo.from_metadata(meta) == PruningInfo() and meta["init"] == str(models["baseline"])
    assert json.loads(models["dense-ft"].with_suffix(".json").read_text())["config"]["max_epochs"] == 1

    control = evaluate_stage(models["dense-ft"], data=str(demo_shards), cfg=EVALUATE, out=tmp_path / "c.json",
                             predictions=tmp_path / "c.predictions.json", pruned_from=models["baseline"])
    baseline = evaluate_stage(models["baseline"], data=str(demo_shards), cfg=EVALUATE, out=tmp_path / "b.json",
                              predictions=tmp_path / "b.predictions.json")
    assert (control["name"], baseline["name"]) == ("dense-ft", "baseline")
    assert control["pruning"]["method"] == "none" and control["pruning"]["sparsity"] == 0
    assert "semistructured" not in control and "before_finetune" not in baseline and "semistructured" in baseline
    before = control["before_finetune"]
    assert before["status"] == "measured" and before["pruned_from"] == str(models["baseline"])
    assert before["pruning"] == PruningInfo().to_dict()
    assert before["metrics"] == baseline["metrics"] and before["threshold"] == baseline["threshold"]
