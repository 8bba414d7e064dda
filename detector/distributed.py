"""Data-parallel training without Ray: which rank this process is, and the few collectives the training loop
needs. Everything here is torch.distributed only.

The one training loop (``detector.train.fit``) runs unchanged on every rank of a process group: the loader
gives each rank its share of every epoch (``detector.data.loader``), DDP averages the gradients, and the
helpers below sum the metrics, keep every rank's decision the same and check that the ranks hold the same
model. Without a process group every helper is a no-op (a single process is rank 0 of 1).

Who starts the processes and the group: Ray Train's ``TorchTrainer`` in the job (``detector.job.tune``,
``resources.workers_per_trial``), or :func:`spawn` here (``bench/gpu_check.py``, the tests).

Batch size: ``batch_size`` is the **global** batch, what one optimisation step sees over all ranks; each rank
takes ``batch_size / world_size`` of it (:func:`per_rank_batch`). DDP averages the ranks' gradients, so a step
is the same mean over the same number of images as on one process, and the paper's batch 16 / 64 (and its
learning rates) keep their meaning at any world size.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's, else ``RANK`` / ``WORLD_SIZE`` from the
    environment (a launcher that set them before the group), else (0, 1)."""
    if in_group():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def in_group() -> bool:
    """Whether this process is a rank of an initialised process group (then collectives run, also at world
    size 1, where they change nothing)."""
    return dist.is_available() and dist.is_initialized()


def is_primary() -> bool:
    """Rank 0: the one rank that writes checkpoints, TensorBoard and the run's files."""
    return rank_and_world()[0] == 0


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``batch_size``; a batch that does not split evenly is an error."""
    if world_size < 1:
        raise ValueError(f"world size {world_size}: need at least one rank")
    if batch_size % world_size:
        low, high = batch_size // world_size * world_size, -(-batch_size // world_size) * world_size
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} ranks that share it "
                         f"(batch_size is the global batch, split evenly); use {low or high} or {high}")
    return batch_size // world_size


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: NCCL reduces CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over every rank (``values`` itself without a process group)."""
    if not in_group():
        return values
    x = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(x)
    return x.to(values.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any: every rank then takes the same branch (a rank that
    raised alone would leave the others waiting in the next collective)."""
    if not in_group():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics, pruning masks) on every rank.

    DDP copies rank 0's buffers to the others at the start of every training forward; the last step's update
    of the running statistics stays local. Called before validation and saving, so that every rank scores,
    and rank 0 saves, the same model."""
    if not in_group():
        return
    device = _collective_device()
    for buffer in model.buffers():
        x = buffer.detach().to(device, copy=True)
        dist.broadcast(x, src=0)
        buffer.data.copy_(x)


def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (e.g. the best epoch's weights, which rank 0 read)."""
    if not in_group():
        return
    device = _collective_device()
    with torch.no_grad():
        for param in model.parameters():
            x = param.detach().to(device, copy=True)
            dist.broadcast(x, src=0)
            param.copy_(x)
    broadcast_buffers(model)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DDP for training (rank 0's parameters and buffers copied to every rank now; the
    gradients averaged over ranks in every backward), or ``model`` itself without a process group."""
    if not in_group():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fingerprints(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each tensor's bytes: two ranks hold the same tensors when these are equal."""
    return {name: hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
            for name, t in tensors.items()}


def check_same_on_every_rank(values: Mapping[str, Any], what: str) -> None:
    """Raise on every rank unless every rank holds the same ``values`` (plain data: numbers, strings,
    fingerprints); the error names the first entries that differ."""
    if not in_group():
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(values))
    differ = sorted({k for other in gathered[1:] for k in set(gathered[0]) | set(other)
                     if gathered[0].get(k) != other.get(k)})
    if differ:
        raise RuntimeError(f"{what} differ between ranks: {', '.join(differ[:5])}"
                           f"{f' and {len(differ) - 5} more' if len(differ) > 5 else ''}")


# --------------------------------------------------------------------------------------------------
# A process group without Ray: for bench/gpu_check.py and the tests.


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, device: str = "cpu",
          timeout_s: float = 600) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` new processes that form one process group (NCCL on ``cuda``, one GPU
    per rank; gloo on ``cpu``); returns each rank's result, by rank.

    ``fn`` must be importable by name (a module-level function: the processes are spawned, not forked) and
    its result small (it comes back through a pipe). An exception in any rank is raised here.

    >>> spawn(pow, 2, 2, 10)  # doctest: +SKIP
    [1024, 1024]
    """
    import torch.multiprocessing as mp

    if device == "cuda" and world_size > torch.cuda.device_count():
        raise ValueError(f"{world_size} ranks need {world_size} GPUs (NCCL runs one rank per GPU); "
                         f"this machine has {torch.cuda.device_count()}")
    results = mp.get_context("spawn").Queue()
    with tempfile.TemporaryDirectory(prefix="detector-dist-") as folder:
        init = f"file://{folder}/init"
        procs = mp.start_processes(_run_rank, args=(fn, args, world_size, device, init, results),
                                   nprocs=world_size, join=False, start_method="spawn")
        got: dict[int, Any] = {}
        # Read before joining: a rank that put a result waits at exit until it has been read.
        waited = 0.0
        while len(got) < world_size:
            try:
                rank, value = results.get(timeout=1.0)
                got[rank] = value
                continue
            except queue.Empty:
                waited += 1.0
            if procs.join(timeout=0) or waited > timeout_s:  # join raises what a failed rank raised
                break
        if len(got) < world_size:
            for p in procs.processes:
                p.kill()
            raise RuntimeError(f"spawn: {world_size - len(got)} of {world_size} ranks gave no result "
                               f"within {timeout_s:.0f} s")
        for _ in range(world_size):  # each join waits for one more rank to exit, True once all have
            if procs.join():
                break
    return [got[r] for r in range(world_size)]


def _run_rank(rank: int, fn: Callable[..., Any], args: tuple, world_size: int, device: str, init: str,
              results: Any) -> None:
    if device == "cuda":
        torch.cuda.set_device(rank)
    else:
        # the ranks share the machine's cores: no rank may think it has them all
        from detector.system import usable_cpus

        torch.set_num_threads(max(1, usable_cpus() // world_size))
    dist.init_process_group(backend_for(device), init_method=init, rank=rank, world_size=world_size)
    try:
        value = fn(*args)
    finally:
        dist.destroy_process_group()
    results.put((rank, value))
