"""Shards on object storage: the loader, `detector pixels` and a training stage read an ``s3://`` URI
through pyarrow's own S3 client, against moto's S3 server (an S3 API emulator on localhost)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from pyarrow import fs as pafs

from detector.data.loader import ReadSpec, ShardChecksumError, ShardDataset, build_loader, read_manifest
from detector.data.pixels import derive_pixels
from detector.paths import UnsafePathError


@pytest.fixture(scope="module")
def bucket(demo_shards):
    """(uri of a copy of the demo shards in a bucket, the S3 file system, the bucket's prefix)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as env:
        # credentials reach pyarrow (and DataLoader workers) the usual way, through the environment
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            s3 = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                                   allow_bucket_creation=True)
            s3.create_dir("detector")
            pafs.copy_files(str(demo_shards), "detector/data", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=s3)
            yield (f"s3://detector/data?endpoint_override={host}:{port}&scheme=http&region=us-east-1", s3,
                   "detector/data")
        finally:
            server.stop()


def test_the_loader_reads_a_bucket_like_a_folder(bucket, demo_shards):
    uri, _, _ = bucket
    assert read_manifest(uri) == read_manifest(str(demo_shards))
    for split, train in (("train", True), ("val", False)):
        spec = ReadSpec(image_size=16, train=train, with_meta=True)
        remote = list(build_loader(uri, split, spec, batch_size=8, num_workers=2))
        local = list(build_loader(str(demo_shards), split, spec, batch_size=8, num_workers=2))
        assert len(remote) == len(local) > 0
        assert all(torch.equal(r[0], l[0]) and r[2] == l[2] for r, l in zip(remote, local))


def test_a_damaged_object_fails_its_checksum(bucket, demo_shards):
    uri, s3, prefix = bucket
    shard = read_manifest(uri)["shards"][0]["path"]
    original = (demo_shards / shard).read_bytes()
    with s3.open_output_stream(f"{prefix}/{shard}") as f:
        f.write(original[:-1])  # S3 times have 1 s resolution: a new size marks it changed at once
    try:
        with pytest.raises(ShardChecksumError, match=Path(shard).name):
            ShardDataset(uri, "train", ReadSpec(image_size=16))
    finally:
        with s3.open_output_stream(f"{prefix}/{shard}") as f:
            f.write(original)


def test_a_manifest_in_a_bucket_cannot_point_at_another_prefix(bucket):
    """A planted manifest under one prefix lists the real shard of another prefix (same sha256)."""
    uri, s3, prefix = bucket
    manifest = read_manifest(uri)
    manifest["shards"][0]["path"] = f"../data/{manifest['shards'][0]['path']}"
    with s3.open_output_stream("detector/planted/manifest.json") as f:
        f.write(json.dumps(manifest).encode())
    planted = uri.replace("detector/data?", "detector/planted?")
    with pytest.raises(UnsafePathError, match=r"s3://detector/planted/manifest\.json\?\S+: shards\[0\]\.path '\.\./data/"):
        ShardDataset(planted, manifest["shards"][0]["split"], ReadSpec(image_size=16))


def test_pixels_derive_from_a_bucket_byte_for_byte(bucket, demo_shards, tmp_path):
    uri, _, _ = bucket
    remote = derive_pixels(uri, tmp_path / "from-s3", size=16, workers=2, progress=False)
    local = derive_pixels(str(demo_shards), tmp_path / "from-disk", size=16, workers=1, progress=False)
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    assert remote["pixels"]["from"]["data"] == uri


def test_a_training_stage_reads_its_data_from_the_bucket(bucket, tmp_path):
    from detector.job.stages import train_stage
    from detector.train import TrainConfig

    cfg = TrainConfig(arch="resnet18", image_size=16, batch_size=16, max_epochs=1, num_workers=1, device="cpu",
                      precision="fp32", channels_last=False)
    summary = train_stage(cfg, data=bucket[0], out_dir=tmp_path / "train", tb_dir=None,
                          model_path=tmp_path / "model.pt")
    assert summary["epochs_run"] == 1 and (tmp_path / "model.pt").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_tune_keeps_its_state_in_the_bucket(bucket, demo_shards, tmp_path):
    """`storage: s3://...` in the experiment config: Tune's experiment state and trial checkpoints go to the
    bucket, the run folder keeps none of it, and `detector status` reads the trials back from there. Once the
    stage is complete its trials' weights are dropped from the bucket too (`stages.drop_checkpoints`)."""
    from pipeline_helpers import tiny_experiment, write_untrained_baseline

    from detector.job.pipeline import run
    from detector.job.runfolder import RunFolder
    from detector.job.status import read_status

    uri, s3, _ = bucket
    storage = uri.replace("detector/data?", "detector/runs?")
    run_dir = tmp_path / "run"
    exp = tiny_experiment(demo_shards, control=False, train={"image_size": 16},  # about storage: no control
                          search={"sparsities": [0.2], "trials_per_sparsity": 1}, storage=storage)
    write_untrained_baseline(run_dir, exp)
    run(exp, run_dir, stages=["search"])
    stored = [f.path for f in s3.get_file_info(pafs.FileSelector("detector/runs/run/search", recursive=True))]
    assert any("experiment_state-" in p for p in stored)
    (result,) = [p for p in stored if p.endswith("/result.json")]
    with s3.open_input_stream(result) as f:  # the trial checkpointed its epoch into the bucket,
        assert json.loads(f.read().decode().splitlines()[-1])["checkpoint_dir_name"] == "checkpoint_000000"
    assert not any("/checkpoint_" in p for p in stored)  # and the complete stage dropped it there
    assert not (run_dir / "tune").exists()
    trials = read_status(RunFolder(run_dir))["trial_stages"]["search"]["trials"]
    assert [(t["sparsity"], t["state"]) for t in trials] == [(0.2, "done")]
