"""2:4 semi-structured sparsity: the masks, the GEMM form of 1x1 convolutions, and the reason it is skipped
where no capable GPU is present."""

from __future__ import annotations

import copy

import pytest
import torch

from detector.model import build_model
from detector.prune.semistructured import (
    mask_2_4,
    plan_2_4,
    prune_2_4,
    semistructured_benchmark,
    semistructured_unavailable,
    to_semistructured,
)


def test_without_cuda_it_says_so_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = semistructured_unavailable()
    assert reason == "CUDA is not available on this machine (2:4 sparse kernels need an NVIDIA GPU)"
    assert semistructured_benchmark(build_model("resnet18")) == {"status": f"skipped: {reason}"}
    with pytest.raises(RuntimeError, match="2:4 sparse kernels unavailable: CUDA is not available"):
        to_semistructured(build_model("resnet18"))


def test_an_older_gpu_is_named_with_its_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert semistructured_unavailable() == ("Tesla T4 has compute capability 7.5; 2:4 sparse tensor cores need "
                                            "8.0 or later")


def test_kernels_that_fail_are_reported_not_raised(monkeypatch):
    # Pretend the device passed the checks; torch's conversion then refuses the CPU tensors for real.
    import detector.prune.semistructured as semi

    monkeypatch.setattr(semi, "semistructured_unavailable", lambda device=None: None)
    r = semi.semistructured_benchmark(build_model("resnet50"), image_size=32, device="cpu", dtype=torch.float32)
    assert r["status"].startswith("skipped: the 2:4 kernels failed on this GPU: ")
    assert "CUDA" in r["status"]


@pytest.mark.parametrize("weights, keep", [
    ([0.1, -3.0, 2.0, 0.5], [False, True, True, False]),
    ([-1.0, 0.0, 0.0, 1.0, 4.0, 3.0, -2.0, 1.0], [True, False, False, True, True, True, False, False]),
])
def test_mask_keeps_the_two_largest_magnitudes_of_each_four(weights, keep):
    assert mask_2_4(torch.tensor([weights])).tolist() == [keep]


def test_resnet50_supported_layers_become_exactly_2_of_4_sparse():
    model = build_model("resnet50", seed=0)
    original = copy.deepcopy(model)
    plan = plan_2_4(model)
    info = prune_2_4(model)
    assert info["layers_2_4"] == 36  # the 1x1 convolutions: 2 per bottleneck block (16) + 4 downsamples
    assert 0.5 < info["weights_covered"] < 0.55
    assert plan["conv1"] == "7x7 convolution (would need im2col)"
    assert plan["layer1.0.conv2"] == "3x3 convolution (would need im2col)"
    assert plan["fc"].startswith("weight (1, 2048) is not a multiple of (32, 64)")
    modules, before = dict(model.named_modules()), dict(original.named_modules())
    for name, reason in plan.items():
        weight = modules[name].weight
        if reason is None:
            assert torch.all((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2), name
        else:
            assert torch.equal(weight, before[name].weight), name  # left dense


def test_1x1_convolutions_as_matrix_products_compute_the_masked_network():
    # `convert` stands in for torch.sparse.to_sparse_semi_structured (CUDA only): the wiring is the same.
    model = build_model("resnet50", seed=0).eval()
    masked = copy.deepcopy(model)
    prune_2_4(masked)
    to_semistructured(model, convert=lambda w: w)
    assert type(model.layer1[0].downsample[0]).__name__ == "Conv1x1AsLinear"
    assert model.layer2[0].downsample[0].stride == (2, 2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(semistructured_unavailable() is not None, reason=f"needs a GPU: {semistructured_unavailable()}")
def test_on_a_capable_gpu_the_2_4_model_is_measured_against_dense():
    r = semistructured_benchmark(build_model("resnet50", seed=0), image_size=64, batch_sizes=(1, 8), repeats=5,
                                 warmup=2)
    assert r["status"] == "measured" and r["layers_2_4"] == 36
    assert set(r["latency_ms"]) == {"1", "8"} and all(v > 0 for v in r["speedup"].values())
    assert r["max_abs_diff_vs_masked_dense"] < 5e-2
