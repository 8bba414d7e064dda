"""Model files: the checkpoint every stage writes, and its compact sparse form. Both load the same way.

Loading never executes code from a file: ``torch.load(weights_only=True)`` only rebuilds tensors and
plain containers, and refuses a pickle that asks for anything else. A file that is missing, truncated,
booby-trapped, not ours, or whose weights do not fit its architecture raises ``CheckpointError`` naming
the file and the reason.

Checkpoint layout (all plain data)::

    {"format": "detector-checkpoint", "version": 1,
     "model": state_dict,                # pruned models keep weight_orig/weight_mask (bool)
     "metadata": {"arch", "image_size", "pruning": PruningInfo, "sparsity", "nonzero_params", "metrics",
                  "data_manifest_sha256", "config", ...},
     "optimizer": state_dict | None,
     ...extra}                           # e.g. the training loop's resume state

**Sparse** files (``detector export --format sparse``): unstructured pruning leaves zeros in dense tensors,
so a pruned model's ordinary checkpoint is as large as the unpruned one (paper Table 6: ~90 MB at every
sparsity). The sparse form stores each weight tensor as a bit mask of its non-zero positions plus the
non-zero values, optionally as float16, and compresses the whole file, so its size falls with sparsity: a
tensor of n weights with k non-zero costs about n/8 + 4k bytes instead of 4n::

    SPARSE_MAGIC, then a zlib stream of torch.save({
        "format": "detector-sparse", "version": 1,
        "metadata": {... the checkpoint's metadata ..., "export": {"format", "value_dtype", "exact"}},
        "tensors": {name: {"shape", "dtype", "value_dtype", "encoding": "bitmask" | "dense" | "raw",
                           "mask": packed bits (bitmask only), "values": uint8 byte planes | tensor}}})

Float values are stored byte-plane by byte-plane (all first bytes, then all second bytes, ...): the sign
and exponent bytes of trained weights vary little, and zlib finds that only when they sit together. With
float32 values (the default) the reloaded weights equal the exported ones (zeros of either sign load as
+0), so the model computes exactly what the dense one does.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

import detector
from detector.io import atomic_open, atomic_write_bytes
from detector.model import ARCHITECTURES, build_model
from detector.prune import PruningInfo
from detector.prune.channels import conform_to_state_dict
from detector.prune.unstructured import (attach_identity_masks, dense_state_dict, refresh_masked_weights,
                                         sparsity_report)

log = logging.getLogger(__name__)

FORMAT = "detector-checkpoint"
VERSION = 1
REQUIRED_METADATA = ("arch", "image_size")
# First bytes of a compact export (``detector export --format sparse``), which loads like a checkpoint.
SPARSE_MAGIC = b"DETECTOR-SPARSE\n"
SPARSE_FORMAT = "detector-sparse"
SPARSE_VERSION = 1


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
    try:
        pruning = PruningInfo.from_metadata(meta, where=str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(arch)
    if pruning.structured:
        # Channel-pruned: each layer takes the shape of its saved weights (the wiring stays the arch's).
        conform_to_state_dict(model, payload["model"])
    load_state_into(model, payload["model"], source=path)
    model.to(device).eval()
    return model, meta


# --------------------------------------------------------------------------------------------------
# The sparse form.

_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _byte_planes(values: torch.Tensor) -> torch.Tensor:
    """(n,) floats -> (itemsize, n) uint8: plane i holds byte i of every value."""
    # numpy transposes bytes several times faster than torch; the uint8 view works for bfloat16 too.
    data = values.contiguous().view(torch.uint8).numpy().reshape(-1, values.element_size())
    return torch.from_numpy(np.ascontiguousarray(data.T))


def _from_byte_planes(planes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(planes.numpy().T).reshape(-1)).view(dtype)


def encode_tensor(tensor: torch.Tensor, *, fp16: bool = False) -> dict[str, Any]:
    """One tensor in the sparse format: bit mask + non-zero values where that is smaller, else dense.

    ``fp16`` stores the values of weight tensors (2 or more dimensions) as float16; BatchNorm statistics
    and biases stay in their own precision, where float16 would lose the small variances.
    """
    t = tensor.detach().cpu()
    if not t.is_floating_point():
        return {"encoding": "raw", "values": t.clone()}
    value_dtype = torch.float16 if fp16 and t.dim() >= 2 else t.dtype
    flat = t.reshape(-1)
    nonzero = flat != 0
    k, n = int(nonzero.sum()), flat.numel()
    entry: dict[str, Any] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                             "value_dtype": _dtype_name(value_dtype)}
    itemsize = torch.empty((), dtype=value_dtype).element_size()
    if (n + 7) // 8 + k * itemsize < n * itemsize:
        bits = np.packbits(nonzero.numpy())
        entry.update(encoding="bitmask", mask=torch.from_numpy(bits),
                     values=_byte_planes(flat[nonzero].to(value_dtype)))
    else:
        entry.update(encoding="dense", values=_byte_planes(flat.to(value_dtype)))
    return entry


def decode_tensor(entry: Mapping[str, Any], *, where: str) -> torch.Tensor:
    """The tensor ``encode_tensor`` stored; ``where`` names it in errors (file and tensor name)."""
    encoding = entry.get("encoding")
    if encoding == "raw":
        return entry["values"]
    try:
        dtype, value_dtype = _FLOAT_DTYPES[entry["dtype"]], _FLOAT_DTYPES[entry["value_dtype"]]
        shape = [int(s) for s in entry["shape"]]
        planes = entry["values"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: malformed tensor entry ({e!r})") from None
    n = int(np.prod(shape)) if shape else 1
    values = _from_byte_planes(planes, value_dtype)
    if encoding == "dense":
        if values.numel() != n:
            raise CheckpointError(f"{where}: {values.numel()} values for shape {shape}")
        return values.to(dtype).reshape(shape)
    if encoding != "bitmask":
        raise CheckpointError(f"{where}: unknown encoding {encoding!r}")
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=n).astype(bool))
    if int(nonzero.sum()) != values.numel():
        raise CheckpointError(f"{where}: the mask marks {int(nonzero.sum())} non-zeros, {values.numel()} values stored")
    out = torch.zeros(n, dtype=dtype)
    out[nonzero] = values.to(dtype)
    return out.reshape(shape)


def sparse_bytes(model: nn.Module, *, metadata: Mapping[str, Any], fp16: bool = False, level: int = 1) -> bytes:
    """The sparse file's bytes for ``model`` (pruning masks applied; the model is not changed)."""
    report = sparsity_report(model)
    meta = {**metadata, **{k: report[k] for k in ("sparsity", "nonzero_params", "prunable_params", "total_params")},
            "export": {"format": "sparse", "value_dtype": "float16" if fp16 else "float32", "exact": not fp16}}
    payload = {
        "format": SPARSE_FORMAT,
        "version": SPARSE_VERSION,
        "metadata": meta,
        "tensors": {name: encode_tensor(t, fp16=fp16) for name, t in dense_state_dict(model).items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    # Level 1: on ResNet-50 within 1 % of level 6's size, at a third of the time.
    return SPARSE_MAGIC + zlib.compress(buf.getvalue(), level)


def state_dict_size_mb(model: nn.Module) -> float:
    """Size of ``torch.save(dense state dict)`` in MiB: what an exported dense model costs on disk."""
    buf = io.BytesIO()
    torch.save(dense_state_dict(model), buf)
    return buf.getbuffer().nbytes / 2**20


def sparse_size_mb(model: nn.Module, *, fp16: bool = False) -> float:
    """Size of the model's sparse export in MiB (metadata aside), to set beside ``state_dict_size_mb``."""
    return len(sparse_bytes(model, metadata={}, fp16=fp16)) / 2**20


def write_sparse(path: str | Path, model: nn.Module, *, metadata: Mapping[str, Any], fp16: bool = False) -> Path:
    """Write ``model`` as a sparse file, atomically. ``metadata`` as for ``save_checkpoint``."""
    path = Path(path)
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}")
    data = sparse_bytes(model, metadata=metadata, fp16=fp16)
    atomic_write_bytes(path, data)
    return path


def read_sparse(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A sparse file as ``load_checkpoint`` returns a checkpoint: ``{"format", "version", "model",
    "metadata", "optimizer": None}``, with dense tensors rebuilt. ``load_checkpoint`` calls this."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(SPARSE_MAGIC):
        raise CheckpointError(f"{path}: not a sparse export (no {SPARSE_MAGIC!r} header)")
    try:
        payload = torch.load(io.BytesIO(zlib.decompress(raw[len(SPARSE_MAGIC):])), map_location="cpu",
                             weights_only=True)
    except zlib.error as e:
        raise CheckpointError(f"{path}: sparse export is corrupt or truncated ({e})") from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: refused to load the sparse export: {str(e).splitlines()[0]}") from e
    if not isinstance(payload, dict) or payload.get("format") != SPARSE_FORMAT:
        raise CheckpointError(f"{path}: not a detector sparse export (no format={SPARSE_FORMAT!r} marker)")
    if payload.get("version") != SPARSE_VERSION:
        raise CheckpointError(f"{path}: sparse export version {payload.get('version')!r}; this code reads {SPARSE_VERSION}")
    meta, tensors = payload.get("metadata"), payload.get("tensors")
    if not isinstance(meta, dict) or not isinstance(tensors, dict) or any(k not in meta for k in REQUIRED_METADATA):
        raise CheckpointError(f"{path}: metadata (arch, image_size) or tensors missing")
    state = {name: decode_tensor(entry, where=f"{path}: {name}").to(map_location) for name, entry in tensors.items()}
    return {"format": FORMAT, "version": VERSION, "model": state, "metadata": meta, "optimizer": None}


def is_whole(path: str | Path) -> bool:
    """Whether ``path`` holds a whole model file, as far as its ends tell (no tensor is read): a checkpoint is
    a zip whose central directory ``torch.save`` writes last, a sparse file one zlib stream that ends. A
    write cut short (a full disk, a killed copy) fails this; a whole file of someone else's format too."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(SPARSE_MAGIC)) != SPARSE_MAGIC:
            return zipfile.is_zipfile(path)
        stream = zlib.decompressobj()
        try:
            while chunk := f.read(1 << 20):
                stream.decompress(chunk, 1 << 16)  # bounded output: only whether the stream ends is wanted
                while stream.unconsumed_tail:
                    stream.decompress(stream.unconsumed_tail, 1 << 16)
        except zlib.error:
            return False
        return stream.eof


def remove_cut_model_files(root: str | Path) -> list[Path]:
    """Delete every ``*.pt`` under ``root`` that a cut-short write left (``is_whole`` says no); returns them.
    Our own writes are atomic, but Tune copies each trial's checkpoint into the run folder file by file,
    and a full disk leaves its half-copied ``state.pt`` looking like a checkpoint."""
    removed = []
    for path in sorted(Path(root).rglob("*.pt")):
        try:
            if path.is_file() and not path.is_symlink() and not is_whole(path):
                path.unlink()
                removed.append(path)
        except OSError as e:  # unreadable: leave it, and say so
            log.warning("could not check %s: %s", path, e)
    for path in removed:
        log.warning("removed %s: cut short by a failed write, it is no checkpoint", path)
    return removed
