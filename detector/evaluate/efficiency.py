"""Efficiency of a model (paper Table 6): parameter counts, size on disk, latency and throughput.

Unstructured pruning zeroes weights but keeps every tensor dense, so the paper finds the size (~90 MB)
and latency (~30 ms) unchanged across sparsities; these measurements reproduce that protocol:

- ``size_mb``: bytes of the saved dense state dict (masks made permanent) / 2^20; 89.98 for ResNet-50.
- ``sparse_size_mb``: the same weights in the compact sparse format (``detector export --format sparse``),
  which does shrink with sparsity; ``macs``: multiply-accumulates per image (what channel pruning cuts).
- ``latency_ms``: median over ``repeats`` forward passes at batch 1, after ``warmup`` passes;
  ``latency_p10_ms`` / ``latency_p90_ms`` their spread.
- ``throughput``: images/s of ``throughput_repeats`` forward passes at batch ``throughput_batch``;
  ``throughput_min`` / ``throughput_max`` the slowest and fastest single pass, their spread.

On a CPU shared with other work, two models timed one after the other differ by the load between them
too: the spread is what lets a reader (and the report) tell a difference from noise.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.checkpoint import sparse_size_mb, state_dict_size_mb
from detector.device import autocast, device_name, synchronize
from detector.prune.channels import count_macs
from detector.prune.unstructured import exported_copy, sparsity_report


def _timed(fn, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


@torch.inference_mode()
def efficiency_row(
    model: nn.Module,
    *,
    device: torch.device | str = "cpu",
    image_size: int = 224,
    repeats: int = 50,
    warmup: int = 10,
    throughput_batch: int = 64,
    throughput_repeats: int = 10,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict[str, Any]:
    """One Table 6 row for ``model`` (which is not changed: timing runs on an exported copy)."""
    if repeats < 1 or throughput_repeats < 1 or throughput_batch < 1 or warmup < 0:
        raise ValueError("repeats, throughput_repeats and throughput_batch must be >= 1, warmup >= 0")
    device = torch.device(device)
    report = sparsity_report(model)
    # Deployment runs the exported model: plain weights with zeros, no mask multiplication per forward.
    net = exported_copy(model).eval().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        net.to(memory_format=fmt)

    def forward(batch: torch.Tensor) -> None:
        with autocast(device, precision):
            net(batch)

    one = torch.randn(1, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    for _ in range(warmup):
        forward(one)
    latencies = [_timed(lambda: forward(one), device) for _ in range(repeats)]

    many = torch.randn(throughput_batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    forward(many)  # warm-up at this shape (cuDNN picks its kernels here)
    passes = [_timed(lambda: forward(many), device) for _ in range(throughput_repeats)]
    elapsed = sum(passes)
    p10, p90 = (float(v) for v in np.percentile(latencies, [10, 90]))
    return {
        "sparsity": report["sparsity"],
        "nonzero_params": report["nonzero_params"],
        "prunable_params": report["prunable_params"],
        "total_params": report["total_params"],
        "size_mb": state_dict_size_mb(model),
        "sparse_size_mb": sparse_size_mb(model),
        "macs": count_macs(net, image_size),
        "batch_latency_ms": 1000 * elapsed / throughput_repeats,
        "latency_ms": 1000 * statistics.median(latencies),
        "latency_p10_ms": 1000 * p10,
        "latency_p90_ms": 1000 * p90,
        "throughput": throughput_batch * throughput_repeats / elapsed,
        "throughput_min": throughput_batch / max(passes),
        "throughput_max": throughput_batch / min(passes),
        "device": device_name(device),
        "image_size": image_size,
        "precision": precision,
        "throughput_batch": throughput_batch,
        "throughput_repeats": throughput_repeats,
        "repeats": repeats,
    }
