"""A manifest is data someone else may have written: its shard paths never lead a command outside the dataset.

The attack: a teammate's dataset on the shared volume lists, as one of its shards, a path to another
file (absolute, or ``../outside/...``) whose bytes are a real shard's, so the sha256 matches. Before,
``detector evaluate`` read that file and ``detector pixels`` overwrote it with its own Parquet bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detector.checkpoint import save_checkpoint
from detector.cli import main as cli
from detector.data.loader import read_manifest
from detector.model import build_model
from detector.paths import UnsafePathError, safe_join


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def planted(demo_shards, tmp_path, request):
    """(dataset folder, the victim file) where the dataset's first test shard is the victim, by path."""
    data = tmp_path / "team" / "data"
    shutil.copytree(demo_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    index = next(i for i, s in enumerate(manifest["shards"]) if s["split"] == "test")
    victim = tmp_path / "team" / "outside" / "val.parquet"
    victim.parent.mkdir(parents=True)
    shutil.copy(data / manifest["shards"][index]["path"], victim)  # same bytes: the sha256 matches
    manifest["shards"][index]["path"] = str(victim) if request.param == "absolute" else "../outside/val.parquet"
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data, victim, index, manifest["shards"][index]["path"]


@pytest.mark.parametrize("planted", ["absolute", "dotdot"], indirect=True)
def test_evaluate_refuses_a_shard_outside_the_dataset(planted, tmp_path, capsys):
    data, victim, index, bad = planted
    checkpoint = save_checkpoint(tmp_path / "model.pt", build_model("resnet18", seed=0),
                                 metadata={"arch": "resnet18", "image_size": 16})
    status = cli(["evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"),
                  "--num-workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{data}/manifest.json: shards[{index}].path {bad!r}" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("planted", ["absolute", "dotdot"], indirect=True)
def test_pixels_refuses_to_write_outside_its_out_folder(planted, tmp_path, capsys):
    data, victim, index, bad = planted
    before_bytes, before = victim.read_bytes(), files_under(tmp_path)
    status = cli(["pixels", str(data), "--out", str(tmp_path / "pixels"), "--size", "16", "--workers", "1"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"shards[{index}].path {bad!r}" in err and ("is absolute" in err or "leads outside" in err)
    assert victim.read_bytes() == before_bytes  # untouched: not overwritten with pixels
    assert files_under(tmp_path) == before  # nothing written anywhere, --out included


@pytest.mark.parametrize("bad, reason", [
    ("/etc/passwd", "is absolute"),
    ("../other-team/val.parquet", "leads outside"),
    ("shards/../../x.parquet", "leads outside"),
    ("shards//val.parquet", "not normalised"),
    ("./shards/val.parquet", "not normalised"),
    ("s3://other-bucket/val.parquet", "is a URI"),
    ("C:\\data\\val.parquet", "is absolute"),
    ("shards/val.parquet?versionId=1", "'?'"),
    (None, "not a non-empty string"),
])
@pytest.mark.parametrize("root", ["/data/team", "s3://bucket/data?endpoint_override=127.0.0.1:9000&scheme=http",
                                  "bucket/data"])
def test_a_path_read_from_a_file_stays_inside_its_root_for_folders_and_uris(root, bad, reason):
    with pytest.raises(UnsafePathError, match=reason) as e:
        safe_join(root, bad, where="data/manifest.json: shards[0].path")
    assert str(e.value).startswith(f"data/manifest.json: shards[0].path {bad!r}")


def test_a_plain_relative_path_joins_under_its_root_and_a_uri_keeps_its_query():
    assert safe_join("/data", "shards/val/val-00000.parquet", where="x") == "/data/shards/val/val-00000.parquet"
    assert safe_join("s3://b/data?scheme=http", "shards/a.parquet", where="x") == "s3://b/data/shards/a.parquet?scheme=http"


def test_the_loader_checks_every_shard_path_when_it_reads_the_manifest(demo_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][-1]["path"] = "shards/../../elsewhere.parquet"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafePathError, match=rf"shards\[{len(manifest['shards']) - 1}\]\.path"):
        read_manifest(str(data))
