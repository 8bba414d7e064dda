import json

import pytest

from detector.checkpoint import load_checkpoint, load_model
from detector.cli import main as cli_main
from detector.data.loader import manifest_sha256
from detector.prune.unstructured import is_pruned, sparsity_report

TINY = ["--set", "arch=resnet18", "--set", "image_size=16", "--set", "batch_size=8", "--set", "lr=1e-3",
        "--set", "num_workers=0", "--set", "channels_last=false", "--set", "max_epochs=2", "--set", "patience=2"]


@pytest.mark.slow
def test_train_then_resume_then_fine_tune_a_pruned_copy(demo_shards, tmp_path, capsys):
    out = tmp_path / "baseline"
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(out), *TINY]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_run"] == 2 and 1 <= result["best_epoch"] <= 2
    best = load_checkpoint(out / "checkpoint" / "best.pt")["metadata"]
    assert best["data_manifest_sha256"] == manifest_sha256(str(demo_shards))
    assert best["arch"] == "resnet18" and best["config"]["max_epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert list((out / "tb").glob("events.out.tfevents.*"))

    # The same command again finds the finished run and trains no further epoch.
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(out), *TINY]) == 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 2

    ft = tmp_path / "ft30"
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(ft), *TINY, "--set", "max_epochs=1",
                     "--init", str(out / "checkpoint" / "best.pt"), "--sparsity", "0.3"]) == 0
    model, meta = load_model(ft / "checkpoint" / "best.pt")
    assert is_pruned(model) and meta["pruning"] == {**meta["pruning"], "method": "unstructured", "sparsity": 0.3}
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.3, abs=1e-6)
    assert "best val_accuracy" in capsys.readouterr().out


def test_experiment_yaml_gives_the_baseline_stage(tmp_path):
    from detector.commands.train import load_train_config

    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  arch: resnet18\n  batch_size: 32\nbaseline:\n  batch_size: 4\n")
    cfg = load_train_config(path, ["lr=3e-4"])
    assert (cfg.arch, cfg.batch_size, cfg.lr) == ("resnet18", 4, 3e-4)


@pytest.mark.parametrize("args, message", [
    (["--set", "lr=-1"], "lr: -1"),
    (["--set", "learning_rate=1"], "unknown key(s) learning_rate"),
    (["--set", "lr"], "expected key=value"),
    (["--schedule", "gradual"], "--schedule gradual needs --sparsity > 0"),
    (["--schedule", "iterative", "--sparsity", "0.5", "--gradual-epochs", "2"],
     "--gradual-epochs does not apply to --schedule iterative"),
    (["--schedule", "gradual", "--sparsity", "0.5", "--rewind-epoch", "1"], "rewinding belongs to schedule iterative"),
    (["--schedule", "gradual", "--sparsity", "0.5", "--method", "structured"], "gradual is for unstructured pruning"),
])
def test_bad_config_is_one_clear_line(demo_shards, tmp_path, capsys, args, message):
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def fine_tune(demo_shards, tmp_path, *args):
    """A one-epoch baseline, then `detector train --init` from it with ``args``: (model, PruningInfo, its folder)."""
    from detector.prune import PruningInfo

    base, ft = tmp_path / "baseline", tmp_path / "fine-tune"
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(base), *TINY, "--set", "max_epochs=1",
                     "--no-tensorboard"]) == 0
    assert cli_main(["train", "--data", str(demo_shards), "--out", str(ft), *TINY, "--no-tensorboard",
                     "--init", str(base / "checkpoint" / "best.pt"), *args]) == 0
    model, meta = load_model(ft / "checkpoint" / "best.pt")
    return model, PruningInfo.from_metadata(meta), ft


@pytest.mark.slow
def test_train_fine_tunes_a_channel_pruned_copy_through_the_job_s_stage_function(demo_shards, tmp_path):
    from detector.prune.channels import removed_fraction

    model, info, _ = fine_tune(demo_shards, tmp_path, "--set", "max_epochs=1", "--sparsity", "0.3",
                               "--method", "structured")
    assert info.method == "structured" and info.sparsity == 0.3 and abs(info.achieved - 0.3) <= 0.01
    assert abs(removed_fraction(model, "resnet18") - 0.3) <= 0.01


@pytest.mark.slow
def test_train_prunes_gradually_with_the_schedule_flags(demo_shards, tmp_path):
    model, info, ft = fine_tune(demo_shards, tmp_path, "--sparsity", "0.9", "--schedule", "gradual",
                                "--gradual-epochs", "1", "--prune-every-steps", "2")
    assert (info.schedule, info.sparsity, info.schedule_params["prune_every_steps"]) == ("gradual", 0.9, 2)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.9, abs=1e-6)
    history = [json.loads(line) for line in (ft / "history.jsonl").read_text().splitlines()]
    assert [round(row["current_sparsity"], 6) for row in history] == [0.9, 0.9]  # the ramp is the first epoch
