"""2:4 semi-structured sparsity: a 50 % sparse model that NVIDIA sparse tensor cores (compute capability
8.0 and later: A100, H100, RTX 30xx/40xx) actually run faster.

In every group of 4 consecutive weights along a layer's input dimension the 2 smallest |w| are zeroed.
``torch.sparse.to_sparse_semi_structured`` then stores such a float16/bfloat16 matrix compressed (values
plus 2-bit indices) and ``F.linear`` with it runs the sparse kernels (cuSPARSELt, or CUTLASS).

Those kernels take a 2-D weight of shape (out, in) with out a multiple of 32 and in a multiple of 64, so:

- ``nn.Linear`` qualifies directly when its shape does; ResNet's head (one output) does not.
- A 1x1 ``Conv2d`` without padding is a matrix product over pixels: ``Conv1x1AsLinear`` takes every
  ``stride``-th pixel, flattens (N, C, H, W) to (N*H*W, C) and applies the weight as a linear layer.
  ResNet-50's 36 1x1 convolutions hold 51.7 % of its prunable weights.
- A kxk convolution (k > 1) would have to be unfolded into a (N*H*W, C*k*k) matrix first (im2col), whose
  memory traffic costs more than the sparse product saves; it stays dense and is listed as unsupported.

Masking (``prune_2_4``) runs anywhere and lets a 2:4 model be fine-tuned and evaluated on any device; the
speed-up needs the GPU. ``semistructured_unavailable`` says why a machine cannot measure it, and
``semistructured_benchmark`` returns that reason as ``status: "skipped: ..."`` instead of numbers.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 0)
# (out, in) multiples the fp16/bf16 kernels need (torch.sparse.SparseSemiStructuredTensor shape constraints).
ROW_MULTIPLE, COL_MULTIPLE = 32, 64


def semistructured_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why 2:4 sparse kernels cannot run on ``device`` (default: the first CUDA device), or None if they can."""
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine (2:4 sparse kernels need an NVIDIA GPU)"
    device = torch.device(device or "cuda")
    if device.type != "cuda":
        return f"device {device} is not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 sparse "
                f"tensor cores need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or later")
    return None


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the 2 largest |w| of every 4 consecutive weights along the input dimension(s).

    >>> mask_2_4(torch.tensor([[0.1, -3.0, 2.0, 0.5]])).tolist()
    [[False, True, True, False]]
    """
    rows = weight.reshape(weight.shape[0], -1)
    if rows.shape[1] % 4:
        raise ValueError(f"2:4 needs the input size to be a multiple of 4, got {rows.shape[1]}")
    groups = rows.abs().reshape(rows.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def _gemm_weight_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot run as a 2:4 sparse matrix product (None when it can)."""
    if isinstance(module, nn.Conv2d):
        if module.kernel_size != (1, 1):
            return f"{module.kernel_size[0]}x{module.kernel_size[1]} convolution (would need im2col)"
        if module.padding not in ((0, 0), "valid") or module.groups != 1:
            return "1x1 convolution with padding or groups"
    elif not isinstance(module, nn.Linear):
        return f"{type(module).__name__} is not a Linear or Conv2d layer"
    out_f, in_f = _gemm_weight_shape(module)  # type: ignore[misc]
    if out_f % ROW_MULTIPLE or in_f % COL_MULTIPLE:
        return (f"weight ({out_f}, {in_f}) is not a multiple of ({ROW_MULTIPLE}, {COL_MULTIPLE}), "
                "which the fp16/bf16 sparse kernels need")
    return None


