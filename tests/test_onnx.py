"""ONNX export: ONNX Runtime gives PyTorch's outputs for the dense, unstructured and channel-pruned models."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from detector.checkpoint import save_checkpoint
from detector.cli import main as cli_main
from detector.export import onnx_max_abs_diff, write_onnx
from detector.model import build_model
from detector.prune import prune


def _model(kind: str) -> tuple[torch.nn.Module, dict]:
    model = build_model("resnet18", seed=0).eval()
    meta = {"arch": "resnet18", "image_size": 32}
    if kind != "dense":
        meta["pruning"] = prune(model, 0.4, method=kind, arch="resnet18").to_dict()
    return model, meta


@pytest.mark.parametrize("kind", ["dense", "structured"])
def test_onnx_runtime_matches_pytorch(tmp_path, kind):
    model, meta = _model(kind)
    path = write_onnx(tmp_path / f"{kind}.onnx", model, image_size=32, metadata=meta)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"] and [o.name for o in graph.graph.output] == ["logits"]
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["arch"] == "resnet18" and props["image_size"] == "32"
    # Batch sizes other than the one traced: the batch dimension is dynamic.
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        assert onnx_max_abs_diff(path, model, images) < 1e-4


def test_export_command_onnx_of_a_pruned_checkpoint(tmp_path, capsys):
    model, meta = _model("unstructured")
    ckpt = save_checkpoint(tmp_path / "p40.pt", model, metadata=meta)
    assert cli_main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["format"] == "onnx" and r["max_abs_diff"] < 1e-4
    assert "[torch.onnx]" not in capsys.readouterr().err
