import pytest
import torch

from detector.model import ARCHITECTURES, build_model, count_parameters


def test_resnet50_has_the_papers_parameter_counts():
    counts = count_parameters(build_model("resnet50"))
    assert counts == {"total_params": 23_510_081, "prunable_params": 23_456_960}


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_head_is_a_single_logit(arch):
    model = build_model(arch, seed=0).eval()
    assert model.fc.out_features == 1
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 1)


def test_seed_makes_initial_weights_reproducible_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = build_model("resnet18", seed=7), build_model("resnet18", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = build_model("resnet18", seed=8)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="arch: unknown architecture 'vgg16'.*resnet50"):
        build_model("vgg16")


def test_every_listed_arch_builds():
    for arch in ARCHITECTURES:
        with torch.device("meta"):
            assert build_model(arch).fc.out_features == 1
