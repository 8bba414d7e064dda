"""Structured (channel) pruning: remove whole channels ranked by L1 norm, so the network really shrinks.

Unstructured pruning (``detector.prune.unstructured``) zeroes single weights and keeps every tensor's shape, so size
and latency stay where they were (paper Table 6). Channel pruning removes output channels of a
convolution together with everything that depends on them: the matching BatchNorm entries, the input
channels of the next layers and, across the residual connections, the channels of every layer that adds
into the same tensor. torch-pruning's dependency graph finds those groups; the result is a smaller dense
ResNet that any runtime (PyTorch, ONNX Runtime) runs faster.

Sparsity means what it means for unstructured pruning: the fraction of prunable weights (Conv2d and Linear
weights, 23,456,960 in ResNet-50) that the model no longer has. torch-pruning's ``pruning_ratio`` is a
fraction of channels per layer instead, and a layer loses about ``1 - (1 - ratio)^2`` of its weights (both
its inputs and its outputs shrink), so ``calibrate_channel_ratio`` searches the ratio that meets the sparsity. Counting needs
shapes only: the search prunes models on the meta device, a fraction of a second per probe.

A channel-pruned model can be pruned further (iterative pruning, ``detector.prune.schedule``): the ratio
is then calibrated on the model's current shapes, so that the total removed reaches the new sparsity.

The head keeps its single output; only its input features shrink with the last block. A pruned model no
longer fits ``build_model(arch)``: its checkpoint's ``PruningInfo`` says ``structured`` and
``conform_to_state_dict`` rebuilds each layer at the shape of its saved tensors (no code is pickled).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import torch
from torch import nn

from detector.model import build_model, count_parameters

log = logging.getLogger(__name__)

# Channel counts that are multiples of 16 (or 8) run faster on SIMD CPUs and tensor cores: ResNet-50 at
# 40 % on one CPU core, 1.59x the dense model's speed with multiples of 16 against 1.46x with any count.
# But rounding moves every layer by up to 15 channels, and the sparsity with it, so an alignment is used
# only where the calibrated sparsity stays within ALIGNED_TOLERANCE; otherwise any count (round_to 1).
ALIGNMENTS = (16, 8, 1)
ALIGNED_TOLERANCE = 0.005
SPARSITY_TOLERANCE = 0.01  # the promise: each sparsity is met to +-1 percentage point
# The largest sparsity channel pruning takes: calibrated within 0.25 pp on ResNet-18 and ResNet-50 at every
# alignment up to here (at 0.95 the thinnest ResNet-50 layers keep 8 of 64 channels); beyond it unchecked.
MAX_SPARSITY = 0.95

# A layer's Conv2d/BatchNorm2d/Linear weight shapes, (name, shape) in module order: a hashable description of
# how far a model has been channel-pruned, so that calibrations on it can be cached.
Shapes = tuple[tuple[str, tuple[int, ...]], ...]


def _prunable(model: nn.Module) -> int:
    return count_parameters(model)["prunable_params"]


@functools.lru_cache(maxsize=None)
def dense_prunable_params(arch: str) -> int:
    """Prunable weights of the unpruned architecture (shapes only; no memory is allocated)."""
    with torch.device("meta"):
        return _prunable(build_model(arch))


def removed_fraction(model: nn.Module, arch: str) -> float:
    """Fraction of ``arch``'s prunable weights that ``model`` no longer has (0 for an unpruned model)."""
    return 1.0 - _prunable(model) / dense_prunable_params(arch)


def layer_shapes(model: nn.Module) -> Shapes:
    """The weight shapes of ``model``'s Conv2d, BatchNorm2d and Linear layers (what ``conform_to_state_dict``
    needs to rebuild its architecture at these widths)."""
    return tuple((f"{name}.weight", tuple(m.weight.shape)) for name, m in model.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and m.weight is not None)


def _prune_channels_in_place(model: nn.Module, ratio: float, importance: Any, round_to: int) -> None:
    import torch_pruning as tp

    device = next(model.parameters()).device
    # The dependency graph is traced through autograd, so gradients are switched on whatever the caller
    # runs under; eval mode keeps BatchNorm's running statistics from learning the random example.
    was_training = model.training
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        # A private generator: pruning between epochs must not move the training's random stream.
        example = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
                   if device.type != "meta" else torch.empty(1, 3, 32, 32, device="meta"))
        pruner = tp.pruner.MetaPruner(
            model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[model.fc],
            round_to=round_to if round_to > 1 else None,
        )
        pruner.step()
    model.train(was_training)