def plan_2_4(model: nn.Module) -> dict[str, str | None]:
    """Every Conv2d/Linear layer by name -> None if it will be made 2:4 sparse, else the reason it stays dense."""
    return {name: unsupported_reason(m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def prune_2_4(model: nn.Module) -> dict[str, Any]:
    """Zero 2 of every 4 weights (smallest |w|) in each supported layer, in place; others stay dense.

    Returns the share of the prunable weights that became 2:4 sparse and the layers left out (with why).
    """
    plan = plan_2_4(model)
    modules = dict(model.named_modules())
    covered = total = 0
    for name, reason in plan.items():
        weight = modules[name].weight
        total += weight.numel()
        if reason is None:
            weight.mul_(mask_2_4(weight))
            covered += weight.numel()
    return {"layers_2_4": sum(r is None for r in plan.values()), "weights_covered": covered / total if total else 0.0,
            "unsupported": {n: r for n, r in plan.items() if r is not None}}


class Conv1x1AsLinear(nn.Module):
    """A 1x1 convolution (no padding) computed as a linear layer over pixels, so its weight can be a
    2-D (possibly 2:4 sparse) matrix. Same output as the convolution it replaces."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor) -> None:
        super().__init__()
        self.stride = conv.stride
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        n, c, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c), self.weight, self.bias)  # (N*H*W, out)
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def to_semistructured(
    model: nn.Module,
    *,
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Make ``model`` (on a capable GPU, in float16 or bfloat16) run its supported layers with 2:4 sparse
    weights, in place: masks them (``prune_2_4``), then replaces each weight by ``convert(weight)``, by
    default ``torch.sparse.to_sparse_semi_structured``; 1x1 convolutions become ``Conv1x1AsLinear``.

    ``convert`` exists so that the wiring can be checked where the sparse kernels are missing (a CPU).
    """
    if convert is None:
        from torch.sparse import to_sparse_semi_structured

        reason = semistructured_unavailable(next(model.parameters()).device)
        if reason:
            raise RuntimeError(f"2:4 sparse kernels unavailable: {reason}")
        convert = to_sparse_semi_structured
    info = prune_2_4(model)
    for name, module in list(model.named_modules()):
        if name in info["unsupported"] or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = convert(module.weight.detach().reshape(module.weight.shape[0], -1).contiguous())
        if isinstance(module, nn.Conv2d):
            new: nn.Module = Conv1x1AsLinear(module, weight)
        else:
            module.weight = nn.Parameter(weight, requires_grad=False)
            new = module
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return info


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def semistructured_benchmark(
    model: nn.Module,
    *,
    image_size: int = 224,
    batch_sizes: tuple[int, ...] = (1, 64),
    dtype: torch.dtype = torch.float16,
    repeats: int = 50,
    warmup: int = 10,
    device: str = "cuda",
) -> dict[str, Any]:
    """Latency of a 2:4 copy of ``model`` against the dense model, both in ``dtype`` on ``device``.

    ``{"status": "measured", "latency_ms": {batch: {"dense", "2:4"}}, "speedup": {batch: x}, ...}``, or
    ``{"status": "skipped: <reason>"}`` where the machine has no capable GPU (nothing is measured then).
    ``model`` itself is not changed.
    """
    reason = semistructured_unavailable(device)
    if reason:
        log.info("2:4 semi-structured sparsity skipped: %s", reason)
        return {"status": f"skipped: {reason}"}
    from detector.prune.unstructured import exported_copy

    dense = exported_copy(model).eval().to(device=device, dtype=dtype)
    sparse = copy.deepcopy(dense)
    try:
        info = to_semistructured(sparse)
        sparse(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError) as e:
        # An optional measurement: a torch build without cuSPARSELt/CUTLASS kernels must not fail the evaluation.
        log.warning("2:4 semi-structured sparsity failed on %s: %s", device, e)
        return {"status": f"skipped: the 2:4 kernels failed on this GPU: {str(e).splitlines()[0]}"}
    latency: dict[str, dict[str, float]] = {}
    speedup: dict[str, float] = {}
    for batch in batch_sizes:
        x = torch.randn(batch, 3, image_size, image_size, device=device, dtype=dtype)
        d = _median_ms(lambda: dense(x), repeats, warmup)
        s = _median_ms(lambda: sparse(x), repeats, warmup)
        latency[str(batch)] = {"dense": d, "2:4": s}
        speedup[str(batch)] = d / s
    # The 2:4 model computes the masked network: compare it with the same masks applied densely.
    masked = copy.deepcopy(dense)
    prune_2_4(masked)
    x = torch.randn(2, 3, image_size, image_size, device=device, dtype=dtype)
    max_diff = float((sparse(x).float() - masked(x).float()).abs().max())
    return {
        "status": "measured",
        "device": f"cuda: {torch.cuda.get_device_name(device)}",
        "dtype": str(dtype).removeprefix("torch."),
        "image_size": image_size,
        "latency_ms": latency,
        "speedup": speedup,
        "layers_2_4": info["layers_2_4"],
        "weights_covered": info["weights_covered"],
        "unsupported_layers": len(info["unsupported"]),
        "max_abs_diff_vs_masked_dense": max_diff,
    }
