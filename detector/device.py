"""Where a model runs and in which precision: the one owner of the device and precision choice.

Training (``detector.train``), evaluation, timing (``detector.evaluate.efficiency``) and prediction all ask
here, so ``auto`` means the same everywhere: CUDA, then MPS, then the CPU; bf16 autocast on CUDA, fp32
elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from typing import Literal

import numpy as np
import torch

Precision = Literal["auto", "bf16", "fp16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; also applies the per-device speed settings."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available")
        # Fixed input shapes: let cuDNN pick the fastest kernels once; TF32 for fp32 matmuls/convs.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # torch counts the host's cores; a container or Ray worker may be allowed fewer.
        from detector.system import usable_cpus

        allowed = usable_cpus()
        if torch.get_num_threads() > allowed:
            torch.set_num_threads(allowed)
    return device


def resolve_precision(precision: str, device: torch.device) -> Literal["bf16", "fp16", "fp32"]:
    """``auto`` is bf16 on CUDA and fp32 elsewhere; fp16 (with a gradient scaler) needs CUDA."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision: fp16 (with a gradient scaler) needs CUDA, not {device.type}; use bf16 or fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    """What a measurement ran on, for tables: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def limit_gpu_memory(share: float) -> bool:
    """Cap this process's CUDA memory at ``share`` of its GPU when it holds a share of one (Ray's fractional
    GPUs: ``resources.gpus_per_trial: 0.25`` puts four trials on one GPU); True when a cap was set.

    Ray divides a GPU's *count* between trials, not its memory: without a cap, one trial whose batches
    outgrow its share takes memory the others were counting on, and a trial that did nothing wrong fails
    with an out-of-memory error. With it, the trial that asks for more than its share is the one that
    fails. The cap covers what torch's caching allocator holds; each process's CUDA context (a few hundred
    MB) comes on top of it.
    """
    if not 0 < share < 1 or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(share)
    return True
