"""Exports of a model for deployment: a compact sparse checkpoint, a plain dense one, and ONNX.

Unstructured pruning leaves zeros in dense tensors, so a pruned model's ordinary checkpoint is as large
as the unpruned one (paper Table 6: ~90 MB at every sparsity). The **sparse** format stores each weight
tensor as a bit mask of its non-zero positions plus the non-zero values, optionally as float16, and
compresses the whole file, so its size falls with sparsity: a tensor of n weights with k non-zero costs
about n/8 + 4k bytes instead of 4n (ResNet-50 at 40 %: ~0.6x the dense file before compression).

File layout (read without executing code: only plain containers and tensors)::

    SPARSE_MAGIC, then a zlib stream of torch.save({
        "format": "detector-sparse", "version": 1,
        "metadata": {... the checkpoint's metadata ..., "export": {"format", "value_dtype", "exact"}},
        "tensors": {name: {"shape", "dtype", "value_dtype", "encoding": "bitmask" | "dense" | "raw",
                           "mask": packed bits (bitmask only), "values": uint8 byte planes | tensor}}})

Float values are stored byte-plane by byte-plane (all first bytes, then all second bytes, ...): the sign
and exponent bytes of trained weights vary little, and zlib finds that only when they sit together.
``load_checkpoint``/``load_model`` read a sparse file like any checkpoint. With float32 values (the
default) the reloaded weights equal the exported ones (zeros of either sign load as +0), so the model
computes exactly what the dense one does.

ONNX export covers every model (dense, unstructured with its zeros, channel-pruned); ``onnx_max_abs_diff``
runs it in ONNX Runtime beside PyTorch.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from detector.checkpoint import FORMAT, SPARSE_MAGIC, VERSION, CheckpointError, save_checkpoint
from detector.io import atomic_write_bytes
from detector.pruning import dense_state_dict, exported_copy, sparsity_report

log = logging.getLogger(__name__)

FORMATS = ("sparse", "dense", "onnx")
SPARSE_FORMAT = "detector-sparse"
SPARSE_VERSION = 1
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


def sparse_size_mb(model: nn.Module, *, fp16: bool = False) -> float:
    """Size of the model's sparse export in MiB (metadata aside), to set beside ``state_dict_size_mb``."""
    return len(sparse_bytes(model, metadata={}, fp16=fp16)) / 2**20


def write_sparse(path: str | Path, model: nn.Module, *, metadata: Mapping[str, Any], fp16: bool = False) -> Path:
    """Write ``model`` as a sparse file, atomically. ``metadata`` as for ``save_checkpoint``."""
    path = Path(path)
    missing = [k for k in ("arch", "image_size") if k not in metadata]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}")
    data = sparse_bytes(model, metadata=metadata, fp16=fp16)
    atomic_write_bytes(path, data)
    return path


def read_sparse(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A sparse file as ``load_checkpoint`` returns a checkpoint: ``{"format", "version", "model",
    "metadata", "optimizer": None}``, with dense tensors rebuilt."""
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
    if not isinstance(meta, dict) or not isinstance(tensors, dict) or any(k not in meta for k in ("arch", "image_size")):
        raise CheckpointError(f"{path}: metadata (arch, image_size) or tensors missing")
    state = {name: decode_tensor(entry, where=f"{path}: {name}").to(map_location) for name, entry in tensors.items()}
    return {"format": FORMAT, "version": VERSION, "model": state, "metadata": meta, "optimizer": None}


def write_dense(path: str | Path, model: nn.Module, *, metadata: Mapping[str, Any]) -> Path:
    """A plain checkpoint for deployment: pruning made permanent, no masks, no optimizer state."""
    return save_checkpoint(path, exported_copy(model), metadata={**metadata, "masks": False})


def onnx_bytes(model: nn.Module, *, image_size: int, metadata: Mapping[str, Any] | None = None,
               opset: int = 18) -> bytes:
    """``model`` (masks made permanent) as an ONNX graph: input ``images`` (N, 3, S, S) float32 with a
    dynamic batch, output ``logits`` (N, 1). ``metadata`` goes into the model's metadata_props."""
    import onnx

    net = exported_copy(model).eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    # A batch of 2: torch.export specialises a dimension it sees as 1, which would fix the batch size.
    example = torch.zeros(2, 3, image_size, image_size)
    # The exporter's graph passes log every step at INFO; only their warnings concern our users.
    chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
    proto = program.model_proto
    props = {"producer": "detector", "output": "logit; sigmoid(logit) = P(real), real = 1, fake = 0",
             **{k: str(v) for k, v in (metadata or {}).items()}}
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def write_onnx(path: str | Path, model: nn.Module, *, image_size: int,
               metadata: Mapping[str, Any] | None = None) -> Path:
    path = Path(path)
    atomic_write_bytes(path, onnx_bytes(model, image_size=image_size, metadata=metadata))
    return path


def onnx_max_abs_diff(onnx_path: str | Path, model: nn.Module, images: torch.Tensor) -> float:
    """Largest |ONNX Runtime logit - PyTorch logit| over ``images`` (CPU execution provider)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    with torch.inference_mode():
        want = exported_copy(model).eval().cpu()(images).numpy()
    return float(np.abs(got - want).max())


def export_model(model: nn.Module, out: str | Path, *, fmt: Literal["sparse", "dense", "onnx"],
                 metadata: Mapping[str, Any], fp16: bool = False) -> dict[str, Any]:
    """Write ``model`` to ``out`` in ``fmt``; returns sizes (and the dense size for comparison)."""
    from detector.efficiency import state_dict_size_mb

    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fp16 and fmt != "sparse":
        raise ValueError("fp16: only the sparse format stores float16 values")
    if fmt == "sparse":
        write_sparse(out, model, metadata=metadata, fp16=fp16)
    elif fmt == "dense":
        write_dense(out, model, metadata=metadata)
    else:
        write_onnx(out, model, image_size=int(metadata["image_size"]),
                   metadata={k: metadata[k] for k in ("arch", "image_size", "pruning_method") if k in metadata})
    size = Path(out).stat().st_size / 2**20
    dense = state_dict_size_mb(model)
    return {"path": str(out), "format": fmt, "size_mb": size, "dense_size_mb": dense, "ratio": size / dense}

