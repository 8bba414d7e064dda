"""One pass over a loader: a training epoch (``train_one_epoch``, one ``train_step`` per batch) or an
evaluation (``evaluate``, ``collect_predictions``), and what the passes share: a batch's copy to the device
(``to_device``), the length of an epoch capped by the config (``epoch_length``), the progress bar.

``detector.train.fit`` runs these every epoch; evaluation and prediction (``detector.evaluate``) use them on
their own. Under a torch.distributed process group each rank passes over its share and the returned metrics
are over every rank's.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector import distributed
from detector.device import autocast

log = logging.getLogger(__name__)

# How many steps may pass between loss checks: checking every step would force a GPU sync per step.
_FINITE_CHECK_EVERY = 25


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, *, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a batch to ``device``; asynchronous when the loader pinned it.

    uint8 images (a loader built with ``normalize=False``: 4x fewer bytes through shared and pinned
    memory and over PCIe) are normalised here, on the device, with the presets' ImageNet mean/std.
    """
    fmt = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    if images.dtype == torch.uint8:
        from detector.data.transforms import normalize_imagenet

        # into a float tensor of the same layout: no second copy to reach channels_last
        images = normalize_imagenet(images, out=torch.empty_like(images, dtype=torch.float32))
    labels = labels.to(device, non_blocking=True).float()
    return images, labels


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch already on the device; returns (loss, correct) as device tensors
    so that the caller decides when to synchronise."""
    with autocast(images.device, precision):
        logits = model(images).squeeze(1)  # (N, 1) -> (N,)
    # The loss in fp32: BCE on bf16 logits loses the small differences late training depends on.
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    correct = ((logits.detach() >= 0) == (labels >= 0.5)).sum()
    return loss.detach(), correct


def _progress(iterable: Iterable, *, total: int | None, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, disable=not sys.stderr.isatty())


def epoch_length(loader: Iterable, max_batches: int | None) -> int | None:
    """Batches in one pass over ``loader`` (a training epoch's optimisation steps), at most ``max_batches``;
    None when the loader has no length and no cap is set."""
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return min(total, max_batches) if max_batches is not None else total


def _batches(loader: Iterable, max_batches: int | None) -> tuple[Iterator, int | None]:
    total = epoch_length(loader, max_batches)
    it = iter(loader)
    if max_batches is not None:
        it = (b for _, b in zip(range(max_batches), it))
    return it, total


def _check_finite(losses: list[torch.Tensor], first_step: int, epoch: int) -> None:
    """Raise NonFiniteLossError when a loss of these steps is NaN or infinite, on this rank or any other
    (every rank raises together, so that none waits for the others in the next step)."""
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if distributed.any_rank(len(bad) > 0):
        hint = "(try a lower lr, or precision bf16/fp32 instead of fp16)"
        if not len(bad):
            raise NonFiniteLossError(f"training loss became non-finite on another rank at epoch {epoch}, steps "
                                     f"{first_step}-{first_step + len(losses) - 1} {hint}")
        i = int(bad[0])
        raise NonFiniteLossError(f"training loss became {values[i].item()} at epoch {epoch}, step {first_step + i} "
                                 f"{hint}")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    epoch: int = 1,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (batches of ``(images, labels[, metas])``); ``on_step()`` runs after
    every optimisation step (a pruning schedule's ``after_step``).

    Returns ``train_loss`` (mean per sample), ``train_accuracy``, ``train_samples``, ``images_per_s``
    and ``data_wait_s`` (time spent waiting for the loader; high means the input pipeline is the limit).
    Under a process group these are over every rank's samples (``data_wait_s``: the ranks' mean).
    """
    model.train()
    it, total = _batches(loader, max_batches)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = 0
    pending: list[torch.Tensor] = []
    data_wait = 0.0
    start = time.perf_counter()
    step = 0
    batches = iter(_progress(it, total=total, desc=f"epoch {epoch}"))
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        data_wait += time.perf_counter() - t0
        if batch is None:
            break
        images, labels = to_device(batch[0], batch[1], device, channels_last=channels_last)
        loss, ok = train_step(model, images, labels, optimizer, precision=precision, scaler=scaler)
        if on_step is not None:
            on_step()
        n = labels.shape[0]
        loss_sum += loss * n
        correct += ok
        samples += n
        step += 1
        pending.append(loss)
        if len(pending) == _FINITE_CHECK_EVERY:
            _check_finite(pending, step - len(pending) + 1, epoch)
            pending.clear()
    if pending:
        _check_finite(pending, step - len(pending) + 1, epoch)
    # .item() synchronises, so the timing below covers all queued GPU work; then the sums over the ranks
    totals = torch.tensor([loss_sum.item(), correct.item(), samples, data_wait], dtype=torch.float64)
    elapsed = time.perf_counter() - start
    loss_total, correct_total, samples_total, wait_total = distributed.all_reduce_sum(totals).tolist()
    if samples_total == 0:
        raise ValueError("train loader yielded no batches")
    return {
        "train_loss": loss_total / samples_total,
        "train_accuracy": correct_total / samples_total,
        "train_samples": int(samples_total),
        "images_per_s": samples_total / elapsed,
        "data_wait_s": wait_total / distributed.rank_and_world()[1],
    }


def _forward_all(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    max_batches: int | None,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, list] | None]:
    """(labels (N,), logits (N,), metas as a dict of lists or None), all on the CPU."""
    model.eval()
    it, total = _batches(loader, max_batches)
    all_logits, all_labels = [], []
    metas: dict[str, list] | None = None
    with torch.inference_mode():
        for batch in _progress(it, total=total, desc=desc):
            images, labels = to_device(batch[0], batch[1], device, channels_last=channels_last)
            with autocast(device, precision):
                logits = model(images).squeeze(1)
            all_logits.append(logits.float())
            all_labels.append(labels)
            if len(batch) > 2:
                metas = metas or {}
                for key, values in batch[2].items():
                    metas.setdefault(key, []).extend(list(values))
    if not all_logits:
        raise ValueError(f"{desc}: the loader yielded no batches")
    return torch.cat(all_labels).cpu(), torch.cat(all_logits).cpu(), metas


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    precision: str = "fp32",
    channels_last: bool = False,
    prefix: str = "val",
    max_batches: int | None = None,
) -> dict[str, float]:
    """``{prefix}_loss`` (mean BCE), ``{prefix}_accuracy`` and ``{prefix}_samples`` over ``loader``; under a
    process group over every rank's share (each rank's loader reads its own: ``pad=False`` counts each
    sample once)."""
    device = torch.device(device)
    labels, logits, _ = _forward_all(
        model, loader, device=device, precision=precision, channels_last=channels_last,
        max_batches=max_batches, desc=prefix,
    )
    n = labels.numel()
    dataset = getattr(loader, "dataset", None)
    if max_batches is None and dataset is not None and hasattr(dataset, "__len__") and len(dataset) != n:
        log.warning("%s: evaluated %d samples but the dataset has %d (drop_last?)", prefix, n, len(dataset))
    sums = torch.stack([F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").double(),
                        ((logits >= 0) == (labels >= 0.5)).sum().double(), torch.tensor(float(n), dtype=torch.float64)])
    loss_sum, correct, total = distributed.all_reduce_sum(sums).tolist()
    return {
        f"{prefix}_loss": loss_sum / total,
        f"{prefix}_accuracy": correct / total,
        f"{prefix}_samples": int(total),
    }


def collect_predictions(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    precision: str = "fp32",
    channels_last: bool = False,
    max_batches: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, list] | None]:
    """Raw outputs for ``detector.evaluate.metrics``: (labels int (N,), probability of Real (N,), metas or None)."""
    labels, logits, metas = _forward_all(
        model, loader, device=torch.device(device), precision=precision, channels_last=channels_last,
        max_batches=max_batches, desc="predict",
    )
    return labels.round().long().numpy(), torch.sigmoid(logits).numpy(), metas
