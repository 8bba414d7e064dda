"""The detector: a torchvision ResNet with a single-logit head (logit > 0 means Real = 1).

The paper's ResNet-50 with ``fc = Linear(2048, 1)`` has 23,510,081 parameters, of which 23,456,960 are
Conv2d/Linear weights (the ones pruning may zero); the rest are BatchNorm affine terms and the fc bias.
Models are trained from scratch: no pretrained weights are ever downloaded.
"""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

# arch name -> torchvision constructor; all share the `fc` head this module replaces.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
}


def build_model(arch: str = "resnet50", *, seed: int | None = None) -> nn.Module:
    """A freshly initialised ResNet whose head outputs one logit per image, shape (N, 1).

    ``seed`` makes the initial weights reproducible without touching the caller's global RNG.

    >>> model = build_model("resnet18", seed=0)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 1])
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = ARCHITECTURES[arch](weights=None)
        model.fc = nn.Linear(model.fc.in_features, 1)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``total_params`` (every learnable parameter) and ``prunable_params`` (Conv2d/Linear weights).

    Works on pruned models too: torch's pruning renames ``weight`` to ``weight_orig`` (still a
    parameter) and keeps the mask as a buffer, so neither count changes.
    """
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return {"total_params": total, "prunable_params": prunable}
