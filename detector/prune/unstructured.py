"""Global L1 unstructured pruning (paper §2.3) and sparsity accounting (Table 6).

``prune_global_l1`` ranks every Conv2d and Linear weight of the network together by |w| and masks the
smallest ``sparsity`` of them. The masks stay on the model (``weight = weight_orig * weight_mask``), so
pruned weights stay zero however the optimizer moves ``weight_orig`` during fine-tuning;
``make_pruning_permanent`` bakes the zeros into plain ``weight`` tensors for export.

Table 6's counts follow exactly: 23,456,960 prunable weights in ResNet-50, of which
21,111,264 / 18,765,568 / 16,419,872 / 14,074,176 stay non-zero at 10 / 20 / 30 / 40 %.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

from detector.model import count_parameters

log = logging.getLogger(__name__)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (module, "weight") pair pruning acts on: all Conv2d and Linear weights, in module order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def is_pruned(model: nn.Module) -> bool:
    """True when pruning masks are attached (the model is mid-fine-tune, not yet exported)."""
    return any(prune.is_pruned(m) for m, _ in prunable_weights(model))


def prune_global_l1(model: nn.Module, sparsity: float) -> None:
    """Mask the ``sparsity`` fraction of all prunable weights with the smallest |w|, across layers.

    ``sparsity`` is the target for the whole network. On a model that is already pruned the existing
    zeros count towards it (they are the smallest weights), so pruning a 10 % model at 0.3 gives a 30 %
    model, not 37 %.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: {sparsity} is not a fraction in [0, 1)")
    current = sparsity_report(model)["sparsity"]
    if sparsity < current - 1e-9:
        raise ValueError(
            f"sparsity: the model is already {current:.4f} sparse; cannot prune it back to {sparsity}"
        )
    pairs = prunable_weights(model)
    # Every prunable weight masked already (a gradual schedule's next step): new masks in place. The
    # parameters and mask buffers stay the same tensors, which the optimizer and DDP hold (torch's
    # prune.remove sets weight_orig.data, after which DDP no longer sees that parameter's gradients).
    in_place = all(hasattr(module, f"{name}_mask") for module, name in pairs)
    if is_pruned(model) and not in_place:
        # A fresh mask over the current (zero-carrying) weights, rather than torch's nested containers,
        # whose amount would apply to the surviving weights only.
        make_pruning_permanent(model)
    # What prune.global_unstructured(..., L1Unstructured, amount=sparsity) computes (the same topk over the
    # same vector, the same round(amount * n)), without its mask-combining container, which costs several
    # times the ranking itself: a gradual schedule prunes again every few hundred steps.
    with torch.no_grad():
        if in_place:  # the zeros baked into weight_orig, as make_pruning_permanent would
            for module, name in pairs:
                getattr(module, f"{name}_orig").mul_(getattr(module, f"{name}_mask"))
        weights = [effective_weight(module) if in_place else getattr(module, name) for module, name in pairs]
        scores = torch.cat([w.detach().abs().reshape(-1) for w in weights])
        keep = torch.ones_like(scores)
        n_pruned = round(sparsity * scores.numel())
        if n_pruned:
            keep[torch.topk(scores, k=n_pruned, largest=False).indices] = 0
        masks = torch.split(keep, [w.numel() for w in weights])
        for (module, name), w, mask in zip(pairs, weights, masks):
            if in_place:
                getattr(module, f"{name}_mask").copy_(mask.view_as(w))
    if in_place:
        refresh_masked_weights(model)
    else:
        for (module, name), w, mask in zip(pairs, weights, masks):
            prune.custom_from_mask(module, name, mask.view_as(w))
    log.info("pruned %.1f%% of prunable weights (global L1)", 100 * sparsity)


def make_pruning_permanent(model: nn.Module) -> None:
    """Replace each ``weight_orig * weight_mask`` by a plain ``weight`` holding the zeros; drop the masks."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


def exported_copy(model: nn.Module) -> nn.Module:
    """A deep copy with pruning made permanent (what deployment runs); ``model`` keeps its masks."""
    for module, name in prunable_weights(model):
        if hasattr(module, f"{name}_mask"):
            # The masked weight is recomputed before every forward; a detached copy of it lets deepcopy
            # through (it refuses non-leaf tensors) without changing what the model computes.
            setattr(module, name, getattr(module, name).detach())
    net = copy.deepcopy(model)
    make_pruning_permanent(net)
    return net


def attach_identity_masks(model: nn.Module, masked_names: set[str]) -> None:
    """Give the named modules an all-ones mask, so a pruned state dict (``*_orig``/``*_mask``) can load."""
    for module_name, module in model.named_modules():
        if module_name in masked_names and not hasattr(module, "weight_mask"):
            prune.identity(module, "weight")


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have once pruning is made permanent, without changing the model."""
    state = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            out[base] = value * state[f"{base}_mask"]
        else:
            out[key] = value
    # Module versions travel with a real state dict; keep them so the saved bytes match an export's.
    out._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return out


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the next forward pass uses. ``module.weight`` of a masked module is only refreshed by
    the forward pre-hook, so after ``load_state_dict`` it can be stale until then."""
    if hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def refresh_masked_weights(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` now, as the forward pre-hook would."""
    for module, name in prunable_weights(model):
        if hasattr(module, f"{name}_mask"):
            with torch.no_grad():
                setattr(module, name, effective_weight(module))


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, float | int]:
    """Sparsity of the prunable weights as they act in the forward pass (masked or permanent zeros).

    >>> from detector.model import build_model
    >>> r = sparsity_report(build_model("resnet50"))
    >>> r["prunable_params"], r["total_params"]
    (23456960, 23510081)
    """
    counts = count_parameters(model)
    nonzero = sum(int(torch.count_nonzero(effective_weight(m))) for m, _ in prunable_weights(model))
    prunable = counts["prunable_params"]
    return {
        "sparsity": 1.0 - nonzero / prunable if prunable else 0.0,
        "nonzero_params": nonzero,
        "prunable_params": prunable,
        "total_params": counts["total_params"],
    }
