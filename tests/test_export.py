"""Compact sparse checkpoints: size that falls with sparsity, exact reload, safe loading; the export command."""

from __future__ import annotations

import io
import json
import os
import pickle
import zlib

import pytest
import torch

from detector.checkpoint import SPARSE_MAGIC, CheckpointError, load_model, save_checkpoint
from detector.cli import main as cli_main
from detector.checkpoint import decode_tensor, encode_tensor, sparse_bytes, state_dict_size_mb, write_sparse
from detector.model import build_model
from detector.prune.unstructured import dense_state_dict, prune_global_l1
from detector.prune import prune

META = {"arch": "resnet18", "image_size": 32}


def test_resnet50_sparse_file_shrinks_with_sparsity_and_meets_the_40_percent_target():
    model = build_model("resnet50", seed=0)
    dense = len(_saved_bytes(model))
    ratios = {}
    for sparsity in (0.1, 0.4):
        prune_global_l1(model, sparsity)
        ratios[sparsity] = len(sparse_bytes(model, metadata={})) / dense
    assert ratios[0.4] <= 0.65  # the target for the 40 % model
    assert ratios[0.4] < ratios[0.1] < 1.0


def test_the_sparse_file_keeps_falling_to_95_percent_and_reloads_exactly(tmp_path):
    model = build_model("resnet18", seed=0).eval()
    dense = len(_saved_bytes(model))
    ratios = {}
    for sparsity in (0.4, 0.9, 0.95):
        prune_global_l1(model, sparsity)
        ratios[sparsity] = len(sparse_bytes(model, metadata={})) / dense
    # n/8 bytes of mask + 4 per surviving weight: 0.08 of the dense file at 95 %, before zlib
    assert ratios[0.95] < ratios[0.9] < ratios[0.4] and ratios[0.95] <= 0.08
    loaded, meta = load_model(write_sparse(tmp_path / "m.sparse", model, metadata=META))
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in dense_state_dict(model).items())
    assert meta["sparsity"] == pytest.approx(0.95, abs=1e-6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _saved_bytes(model):
    buf = io.BytesIO()
    torch.save(dense_state_dict(model), buf)
    return buf.getvalue()


@pytest.mark.parametrize("sparsity", [0.0, 0.4])
def test_reload_is_exact(tmp_path, sparsity):
    model = build_model("resnet18", seed=0).eval()
    if sparsity:
        prune_global_l1(model, sparsity)
    path = write_sparse(tmp_path / "m.sparse", model, metadata={**META, "note": "kept"})
    assert path.read_bytes().startswith(SPARSE_MAGIC)
    loaded, meta = load_model(path)
    want = dense_state_dict(model)
    got = loaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["note"] == "kept" and meta["export"]["exact"] is True
    assert meta["sparsity"] == pytest.approx(sparsity, abs=1e-6)


def test_fp16_halves_the_values_and_keeps_batchnorm_statistics_exact(tmp_path):
    model = build_model("resnet18", seed=0).eval()
    prune_global_l1(model, 0.4)
    exact = write_sparse(tmp_path / "a.sparse", model, metadata=META)
    half = write_sparse(tmp_path / "b.sparse", model, metadata=META, fp16=True)
    assert half.stat().st_size < 0.6 * exact.stat().st_size
    loaded, meta = load_model(half)
    assert meta["export"] == {"format": "sparse", "value_dtype": "float16", "exact": False}
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var)  # statistics stay float32
    zeros = model.conv1.weight == 0
    assert torch.all(loaded.conv1.weight[zeros] == 0)  # the sparsity pattern survives float16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-2, rtol=5e-2)


def test_a_channel_pruned_model_exports_and_reloads(tmp_path):
    model = build_model("resnet18", seed=0).eval()
    info = prune(model, 0.3, method="structured", arch="resnet18")
    path = write_sparse(tmp_path / "s.sparse", model, metadata={**META, "pruning": info.to_dict()})
    loaded, _ = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert path.stat().st_size < 0.75 * state_dict_size_mb(build_model("resnet18")) * 2**20


@pytest.mark.parametrize("tensor", [
    torch.tensor([[0.0, -0.0, 1.5], [0.0, 0.0, -2.25]]),  # mostly zeros: bit mask
    torch.arange(1.0, 7.0).reshape(2, 3),  # no zeros: dense values are smaller
    torch.tensor(7, dtype=torch.int64),  # BatchNorm's num_batches_tracked
])
def test_each_tensor_round_trips(tensor):
    entry = encode_tensor(tensor)
    out = decode_tensor(entry, where="t")
    assert out.dtype == tensor.dtype and torch.equal(out, tensor)


def test_damaged_and_hostile_files_are_refused_with_the_file_named(tmp_path):
    model = build_model("resnet18", seed=0)
    good = write_sparse(tmp_path / "m.sparse", model, metadata=META).read_bytes()
    truncated = tmp_path / "truncated.sparse"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.sparse: sparse export is corrupt or truncated"):
        load_model(truncated)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    hostile = tmp_path / "hostile.sparse"
    hostile.write_bytes(SPARSE_MAGIC + zlib.compress(pickle.dumps({"format": "detector-sparse", "x": Boom()}, protocol=2)))
    with pytest.raises(CheckpointError, match="hostile.sparse: refused to load"):
        load_model(hostile)

    with pytest.raises(ValueError, match="metadata lacks image_size"):
        write_sparse(tmp_path / "x.sparse", model, metadata={"arch": "resnet18"})


def test_export_command_writes_each_format_and_checks_it(tmp_path, capsys):
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.4)
    ckpt = save_checkpoint(tmp_path / "p40.pt", model, metadata=META)
    for fmt in ("sparse", "dense"):
        assert cli_main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}"),
                         "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["format"] == fmt and r["max_abs_diff"] == 0.0
        assert r["ratio"] < 0.65 if fmt == "sparse" else r["ratio"] == pytest.approx(1.0, abs=0.01)
    dense, _ = load_model(tmp_path / "m.dense")
    assert not any(k.endswith("_mask") for k in dense.state_dict())
    assert cli_main(["export", "--checkpoint", str(ckpt), "--format", "sparse", "--fp16",
                     "--out", str(tmp_path / "h.sparse")]) == 0
    out = capsys.readouterr().out
    assert "x the dense" in out and "reloaded outputs differ by at most" in out
    assert 0 < os.path.getsize(tmp_path / "h.sparse") < 0.35 * os.path.getsize(tmp_path / "m.dense")
    assert cli_main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "sparse",
                     "--out", str(tmp_path / "y.sparse")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
    assert cli_main(["export", "--checkpoint", str(ckpt), "--format", "dense", "--fp16",
                     "--out", str(tmp_path / "z.pt")]) == 2
    assert "only the sparse format" in capsys.readouterr().err
