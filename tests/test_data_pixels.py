"""`detector pixels`: decode once into a dataset of resized pixels that the loader reads back exactly as it
would have decoded the source, epoch after epoch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from detector.cli import main as cli
from detector.data.loader import ReadSpec, ShardChecksumError, build_loader, manifest_sha256, read_manifest
from detector.data.pixels import derive_pixels


@pytest.fixture(scope="module")
def pixels16(demo_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pixels") / "data-16"
    assert cli(["pixels", str(demo_shards), "--out", str(out), "--size", "16", "--workers", "2"]) == 0
    return out


def batches(data: Path, split: str, **kwargs) -> list[tuple]:
    return list(build_loader(str(data), split, ReadSpec(image_size=16, with_meta=True), batch_size=8, **kwargs))


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
                                    for x, y in zip(a, b))


def test_the_pixel_dataset_gives_the_same_batches_as_its_source(demo_shards, pixels16):
    assert same(batches(pixels16, "test", num_workers=0), batches(demo_shards, "test", num_workers=0))
    for epoch in (0, 1):  # training: same shuffle and the same random flips, in workers too
        spec = ReadSpec(image_size=16, train=True, with_meta=True)
        src = build_loader(str(demo_shards), "train", spec, batch_size=8, num_workers=2, normalize=False)
        px = build_loader(str(pixels16), "train", spec, batch_size=8, num_workers=2, normalize=False)
        src.set_epoch(epoch), px.set_epoch(epoch)
        a, b = list(px), list(src)
        assert same(a, b) and a[0][0].dtype == torch.uint8


def test_its_manifest_is_the_sources_with_new_checksums_and_where_it_came_from(demo_shards, pixels16):
    source, derived = read_manifest(str(demo_shards)), read_manifest(str(pixels16))
    assert derived["pixels"]["size"] == 16 and derived["pixels"]["layout"] == "CHW uint8 RGB"
    assert derived["pixels"]["from"] == {"data": str(demo_shards), "manifest_sha256": manifest_sha256(str(demo_shards))}
    assert derived["splits"] == source["splits"] and derived["rejected"] == source["rejected"]
    assert [s["path"] for s in derived["shards"]] == [s["path"] for s in source["shards"]]
    assert all(d["sha256"] != s["sha256"] and d["rows"] == s["rows"]
               for d, s in zip(derived["shards"], source["shards"]))
    assert all(os.stat(pixels16 / s["path"]).st_mode & 0o044 for s in derived["shards"])  # shared: readable


def test_it_refuses_another_image_size_and_a_second_derivation(pixels16, tmp_path):
    with pytest.raises(ValueError, match=r"manifest.json: holds images decoded at 16x16 \(pixels.size\), not the "
                                         r"32x32.*--size 32"):
        build_loader(str(pixels16), "val", ReadSpec(image_size=32), batch_size=4)
    with pytest.raises(ValueError, match="already a pixel dataset"):
        derive_pixels(str(pixels16), tmp_path / "again", size=16)


def test_training_on_pixels_is_training_on_the_source(demo_shards, pixels16, tmp_path):
    from detector.job.stages import train_stage
    from detector.train import TrainConfig

    cfg = TrainConfig(arch="resnet18", image_size=16, batch_size=16, max_epochs=2, num_workers=0, device="cpu",
                      precision="fp32", channels_last=False, seed=3)
    a = train_stage(cfg, data=str(demo_shards), out_dir=tmp_path / "a", tb_dir=None)
    b = train_stage(cfg, data=str(pixels16), out_dir=tmp_path / "b", tb_dir=None)
    timing = {"images_per_s", "data_wait_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k not in timing} for h in b["history"]]  # same losses, epoch by epoch


def test_an_interrupted_derivation_is_finished_by_running_it_again(demo_shards, tmp_path):
    out = tmp_path / "px"
    first = derive_pixels(str(demo_shards), out, size=16, workers=1, progress=False)
    kept, lost, damaged = (out / s["path"] for s in first["shards"][:3])
    kept_stamp = kept.stat().st_mtime_ns
    (out / "manifest.json").unlink()  # as if killed before the manifest landed
    lost.unlink()
    damaged.write_bytes(damaged.read_bytes()[:-10])
    second = derive_pixels(str(demo_shards), out, size=16, workers=1, progress=False)
    assert second == first and kept.stat().st_mtime_ns == kept_stamp  # the good shard was not rewritten
    assert not list(out.rglob("*.tmp"))


def test_a_small_dataset_is_converted_without_a_pool(demo_shards, pixels16, tmp_path, monkeypatch):
    """Each pool worker takes seconds to start (it imports torch): by default, one per ROWS_PER_WORKER images."""
    import detector.data.pixels as pixels

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool for 75 images")

    monkeypatch.setattr(pixels, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(pixels, "usable_cpus", lambda: 4)
    manifest = derive_pixels(str(demo_shards), tmp_path / "px", size=16, progress=False)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in read_manifest(str(pixels16))["shards"]]


def test_the_source_can_be_a_uri(demo_shards, pixels16, tmp_path):
    manifest = derive_pixels(demo_shards.as_uri(), tmp_path / "px", size=16, workers=1, progress=False)
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in read_manifest(str(pixels16))["shards"]]


def test_a_damaged_source_shard_stops_the_derivation_with_its_name(demo_shards, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(demo_shards, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(ShardChecksumError, match=shard.name):
        derive_pixels(str(copy), tmp_path / "px", size=16, workers=1, progress=False)
    assert not (tmp_path / "px" / "manifest.json").exists()


def test_the_command_names_a_missing_dataset(tmp_path, capsys):
    assert cli(["pixels", str(tmp_path / "nope"), "--out", str(tmp_path / "px")]) == 2
    assert "nope: no manifest.json" in capsys.readouterr().err


def test_webdataset_shards_convert_too(tmp_path):
    from detector.data.demo import DemoConfig
    from detector.data.prepare import ImportOptions, prepare

    prepare(tmp_path / "wds", demo=DemoConfig(image_size=16, train=20, val=6, test=6),
            options=ImportOptions(fmt="webdataset", shard_rows=8), workers=1, progress=False)
    derive_pixels(str(tmp_path / "wds"), tmp_path / "px", size=12, workers=2, progress=False)
    spec = ReadSpec(image_size=12, train=True)
    src = list(build_loader(str(tmp_path / "wds"), "train", spec, batch_size=4, num_workers=0))
    px = list(build_loader(str(tmp_path / "px"), "train", spec, batch_size=4, num_workers=0))
    assert same([(*b, None) for b in px], [(*b, None) for b in src])