def _meta_model(arch: str, shapes: Shapes) -> nn.Module:
    """``arch`` on the meta device, at the layer widths ``shapes`` (the unpruned widths when empty)."""
    with torch.device("meta"):
        model = build_model(arch)
        if shapes:
            conform_to_state_dict(model, {name: torch.empty(shape) for name, shape in shapes})
    return model


def _removed_at(arch: str, ratio: float, round_to: int, shapes: Shapes = ()) -> float:
    import torch_pruning as tp

    model = _meta_model(arch, shapes)
    # Which channels go does not change how many: any importance gives the same count, random is cheapest.
    # Its draws come from the global generator, which a training run between epochs must find untouched
    # (and cached calibrations draw nothing, so a resumed run would otherwise diverge).
    with torch.random.fork_rng(devices=[]):
        _prune_channels_in_place(model, ratio, tp.importance.RandomImportance(), round_to)
    return removed_fraction(model, arch)


@functools.lru_cache(maxsize=128)
def calibrate_channel_ratio(arch: str, sparsity: float, *, tolerance: float = 0.0025,
                            round_to: int = 1, shapes: Shapes = ()) -> tuple[float, float]:
    """The per-layer channel ratio that removes ``sparsity`` of ``arch``'s prunable weights, with channel
    counts rounded to multiples of ``round_to``; from the unpruned ``arch``, or from a channel-pruned one
    whose ``layer_shapes`` are ``shapes`` (the ratio then applies to its current channels).

    Returns ``(ratio, removed)`` with ``|removed - sparsity| <= tolerance`` where the channel counts allow it
    (otherwise the closest ratio found).

    >>> ratio, removed = calibrate_channel_ratio("resnet18", 0.4)
    >>> round(removed, 2)
    0.4
    """
    already = removed_fraction(_meta_model(arch, shapes), arch)
    if not already < sparsity <= MAX_SPARSITY:
        raise ValueError(f"sparsity: {sparsity} is not a fraction in ({already:.4f}, {MAX_SPARSITY}]")
    lo, hi = 0.0, 0.95
    # Weights scale with (1 - ratio)^2: start there, then Newton steps on that model, kept in the bracket.
    kept = 1.0 - already
    ratio = 1.0 - ((1.0 - sparsity) / kept) ** 0.5
    best = (ratio, float("inf"), 0.0)
    for _ in range(24):
        removed = _removed_at(arch, ratio, round_to, shapes)
        if abs(removed - sparsity) < best[1]:
            best = (ratio, abs(removed - sparsity), removed)
        if abs(removed - sparsity) <= tolerance:
            break
        if removed < sparsity:
            lo = ratio
        else:
            hi = ratio
        if hi - lo < 1e-4:  # narrower than one channel of the widest layer: the counts cannot get closer
            break
        step = ratio + (sparsity - removed) / (2.0 * kept * (1.0 - ratio))
        ratio = step if lo < step < hi else (lo + hi) / 2
    ratio, _, removed = best
    return ratio, removed


def _every_layer_pruned(arch: str, ratio: float, round_to: int, shapes: Shapes) -> bool:
    """Whether every convolution keeps at least ``round_to`` channels. torch-pruning rounds a layer's kept
    channels down to a multiple of ``round_to``; where that leaves none it skips the layer whole, and the
    calibration then meets the budget by thinning the others: ResNet-18 at 95 % in multiples of 16 kept
    all 64 channels of the stem and layer1 (2.3x the MACs of the 90 % model)."""
    model = _meta_model(arch, shapes)
    return all(int(m.out_channels * (1.0 - ratio)) >= round_to for m in model.modules() if isinstance(m, nn.Conv2d))


