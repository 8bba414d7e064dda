"""Channel pruning: valid smaller networks at the requested sparsities, checkpoints that rebuild them, and the
pipeline's train stage with ``search.method: structured``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detector.checkpoint import CheckpointError, load_model, save_checkpoint
from detector.cli import main as cli_main
from detector.config import ConfigError
from detector.model import build_model, count_parameters
from detector.prune import PruningInfo, prune
from detector.prune.channels import calibrate_channel_ratio, count_macs, prune_channels_l1, removed_fraction
from detector.trial_dir import TrialDir

SPARSITIES = [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("sparsity", [*SPARSITIES, 0.9, 0.95])
def test_resnet50_calibration_meets_each_sparsity_within_one_percent(sparsity):
    ratio, removed = calibrate_channel_ratio("resnet50", sparsity)
    assert abs(removed - sparsity) <= 0.01
    assert 0 < ratio < sparsity  # a layer loses ~1-(1-r)^2 of its weights, so fewer channels than weights go


def test_resnet50_pruned_to_40_percent_is_a_valid_smaller_network():
    model = build_model("resnet50", seed=0)
    dense_macs = count_macs(model, 64)
    info = prune(model, 0.4, method="structured", arch="resnet50")
    assert info.method == "structured" and abs(info.achieved - 0.4) <= 0.01
    # 40 % can be met with channel counts in multiples of 16, which SIMD kernels run faster.
    assert info.channel_multiple == 16
    assert all(m.out_channels % 16 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert abs(removed_fraction(model, "resnet50") - 0.4) <= 0.01
    assert info.dense_prunable_params == 23_456_960
    assert count_parameters(model)["prunable_params"] == pytest.approx(0.6 * 23_456_960, rel=0.02)
    assert model.fc.out_features == 1 and model.fc.in_features < 2048
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1)
    assert count_macs(model, 64) < 0.7 * dense_macs


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_resnet18_sparsities_and_residual_channels_stay_consistent(sparsity):
    model = build_model("resnet18", seed=0)
    prune_channels_l1(model, sparsity, arch="resnet18")
    assert abs(removed_fraction(model, "resnet18") - sparsity) <= 0.01
    # Every block's output is added to its shortcut: the widths must still agree for the sum to exist.
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            shortcut = block.downsample[0].out_channels if block.downsample is not None else block.conv1.in_channels
            assert block.conv2.out_channels == shortcut == block.bn2.num_features
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()  # trainable: gradients flow through the new widths


@torch.no_grad()
def test_the_channels_with_the_smallest_l1_norm_are_removed():
    model = build_model("resnet18", seed=0)
    block = model.layer1[0]
    weak = list(range(0, 64, 8))  # 8 of the block's 64 inner channels carry (almost) nothing
    block.conv1.weight[weak] *= 1e-6
    block.bn1.weight[weak] *= 1e-6
    block.bn1.bias[weak] *= 1e-6
    block.conv2.weight[:, weak] *= 1e-6
    prune_channels_l1(model, 0.4, arch="resnet18")  # ~22 % of each layer's channels: 14 of these 64
    norms = block.conv1.weight.abs().sum(dim=(1, 2, 3))
    assert block.conv1.out_channels < 64 - len(weak) + 1
    assert norms.min() > 1e-3  # none of the weak channels survived


def test_a_channel_pruned_model_prunes_further_to_the_new_total():
    model = build_model("resnet18", seed=0)
    prune_channels_l1(model, 0.2, arch="resnet18")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    info = prune(model, 0.6, method="structured", arch="resnet18")  # an iterative schedule's second step
    assert abs(removed_fraction(model, "resnet18") - 0.6) <= 0.01 and abs(info.achieved - 0.6) <= 0.01
    assert all(m.out_channels <= w for m, w in zip((m for m in model.modules() if isinstance(m, nn.Conv2d)), widths))
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1)
    with pytest.raises(ValueError, match=r"already lost 0\.\d{4} of its weights.*cannot prune it to 0.5"):
        prune_channels_l1(model, 0.5, arch="resnet18")  # channels do not come back


def test_channel_pruning_beyond_95_percent_is_refused_with_the_range():
    with pytest.raises(ValueError, match=r"not a fraction in \(0.0000, 0.95\]"):
        calibrate_channel_ratio("resnet18", 0.97)


def test_checkpoint_of_a_channel_pruned_model_rebuilds_it(tmp_path):
    model = build_model("resnet18", seed=0).eval()
    info = prune(model, 0.3, method="structured", arch="resnet18")
    x = torch.randn(2, 3, 32, 32)
    path = save_checkpoint(tmp_path / "s.pt", model,
                           metadata={"arch": "resnet18", "image_size": 32, "pruning": info.to_dict()})
    loaded, meta = load_model(path)
    assert PruningInfo.from_metadata(meta) == info
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                           nn.Sequential) or m.__class__.__name__ in ("ResNet", "BasicBlock")
               for m in loaded.modules())
    # Without the marker the shapes are a mismatch, reported as such (never silently reshaped).
    save_checkpoint(tmp_path / "bad.pt", model, metadata={"arch": "resnet18", "image_size": 32})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "bad.pt")


def test_train_stage_with_structured_method_fine_tunes_and_saves_a_loadable_model(tmp_path):
    from pipeline_helpers import make_tiny_data, tiny_experiment, write_untrained_baseline

    from detector.job.stages import train_stage

    data = make_tiny_data(tmp_path / "data")
    exp = tiny_experiment(data, search={"method": "structured"})
    run = tmp_path / "run"
    baseline = write_untrained_baseline(run, exp)
    out = run / "models" / "prune-40.pt"
    summary = train_stage(exp.stage_train("finetune"), data=str(data), out_dir=tmp_path / "trial", tb_dir=None,
                          init=baseline, sparsity=0.4, method=exp.search.method, model_path=out)
    assert summary["epochs_run"] == 1
    model, meta = load_model(out)
    info = PruningInfo.from_metadata(meta)
    assert info.method == "structured" and abs(info.achieved - 0.4) <= 0.01
    assert abs(removed_fraction(model, "resnet18") - 0.4) <= 0.01
    best, best_meta = load_model(TrialDir(tmp_path / "trial").best)  # the loop's own checkpoints too
    assert PruningInfo.from_metadata(best_meta) == info
    assert json.loads(out.with_suffix(".json").read_text())["best_epoch"] == 1


def test_config_names_the_method_and_refuses_others(tmp_path):
    from pipeline_helpers import tiny_experiment

    assert tiny_experiment(tmp_path, search={"method": "structured"}).search.method == "structured"
    assert tiny_experiment(tmp_path).search.method == "unstructured"
    with pytest.raises(ConfigError, match="method"):
        tiny_experiment(tmp_path, search={"method": "magnitude"})


def test_efficiency_command_measures_channel_pruned_models(capsys):
    rc = cli_main(["efficiency", "--arch", "resnet18", "--sparsities", "0,0.4", "--method", "structured", "--json",
                   "--image-size", "32", "--repeats", "2", "--warmup", "0", "--throughput-batch", "2",
                   "--throughput-repeats", "1", "--device", "cpu"])
    assert rc == 0
    dense, pruned = json.loads(capsys.readouterr().out)
    assert pruned["prunable_params"] == pytest.approx(0.6 * dense["prunable_params"], rel=0.02)
    assert pruned["size_mb"] < 0.65 * dense["size_mb"]
    assert pruned["macs"] < 0.7 * dense["macs"]
