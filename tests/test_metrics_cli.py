import json
from pathlib import Path

import pytest
from conftest import make_faces140k, make_synthbuster

from detector.checkpoint import save_checkpoint
from detector.cli import main as cli_main
from detector.data.loader import manifest_sha256
from detector.data.prepare import prepare
from detector.evaluate.scoring import evaluate_split
from detector.model import build_model


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> Path:
    """140k faces (real + fake) and SynthBuster (fake only, nine generators), as prepared shards."""
    root = tmp_path_factory.mktemp("two_sources")
    make_faces140k(root / "faces140k", {"train": 2, "valid": 2, "test": 4})
    make_synthbuster(root / "synthbuster", per_generator=10, size=16)
    prepare(root / "data", sources={"faces140k": root / "faces140k", "synthbuster": root / "synthbuster"},
            workers=1, progress=False)
    return root / "data"


def test_every_test_set_with_per_source_and_generator_breakdowns(two_sources):
    model = build_model("resnet18", seed=0)
    out = evaluate_split(model, str(two_sources), "test", image_size=16, batch_size=4)["metrics"]
    assert set(out["sources"]) == {"faces140k", "synthbuster"}
    faces, synth = out["sources"]["faces140k"]["all"], out["sources"]["synthbuster"]["all"]
    assert faces["support"] == {"fake": 4, "real": 4} and faces["auc"] is not None
    assert synth["support"] == {"fake": 9, "real": 0} and synth["auc"] is None
    assert len(out["sources"]["synthbuster"]["generators"]) == 9
    assert out["all"]["samples"] == 17
    total = sum(sum(map(sum, s["all"]["confusion_matrix"]["matrix"])) for s in out["sources"].values())
    assert total == 17


def test_evaluate_command_writes_json_and_a_table(two_sources, tmp_path, capsys):
    ckpts = []
    for name, seed in (("baseline", 0), ("prune-30", 1)):
        ckpts.append(save_checkpoint(tmp_path / f"{name}.pt", build_model("resnet18", seed=seed),
                                     metadata={"arch": "resnet18", "image_size": 16}))
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--data", str(two_sources), "--checkpoint", *map(str, ckpts), "--out", str(out),
                     "--num-workers", "0", "--device", "cpu"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["positive_class"] == "real" and result["data_manifest_sha256"] == manifest_sha256(str(two_sources))
    assert [m["name"] for m in result["models"]] == ["baseline", "prune-30"]
    cm = result["models"][0]["metrics"]["sources"]["faces140k"]["all"]["confusion_matrix"]
    assert cm["labels"] == ["fake", "real"] and cm["rows"] == "true"
    table = (out / "metrics.md").read_text()
    assert table == capsys.readouterr().out
    for needle in ("| baseline | faces140k ", "| prune-30 | synthbuster ", "dalle3", "Positive class: real"):
        assert needle in table


def test_evaluate_command_reports_a_bad_checkpoint(two_sources, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["evaluate", "--data", str(two_sources), "--checkpoint", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.pt: refused to load: not a weights-only checkpoint" in capsys.readouterr().err


def test_evaluate_command_with_robustness_tests_each_model_against_the_first(two_sources, tmp_path, capsys):
    ckpts = [save_checkpoint(tmp_path / f"{name}.pt", build_model("resnet18", seed=seed),
                             metadata={"arch": "resnet18", "image_size": 16}) for name, seed in (("dense", 0), ("p40", 1))]
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--data", str(two_sources), "--checkpoint", *map(str, ckpts), "--out", str(out),
                     "--num-workers", "0", "--device", "cpu", "--robustness"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    perturbed = result["models"][1]["robustness"]["perturbations"]
    assert list(perturbed) == ["jpeg-q95", "jpeg-q75", "jpeg-q50", "jpeg-q30", "blur-s1", "blur-s2", "blur-s3",
                               "downscale-x0.5", "downscale-x0.25", "format-jpeg-q95"]
    assert perturbed["jpeg-q50"]["set"] == "faces140k" and perturbed["jpeg-q50"]["images"] == 8
    assert perturbed["format-jpeg-q95"]["set"] == "combined_test" and perturbed["format-jpeg-q95"]["images"] == 17
    table = capsys.readouterr().out
    assert "## Robustness" in table and "p40 under JPEG q30 vs dense under the same perturbation: accuracy difference" in table
    assert result["models"][0]["calibrated_threshold"] is not None  # chosen on the val split
    assert "fake predicted real" in table
