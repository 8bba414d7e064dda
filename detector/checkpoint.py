"""Checkpoints: one ``torch.save`` file holding the weights, their metadata and (optionally) training state.

Loading never executes code from the file: ``torch.load(weights_only=True)`` only rebuilds tensors and
plain containers, and refuses a pickle that asks for anything else. A file that is missing, truncated,
booby-trapped, not ours, or whose weights do not fit its architecture raises ``CheckpointError`` naming
the file and the reason.

Layout (all plain data)::

    {"format": "detector-checkpoint", "version": 1,
     "model": state_dict,                # pruned models keep weight_orig/weight_mask (bool)
     "metadata": {"arch", "image_size", "sparsity", "nonzero_params", "metrics",
                  "data_manifest_sha256", "config", ...},
     "optimizer": state_dict | None,
     ...extra}                           # e.g. the training loop's resume state
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

import detector
from detector.io import atomic_open
from detector.model import ARCHITECTURES, build_model
from detector.pruning import attach_identity_masks, refresh_masked_weights, sparsity_report

log = logging.getLogger(__name__)

FORMAT = "detector-checkpoint"
VERSION = 1
REQUIRED_METADATA = ("arch", "image_size")
# First bytes of a compact export (``detector export --format sparse``), which loads like a checkpoint.
SPARSE_MAGIC = b"DETECTOR-SPARSE\n"


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit; the message names the file."""


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    metadata: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (masks included) and its metadata atomically to ``path``.

    ``metadata`` must name ``arch`` and ``image_size`` and hold only JSON-able values; ``sparsity``
    and the parameter counts are measured from the model, so they cannot disagree with the weights.
    """
    path = Path(path)
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}")
    try:
        json.dumps(dict(metadata), allow_nan=True)
    except TypeError as e:
        raise ValueError(f"{path}: metadata must be plain data (JSON-able): {e}") from e
    report = sparsity_report(model)
    meta = {
        "metrics": {},
        "data_manifest_sha256": None,
        "config": {},
        **metadata,
        "sparsity": report["sparsity"],
        "nonzero_params": report["nonzero_params"],
        "prunable_params": report["prunable_params"],
        "total_params": report["total_params"],
        "detector_version": detector.__version__,
        "torch_version": str(torch.__version__),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: _compact(k, v.detach().cpu()) for k, v in model.state_dict().items()},
        "metadata": meta,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        **(extra or {}),
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def _compact(key: str, value: torch.Tensor) -> torch.Tensor:
    """Pruning masks as bool: a quarter of their float bytes (a pruned ResNet-50 file shrinks by ~38 %)."""
    if key.endswith("_mask") and value.is_floating_point() and bool(((value == 0) | (value == 1)).all()):
        return value.to(torch.bool)
    return value


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing code from it; the dict ``save_checkpoint`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(SPARSE_MAGIC):
        from detector.export import read_sparse

        return read_sparse(path, map_location=map_location)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: {_refusal_reason(e)}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a detector checkpoint (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}; this code reads {VERSION}")
    meta = payload.get("metadata")
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_METADATA):
        raise CheckpointError(f"{path}: metadata missing or lacks {', '.join(REQUIRED_METADATA)}")
    if not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: no model state dict")
    return payload


def _refusal_reason(e: Exception) -> str:
    """Why weights-only unpickling refused a file, in one line, from torch's long message."""
    # torch's message: boilerplate about the weights_only default, then the reason, then a docs link.
    text = str(e).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
    text = text.split("from a trusted source.", 1)[-1]
    detail = " ".join(text.split()).split(" Please use")[0]
    if "global" in detail.lower() or "reduce" in detail.lower():
        return (f"it asks to import or call code ({detail}); a detector checkpoint never does "
                "(untrusted or foreign file?)")
    return f"not a weights-only checkpoint (corrupt, or pickled objects that are not plain data: {detail})"


def load_state_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str | Path) -> None:
    """Load a (possibly pruned) state dict into ``model``, attaching masks first where the state has them."""
    masked = {k[: -len(".weight_mask")] for k in state_dict if k.endswith(".weight_mask")}
    attach_identity_masks(model, masked)
    # masks are saved as bool (older files: float); the model's masks are in the weights' dtype
    state_dict = {k: v.to(state_dict[k[: -len("_mask")] + "_orig"].dtype)
                  if k.endswith("_mask") and v.dtype == torch.bool else v for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        want = set(model.state_dict())
        have = set(state_dict)
        missing, unexpected = sorted(want - have), sorted(have - want)
        detail = (
            f"missing {len(missing)} key(s) {missing[:3]}, unexpected {len(unexpected)} key(s) {unexpected[:3]}"
            if missing or unexpected
            else str(e).splitlines()[-1].strip()
        )
        raise CheckpointError(f"{source}: weights do not fit the model: {detail}") from e
    refresh_masked_weights(model)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the checkpoint's architecture, load its weights (re-attaching pruning masks), in eval mode."""
    payload = load_checkpoint(path)
    meta = payload["metadata"]
    arch = meta["arch"]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: metadata arch {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    model = build_model(arch)
    if meta.get("pruning_method") == "structured":
        from detector.structured import conform_to_state_dict

        # Channel-pruned: each layer takes the shape of its saved weights (the wiring stays the arch's).
        conform_to_state_dict(model, payload["model"])
    load_state_into(model, payload["model"], source=path)
    model.to(device).eval()
    return model, meta
