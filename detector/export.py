"""Exports of a model for deployment: a compact sparse checkpoint, a plain dense one, and ONNX.

The sparse form is a checkpoint format (``detector.checkpoint``: a bit mask of the non-zero weights plus
their values, compressed; its size falls with sparsity, the dense file's does not), so every command that
reads a checkpoint reads it too. ONNX export covers every model (dense, unstructured with its zeros,
channel-pruned); ``onnx_max_abs_diff`` runs it in ONNX Runtime beside PyTorch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from detector.checkpoint import save_checkpoint, state_dict_size_mb, write_sparse
from detector.io import atomic_write_bytes
from detector.prune import PruningInfo
from detector.prune.unstructured import exported_copy

log = logging.getLogger(__name__)

FORMATS = ("sparse", "dense", "onnx")


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
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fp16 and fmt != "sparse":
        raise ValueError("fp16: only the sparse format stores float16 values")
    if fmt == "sparse":
        write_sparse(out, model, metadata=metadata, fp16=fp16)
    elif fmt == "dense":
        write_dense(out, model, metadata=metadata)
    else:
        pruning = PruningInfo.from_metadata(metadata, where=str(out))
        write_onnx(out, model, image_size=int(metadata["image_size"]),
                   metadata={"arch": metadata["arch"], "image_size": metadata["image_size"],
                             "pruning_method": pruning.method, "sparsity": pruning.sparsity})
    size = Path(out).stat().st_size / 2**20
    dense = state_dict_size_mb(model)
    return {"path": str(out), "format": fmt, "size_mb": size, "dense_size_mb": dense, "ratio": size / dense}