def choose_channel_ratio(arch: str, sparsity: float, shapes: Shapes = ()) -> tuple[float, float, int]:
    """``(ratio, removed, round_to)``: the widest channel alignment of ``ALIGNMENTS`` that still meets
    ``sparsity`` within ``ALIGNED_TOLERANCE`` and prunes every layer, and its calibrated ratio (``shapes`` as for
    ``calibrate_channel_ratio``).

    >>> choose_channel_ratio("resnet50", 0.4)[2]
    16
    """
    for round_to in ALIGNMENTS[:-1]:
        ratio, removed = calibrate_channel_ratio(arch, sparsity, round_to=round_to, shapes=shapes)
        if abs(removed - sparsity) <= ALIGNED_TOLERANCE and _every_layer_pruned(arch, ratio, round_to, shapes):
            return ratio, removed, round_to
    return (*calibrate_channel_ratio(arch, sparsity, round_to=1, shapes=shapes), 1)


def prune_channels_l1(model: nn.Module, sparsity: float, *, arch: str,
                      round_to: int | None = None) -> tuple[float, int]:
    """Remove channels of ``model`` (an ``arch``, unpruned or already channel-pruned), lowest L1 norm first,
    until ``sparsity`` of the architecture's prunable weights are gone. In place; returns ``(channel ratio,
    channel multiple)`` that were used (``detector.prune.prune`` wraps this into a ``PruningInfo``).

    ``round_to``: pruned channel counts are multiples of it; None picks the widest alignment that keeps
    the sparsity (``choose_channel_ratio``). On a channel-pruned model the ratio is a fraction of its
    current channels, calibrated on its shapes: pruning a 20 % model at 0.4 gives a 40 % model.

    >>> model = build_model("resnet18", seed=0)
    >>> ratio, multiple = prune_channels_l1(model, 0.3, arch="resnet18")
    >>> round(removed_fraction(model, "resnet18"), 2), model.eval()(torch.zeros(1, 3, 32, 32)).shape
    (0.3, torch.Size([1, 1]))
    """
    import torch_pruning as tp

    already = removed_fraction(model, arch)
    if sparsity <= already:
        raise ValueError(f"sparsity: the model has already lost {already:.4f} of its weights to channel pruning; "
                         f"cannot prune it to {sparsity}")
    shapes = layer_shapes(model) if already > 0 else ()
    if round_to is None:
        ratio, _, round_to = choose_channel_ratio(arch, sparsity, shapes)
    else:
        ratio, _ = calibrate_channel_ratio(arch, sparsity, round_to=round_to, shapes=shapes)
    # L1 norm of each channel's weights, summed over the whole dependency group (so a residual channel is
    # ranked by every layer that reads or writes it).
    _prune_channels_in_place(model, ratio, tp.importance.MagnitudeImportance(p=1), round_to)
    removed = removed_fraction(model, arch)
    log.info("channel pruning (L1, per-layer ratio %.4f, channels in multiples of %d): removed %.2f%% of "
             "prunable weights", ratio, round_to, 100 * removed)
    if abs(removed - sparsity) > SPARSITY_TOLERANCE:
        log.warning("%s: channel pruning removed %.4f of the prunable weights, not %.4f +- %.2f (channel counts "
                    "too coarse at multiples of %d)", arch, removed, sparsity, SPARSITY_TOLERANCE, round_to)
    return ratio, round_to


def _replacement(module: nn.Module, shape: tuple[int, ...]) -> nn.Module | None:
    """A fresh layer like ``module`` whose weight has ``shape`` (None when the shapes already agree)."""
    if tuple(module.weight.shape) == shape:
        return None
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape[1] * module.groups, shape[0], module.kernel_size, stride=module.stride,
                         padding=module.padding, dilation=module.dilation, groups=module.groups,
                         bias=module.bias is not None, padding_mode=module.padding_mode, **kw)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                              track_running_stats=module.track_running_stats, **kw)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None, **kw)
    return None


def conform_to_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Resize the Conv2d, BatchNorm2d and Linear layers of ``model`` to the shapes of ``state``'s weights
    (a channel-pruned model's), so that ``load_state_dict(state)`` fits. Returns how many were replaced.

    Only shapes come from ``state``; the layer types and wiring stay those of the architecture.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or module.weight is None:
            continue
        saved = state.get(f"{name}.weight", state.get(f"{name}.weight_orig"))
        if saved is None:
            continue
        new = _replacement(module, tuple(saved.shape))
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced += 1
    return replaced


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on a (1, 3, S, S) image (dense arithmetic: zeros count)."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return int(macs)
