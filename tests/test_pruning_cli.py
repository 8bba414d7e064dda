import pytest

from detector.checkpoint import load_model, save_checkpoint
from detector.cli import main as cli_main
from detector.model import build_model
from detector.prune.unstructured import is_pruned, sparsity_report


@pytest.fixture
def baseline(tmp_path):
    meta = {"arch": "resnet18", "image_size": 32, "metrics": {"val_accuracy": 0.9}, "data_manifest_sha256": "cd" * 32}
    return save_checkpoint(tmp_path / "baseline.pt", build_model("resnet18", seed=0), metadata=meta)


def test_prune_keeps_masks_for_fine_tuning(baseline, tmp_path, capsys):
    out = tmp_path / "prune30.pt"
    assert cli_main(["prune", "--checkpoint", str(baseline), "--sparsity", "0.3", "--out", str(out)]) == 0
    assert "sparsity 0.3000" in capsys.readouterr().out
    model, meta = load_model(out)
    assert is_pruned(model)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.3, abs=1e-6)
    assert meta["sparsity"] == pytest.approx(0.3, abs=1e-6) and meta["pruning"]["sparsity"] == 0.3
    assert meta["metrics"] == {}  # the baseline's metrics do not describe the pruned weights
    assert meta["data_manifest_sha256"] == "cd" * 32 and meta["pruned_from"] == str(baseline)


def test_prune_permanent_exports_plain_weights(baseline, tmp_path):
    out = tmp_path / "prune40.pt"
    assert cli_main(["prune", "--checkpoint", str(baseline), "--sparsity", "0.4", "--out", str(out),
                     "--permanent"]) == 0
    model, meta = load_model(out)
    assert not is_pruned(model) and meta["masks"] is False
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "sparsity: 1.5 is not a fraction"),
    (["--sparsity", "0.3", "--checkpoint", "nope.pt"], "nope.pt: checkpoint not found"),
])
def test_prune_errors_are_one_clear_line(baseline, tmp_path, capsys, args, message):
    argv = ["prune", "--checkpoint", str(baseline), "--out", str(tmp_path / "x.pt"), *args]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
