"""The shard loader: every row once per epoch across workers and ranks, a new order every epoch,
checksums, filters, the paper's transforms."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from detector.data.loader import (
    ShardChecksumError,
    ReadSpec,
    ShardDataset,
    build_loader,
    manifest_sha256,
    read_manifest,
)

META = ReadSpec(image_size=16, with_meta=True)  # evaluation rows, with their metadata


def paths(rows) -> list[str]:
    return [meta["original_path"] for *_, meta in rows]


def test_manifest_helpers(demo_shards):
    manifest = read_manifest(str(demo_shards))
    assert manifest["totals"]["train"] == {"real": 27, "fake": 26}
    assert len([s for s in manifest["shards"] if s["split"] == "train"]) == 3
    assert len(manifest_sha256(str(demo_shards))) == 64
    with pytest.raises(FileNotFoundError, match="run `detector prepare"):
        read_manifest(str(demo_shards / "nope"))


@pytest.mark.parametrize("num_workers", [1, 2, 3, 7])
def test_workers_split_an_epoch_into_every_row_once(demo_shards, num_workers):
    ds = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, train=True, with_meta=True))
    ds.set_epoch(2)
    seen = []
    for w in range(num_workers):
        part = [r["original_path"] for r in ds.iter_rows(w, num_workers)]
        assert len(part) == ds.worker_rows(w, num_workers)
        seen += part
    assert len(seen) == len(ds) == 53 and len(set(seen)) == 53


def test_a_real_dataloader_with_workers_sees_every_row_once(demo_shards):
    loader = build_loader(str(demo_shards), "train", ReadSpec(image_size=16, train=True, with_meta=True), batch_size=8,
                          num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader)  # exact, partial batch per worker included
    seen = [p for _, _, meta in batches for p in meta["original_path"]]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == len(loader.dataset) == 53
    images, labels, meta = batches[0]
    assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert set(meta) >= {"source", "generator", "sha256", "original_path"}


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_equal_shares_that_cover_every_row(demo_shards, world_size):
    shares = []
    for rank in range(world_size):
        ds = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, train=True, with_meta=True), rank=rank,
                          world_size=world_size)
        ds.set_epoch(5)
        rows = [r["original_path"] for w in range(2) for r in ds.iter_rows(w, 2)]
        assert len(rows) == len(ds) == -(-53 // world_size)  # equal, so no rank waits on another
        shares.append(rows)
    everything = [p for s in shares for p in s]
    assert set(everything) == set(paths(ShardDataset(str(demo_shards), "train", META)))
    assert len(everything) - len(set(everything)) == world_size * -(-53 // world_size) - 53  # padding only


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_unpadded_ranks_read_every_row_exactly_once(demo_shards, world_size):
    """Evaluation's split (pad=False): the ranks' sums are the whole split's, each row counted once."""
    shares = [[r["original_path"] for w in range(2) for r in ds.iter_rows(w, 2)]
              for ds in (ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, with_meta=True, pad=False),
                                      rank=rank, world_size=world_size) for rank in range(world_size))]
    everything = [p for s in shares for p in s]
    assert sorted(everything) == sorted(paths(ShardDataset(str(demo_shards), "train", META)))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_order_changes_every_epoch_and_repeats_for_a_seed(demo_shards):
    def order(epoch, seed=0):
        ds = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, train=True, seed=seed, with_meta=True))
        ds.set_epoch(epoch)
        return [r["original_path"] for r in ds.iter_rows()]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    assert order(0) != order(0, seed=1)
    # evaluation reads in a fixed order whatever the epoch
    ev = ShardDataset(str(demo_shards), "val", META)
    first = paths(ev)
    ev.set_epoch(3)
    assert paths(ev) == first


def test_the_loader_advances_epochs_itself(demo_shards):
    loader = build_loader(str(demo_shards), "train", ReadSpec(image_size=16, train=True, with_meta=True), batch_size=64,
                          num_workers=0)
    e0, e1 = ([p for *_, m in loader for p in m["original_path"]] for _ in range(2))
    assert e0 != e1
    loader.set_epoch(0)  # what a trainer resuming at epoch 0 does
    assert [p for *_, m in loader for p in m["original_path"]] == e0


