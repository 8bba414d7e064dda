import pytest
import torch

from detector.model import build_model
from detector.prune.unstructured import (
    dense_state_dict,
    is_pruned,
    make_pruning_permanent,
    prune_global_l1,
    sparsity_report,
)


# Table 6 of the paper: non-zero prunable weights of ResNet-50 (fc = Linear(2048, 1)) after global L1.
@pytest.mark.parametrize(
    "amount, nonzero",
    [(0.1, 21_111_264), (0.2, 18_765_568), (0.3, 16_419_872), (0.4, 14_074_176)],
)
def test_table6_counts_are_exact(amount, nonzero):
    model = build_model("resnet50", seed=0)
    prune_global_l1(model, amount)
    report = sparsity_report(model)
    assert report["nonzero_params"] == nonzero
    assert report["prunable_params"] == 23_456_960
    assert report["total_params"] == 23_510_081
    assert report["sparsity"] == pytest.approx(amount, abs=1e-9)


def test_unpruned_model_counts_every_prunable_weight():
    report = sparsity_report(build_model("resnet50", seed=0))
    assert (report["prunable_params"], report["total_params"]) == (23_456_960, 23_510_081)
    # float32 normal init can draw a few exact zeros (seed 0: 4 of them); Table 6's baseline row has none.
    assert 23_456_940 <= report["nonzero_params"] <= 23_456_960
    assert report["sparsity"] < 1e-6


def test_pruning_is_global_not_per_layer():
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.5)
    per_layer = [float((m.weight == 0).float().mean()) for m in model.modules() if hasattr(m, "weight_mask")]
    assert max(per_layer) - min(per_layer) > 0.2  # layers differ; only the total is 50 %
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_weights_stay_zero_after_optimizer_steps(optimizer):
    torch.manual_seed(0)
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.3)
    zero_before = [m.weight == 0 for m in model.modules() if hasattr(m, "weight_mask")]
    params = model.parameters()
    opt = (torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2) if optimizer == "adam"
           else torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2))
    for _ in range(2):
        loss = model(torch.randn(2, 3, 16, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    zero_after = [m.weight == 0 for m in model.modules() if hasattr(m, "weight_mask")]
    for before, after in zip(zero_before, zero_after):
        assert torch.all(after[before])  # every pruned weight is still exactly zero
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.3, abs=1e-3)


def test_make_permanent_keeps_the_zeros_and_drops_the_masks():
    model = build_model("resnet18", seed=0).eval()
    prune_global_l1(model, 0.4)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    dense = dense_state_dict(model)
    make_pruning_permanent(model)
    assert not is_pruned(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.4, abs=1e-6)
    torch.testing.assert_close(model(x), expected)
    for k, v in model.state_dict().items():
        assert torch.equal(dense[k], v)


def test_pruning_again_reaches_the_new_total_sparsity():
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.1)
    zeros_at_10 = [m.weight == 0 for m in model.modules() if hasattr(m, "weight_mask")]
    prune_global_l1(model, 0.3)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.3, abs=1e-6)
    for before, m in zip(zeros_at_10, [m for m in model.modules() if hasattr(m, "weight_mask")]):
        assert torch.all(m.weight[before] == 0)
    with pytest.raises(ValueError, match="already 0.3000 sparse"):
        prune_global_l1(model, 0.2)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_0_1_is_refused(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        prune_global_l1(build_model("resnet18"), sparsity)


def test_prune_returns_what_it_did_for_either_method():
    from detector.prune import PruningInfo, prune

    dense = build_model("resnet18", seed=0)
    assert prune(dense, 0.0, arch="resnet18") == PruningInfo()
    info = prune(build_model("resnet18", seed=0), 0.4, method="unstructured", arch="resnet18")
    assert (info.method, info.sparsity, info.channel_ratio) == ("unstructured", 0.4, None)
    assert info.achieved == pytest.approx(0.4, abs=1e-6)
    assert PruningInfo.from_dict(info.to_dict()) == info
    with pytest.raises(ValueError, match="method: 'magnitude'"):
        prune(build_model("resnet18"), 0.4, method="magnitude", arch="resnet18")


def test_checkpoints_written_before_pruning_info_existed_still_say_what_they_are():
    from detector.prune import PruningInfo

    old_structured = {"pruning_method": "structured", "target_sparsity": 0.4, "params_removed": 0.398,
                      "channel_ratio": 0.22, "channel_multiple": 16, "dense_prunable_params": 23_456_960}
    assert PruningInfo.from_metadata(old_structured) == PruningInfo(
        "structured", 0.4, 0.398, channel_ratio=0.22, channel_multiple=16, dense_prunable_params=23_456_960)
    assert PruningInfo.from_metadata({"target_sparsity": 0.3, "sparsity": 0.3}).method == "unstructured"
    assert PruningInfo.from_metadata({"arch": "resnet50"}) == PruningInfo()
    with pytest.raises(ValueError, match="unknown key"):
        PruningInfo.from_metadata({"pruning": {"method": "unstructured", "sparsity": 0.1, "amount": 0.1}})
