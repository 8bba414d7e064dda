import os
import pickle

import pytest
import torch

from detector.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from detector.model import build_model
from detector.prune.unstructured import is_pruned, prune_global_l1, sparsity_report

META = {"arch": "resnet18", "image_size": 32, "data_manifest_sha256": "ab" * 32, "metrics": {"val_accuracy": 0.9}}


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_round_trip_gives_identical_outputs(tmp_path, sparsity):
    model = build_model("resnet18", seed=0).eval()
    if sparsity:
        prune_global_l1(model, sparsity)
    x = torch.randn(2, 3, 32, 32)
    path = save_checkpoint(tmp_path / "m.pt", model, metadata=META)
    loaded, meta = load_model(path)
    assert torch.equal(loaded(x), model(x))
    assert is_pruned(loaded) == bool(sparsity)  # masks come back, so a fine-tune keeps the zeros
    assert meta["sparsity"] == pytest.approx(sparsity_report(model)["sparsity"])
    assert meta["arch"] == "resnet18" and meta["image_size"] == 32
    assert meta["metrics"] == {"val_accuracy": 0.9} and meta["data_manifest_sha256"] == "ab" * 32
    assert meta["config"] == {} and meta["total_params"] == 11_177_025


def test_optimizer_and_extra_state_round_trip(tmp_path):
    model = build_model("resnet18", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "s.pt", model, metadata=META, optimizer=opt,
                    extra={"train_state": {"epoch": 4, "rng": torch.get_rng_state()}})
    payload = load_checkpoint(tmp_path / "s.pt")
    assert payload["train_state"]["epoch"] == 4
    opt2 = torch.optim.Adam(build_model("resnet18").parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("container, reason", [
    ("torch_zip", "it asks to import or call code"),
    ("raw_pickle", "not a weights-only checkpoint"),  # refused at the first opcode torch's loader rejects
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_booby_trapped_checkpoint_is_refused_without_running_it(tmp_path, container, reason):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "detector-checkpoint", "version": 1, "metadata": dict(META), "model": _RunsCode(marker)}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=rf"evil\.pt: refused to load: {reason}"):
        load_model(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18"), metadata=META)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="m.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_state_dict_is_not_taken_for_a_checkpoint(tmp_path):
    torch.save(build_model("resnet18").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt: not a detector checkpoint"):
        load_model(tmp_path / "plain.pt")


def test_weights_that_do_not_fit_the_stated_arch(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18"), metadata={**META, "arch": "resnet34"})
    with pytest.raises(CheckpointError, match=r"m.pt: weights do not fit the model: missing \d+ key"):
        load_model(path)


def test_unknown_arch_in_metadata(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18"), metadata={**META, "arch": "vit_b_16"})
    with pytest.raises(CheckpointError, match="metadata arch 'vit_b_16'"):
        load_model(path)


@pytest.mark.parametrize("metadata, message", [
    ({"image_size": 32}, "metadata lacks arch"),
    ({**META, "config": object()}, "metadata must be plain data"),
])
def test_bad_metadata_is_refused_at_save(tmp_path, metadata, message):
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "m.pt", build_model("resnet18"), metadata=metadata)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_pruning_masks_are_stored_as_bool_and_come_back_as_the_weights_dtype(tmp_path):
    model = build_model("resnet18", seed=0).eval()
    prune_global_l1(model, 0.4)
    path = save_checkpoint(tmp_path / "m.pt", model, metadata=META)
    stored = load_checkpoint(path)["model"]
    masks = [k for k in stored if k.endswith("_mask")]
    assert masks and all(stored[k].dtype == torch.bool for k in masks)
    loaded, _ = load_model(path)
    assert all(loaded.state_dict()[k].dtype == torch.float32 for k in masks)
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in masks)
    # a float-mask file (as written before) still loads; the bool one is ~3 bytes smaller per masked weight
    torch.save({**torch.load(path, weights_only=True), "model": model.state_dict()}, tmp_path / "old.pt")
    assert torch.equal(load_model(tmp_path / "old.pt")[0](torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32)))
    saved = os.path.getsize(tmp_path / "old.pt") - os.path.getsize(path)
    assert saved > 2.99 * sum(stored[k].numel() for k in masks)  # less a few KB of zip headers