def test_batches_equal_the_stacked_samples(demo_shards):
    ds = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=12, train=True))
    ds.set_epoch(4)
    samples = list(ds)
    loader = build_loader(str(demo_shards), "train", ReadSpec(image_size=12, train=True), batch_size=5, num_workers=0)
    loader.set_epoch(4)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(images, torch.stack([x for x, _ in samples]))
    assert labels.tolist() == [y for _, y in samples]


def test_training_flips_about_half_evaluation_never(demo_shards):
    plain = {m["sha256"]: x for x, _, m in ShardDataset(str(demo_shards), "train", META)}
    train = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, train=True, with_meta=True))
    flipped = sum(not torch.equal(x, plain[m["sha256"]]) for x, _, m in train)
    assert all(torch.equal(x, plain[m["sha256"]].flip(-1)) or torch.equal(x, plain[m["sha256"]])
               for x, _, m in train)
    assert 10 < flipped < 43


def test_image_size_is_configurable(demo_shards):
    x, y = next(iter(ShardDataset(str(demo_shards), "test", ReadSpec(image_size=24))))
    assert x.shape == (3, 24, 24) and y in (0, 1)


def test_filters_by_generator_and_source(demo_shards):
    ds = ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, generators=["nearest", "bicubic"],
                                                          with_meta=True))
    gens = collections.Counter(m["generator"] for *_, m in ds)
    assert set(gens) == {"nearest", "bicubic"} and sum(gens.values()) == len(ds)
    assert len(ShardDataset(str(demo_shards), "train", ReadSpec(image_size=16, sources=["demo"]))) == 53
    with pytest.raises(ValueError, match="no source\\(s\\) faces140k"):
        ShardDataset(str(demo_shards), "train", ReadSpec(sources=["faces140k"]))


def test_a_uri_works_like_a_path(demo_shards):
    a = paths(ShardDataset(str(demo_shards), "val", META))
    b = paths(ShardDataset(demo_shards.as_uri(), "val", ReadSpec(image_size=16, with_meta=True)))
    assert a == b and len(a) == 12


def test_a_damaged_shard_fails_its_checksum(demo_shards, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(demo_shards, copy)
    shard = copy / json.loads((copy / "manifest.json").read_text())["shards"][-1]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError, match=shard.name):
        ShardDataset(str(copy), shard.parent.name)
    ShardDataset(str(copy), "train")  # other splits are unaffected


def test_webdataset_shards_read_the_same(tmp_path, demo_shards):
    from detector.data.demo import DemoConfig
    from detector.data.prepare import ImportOptions, prepare

    prepare(tmp_path / "wds", demo=DemoConfig(image_size=16, train=53, val=12, test=10),
            options=ImportOptions(fmt="webdataset", shard_rows=20), workers=1, progress=False)
    for split in ("train", "val"):
        a = ShardDataset(str(demo_shards), split, ReadSpec(image_size=16, with_meta=True))
        b = ShardDataset(str(tmp_path / "wds"), split, ReadSpec(image_size=16, with_meta=True))
        assert sorted(paths(a)) == sorted(paths(b))
    spec = ReadSpec(image_size=16, train=True, generators=["bilinear"], with_meta=True)
    loader = build_loader(str(tmp_path / "wds"), "train", spec, batch_size=16, num_workers=2)
    seen = [p for *_, m in loader for p in m["original_path"]]
    assert len(seen) == len(set(seen)) == len(loader.dataset) > 0


def test_uint8_batches_normalise_to_the_float_ones(demo_shards):
    kwargs = dict(batch_size=8, num_workers=0)
    floats = list(build_loader(str(demo_shards), "val", ReadSpec(image_size=16), **kwargs))
    raw = list(build_loader(str(demo_shards), "val", ReadSpec(image_size=16), normalize=False, **kwargs))
    assert raw[0][0].dtype == torch.uint8
    preset = build_loader(str(demo_shards), "val", ReadSpec(image_size=16), **kwargs).shard_dataset.transform
    assert all(torch.equal(preset.normalize(r[0]), f[0]) for r, f in zip(raw, floats))
