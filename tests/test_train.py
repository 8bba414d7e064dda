import dataclasses
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import detector.train as train_mod
from detector.checkpoint import load_checkpoint, load_model
from detector.config import ConfigError, from_dict
from detector.model import build_model
from detector.prune.unstructured import is_pruned, prune_global_l1, sparsity_report
from detector.device import resolve_precision
from detector.passes import NonFiniteLossError, collect_predictions, evaluate, to_device
from detector.train import OBJECTIVES, EarlyStopping, TrainConfig, fit
from detector.trial_dir import TrialDir

SMALL = dict(arch="resnet18", image_size=16, batch_size=8, lr=1e-3, num_workers=0, channels_last=False, seed=0)


def pattern_data(n: int, size: int, seed: int) -> TensorDataset:
    """Noise images; the real ones (label 1) carry a bright top-left quadrant: learnable in an epoch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 1, :, : size // 2, : size // 2] += 1.5
    return TensorDataset(x, y)


def loaders(n_train=32, n_val=16, size=16, batch=8):
    train = DataLoader(pattern_data(n_train, size, seed=1), batch_size=batch, shuffle=True)
    val = DataLoader(pattern_data(n_val, size, seed=2), batch_size=batch)
    return train, val


def test_paper_baseline_is_the_default_config():
    cfg = TrainConfig()
    assert (cfg.arch, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.patience, cfg.image_size) == (
        "resnet50", "adam", 1e-4, 16, 100, 3, 224)


@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("lr", -1e-3), ("patience", 0), ("batch_size", 0), ("max_epochs", 0), ("momentum", 1.0),
    ("weight_decay", -0.1), ("arch", "vgg16"), ("device", "gpu"), ("max_train_batches", 0), ("image_size", 8),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        from_dict(TrainConfig, {field: value})


def test_config_from_yaml_style_dict():
    cfg = from_dict(TrainConfig, {"optimizer": "sgd", "lr": "1.0e-5", "max_train_batches": None})
    assert cfg.optimizer == "sgd" and cfg.lr == 1e-5
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        from_dict(TrainConfig, {"learning_rate": 1e-3})


def test_early_stopping_on_a_scripted_sequence():
    stopper = EarlyStopping(patience=3)
    seen = []
    for epoch, acc in enumerate([0.50, 0.70, 0.60, 0.70, 0.69, 0.95], start=1):
        stopper = stopper.update(acc, epoch)
        seen.append((stopper.best_epoch, stopper.bad_epochs, stopper.should_stop))
        if stopper.should_stop:
            break
    # A tie (0.70 at epoch 4) is not an improvement; the 3rd bad epoch (5) stops before 0.95 is seen.
    assert seen == [(1, 0, False), (2, 0, False), (2, 1, False), (2, 2, False), (2, 3, True)]


def test_fit_stops_after_patience_and_restores_the_best_epoch(tmp_path, monkeypatch):
    scripted = iter([0.50, 0.70, 0.60, 0.65, 0.69, 0.99])
    real_evaluate = train_mod.evaluate

    def scripted_evaluate(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "val_accuracy": next(scripted)}

    monkeypatch.setattr(train_mod, "evaluate", scripted_evaluate)
    weights_by_epoch = {}

    stored = {}  # what Tune would store at each epoch

    def on_epoch(metrics, ckpt_dir):
        assert ckpt_dir == tmp_path / "checkpoint"
        stored[metrics["epoch"]] = sorted(p.name for p in ckpt_dir.iterdir())
        weights_by_epoch[metrics["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    model = build_model("resnet18", seed=0)
    cfg = TrainConfig(**SMALL, max_epochs=10, patience=3, max_train_batches=1)
    result = fit(model, *loaders(), cfg, out_dir=tmp_path, on_epoch=on_epoch)

    assert (result.best_epoch, result.epochs_run, result.stopped_early) == (2, 5, True)
    assert result.best_val_accuracy == 0.70
    assert [h["best_val_accuracy"] for h in result.history] == [0.5, 0.7, 0.7, 0.7, 0.7]
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights_by_epoch[2][k]), k
    assert not torch.equal(model.fc.weight, weights_by_epoch[5]["fc.weight"])
    best = load_checkpoint(result.best_checkpoint)
    assert best["metadata"]["epoch"] == 2 and best["metadata"]["metrics"]["val_accuracy"] == 0.70
    # one copy of the model per stored checkpoint while each epoch is the best; the best's beside the state after
    assert stored == {1: ["state.pt"], 2: ["state.pt"], 3: ["best.pt", "state.pt"], 4: ["best.pt", "state.pt"],
                      5: ["best.pt", "state.pt"]}
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["best.pt", "state.pt"]
    assert not (tmp_path / ".best.pt").exists()


def test_a_tiny_run_learns(tmp_path):
    train, val = loaders(n_train=96, n_val=32, size=32, batch=16)
    model = build_model("resnet18", seed=0)
    chance = evaluate(model, val, device="cpu")["val_accuracy"]
    cfg = TrainConfig(**{**SMALL, "image_size": 32, "batch_size": 16}, max_epochs=3, patience=3)
    result = fit(model, train, val, cfg, out_dir=tmp_path, tb_dir=tmp_path / "tb",
                 hparams={"optimizer": "adam", "lr": 1e-3})
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert result.best_val_accuracy >= max(0.9, chance + 0.25)
    assert evaluate(model, val, device="cpu")["val_accuracy"] == result.best_val_accuracy
    assert set(first) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                          "images_per_s", "data_wait_s", "best_val_accuracy"}
    assert set(first) >= set(OBJECTIVES)  # every metric a search may be told to optimise is reported
    assert all(math.isfinite(v) for v in first.values())
    assert TrialDir(tmp_path).read_history() == result.history
    assert "optimizer: adam" in TrialDir(tmp_path).config.read_text()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    loaded, meta = load_model(result.best_checkpoint)
    assert meta["hparams"] == {"optimizer": "adam", "lr": 1e-3} and meta["config"]["lr"] == 1e-3
    labels, probs, metas = collect_predictions(loaded, val, device="cpu")
    assert metas is None and labels.tolist() == val.dataset.tensors[1].tolist()
    assert ((probs >= 0.5) == labels).mean() == result.best_val_accuracy


class _Interrupt(Exception):
    pass


def test_resume_continues_where_it_stopped(tmp_path):
    cfg = TrainConfig(**SMALL, max_epochs=3, patience=10, max_train_batches=2)
    straight = fit(build_model("resnet18", seed=0), *loaders(), cfg, out_dir=tmp_path / "straight")

    def crash_after_epoch_2(metrics, ckpt_dir):
        if metrics["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(build_model("resnet18", seed=0), *loaders(), cfg, out_dir=tmp_path / "resumed",
            on_epoch=crash_after_epoch_2)
    epochs_seen = []
    resumed = fit(build_model("resnet18", seed=99), *loaders(), cfg, out_dir=tmp_path / "resumed",
                  on_epoch=lambda m, d: epochs_seen.append(m["epoch"]))
    assert epochs_seen == [3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    # Same weights, optimizer moments and RNG (data order) as the uninterrupted run.
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]
    # A finished run resumes to nothing and returns the same result.
    again = fit(build_model("resnet18"), *loaders(), dataclasses.replace(cfg), out_dir=tmp_path / "resumed")
    assert again.epochs_run == 3 and again.best_epoch == resumed.best_epoch


def test_pruning_masks_survive_checkpoint_and_resume(tmp_path):
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.5)
    cfg = TrainConfig(**SMALL, max_epochs=1, patience=5, max_train_batches=2)
    fit(model, *loaders(), cfg, out_dir=tmp_path)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=1e-6)
    # Resume into a fresh dense model: the masks come back from the checkpoint, and still hold.
    fresh = build_model("resnet18", seed=1)
    result = fit(fresh, *loaders(), dataclasses.replace(cfg, max_epochs=2), out_dir=tmp_path)
    assert result.epochs_run == 2 and is_pruned(fresh)
    assert sparsity_report(fresh)["sparsity"] == pytest.approx(0.5, abs=1e-6)
    best, meta = load_model(TrialDir(tmp_path).best)
    assert is_pruned(best) and meta["sparsity"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("bad_batch", [0, 2])
def test_non_finite_loss_names_epoch_and_step(tmp_path, bad_batch):
    data = pattern_data(32, 16, seed=1)
    data.tensors[0][bad_batch * 8] = float("nan")
    train = DataLoader(data, batch_size=8)
    cfg = TrainConfig(**SMALL, max_epochs=1)
    with pytest.raises(NonFiniteLossError, match=f"nan at epoch 1, step {bad_batch + 1}"):
        fit(build_model("resnet18", seed=0), train, loaders()[1], cfg, out_dir=tmp_path)


def test_set_epoch_is_called_on_the_dataset(tmp_path):
    class EpochAware(TensorDataset):
        epochs: list = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    ds = EpochAware(*pattern_data(16, 16, seed=1).tensors)
    cfg = TrainConfig(**SMALL, max_epochs=2, patience=5, max_train_batches=1)
    fit(build_model("resnet18", seed=0), DataLoader(ds, batch_size=8), loaders()[1], cfg, out_dir=tmp_path)
    assert ds.epochs == [1, 2]


def test_fit_refuses_a_model_that_is_not_the_configured_arch(tmp_path):
    with pytest.raises(ValueError, match="not a resnet34"):
        fit(build_model("resnet18"), *loaders(), TrainConfig(**{**SMALL, "arch": "resnet34"}), out_dir=tmp_path)


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_uint8_batches_are_normalised_on_the_device_like_the_loader_does():
    from detector.data.transforms import ClassificationPresetEval

    raw = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    on_device, labels = to_device(raw, torch.tensor([1, 0, 1, 0]), torch.device("cpu"), channels_last=True)
    expected = ClassificationPresetEval(image_size=16).normalize(raw)
    assert on_device.dtype == torch.float32 and torch.equal(on_device, expected)
    assert on_device.is_contiguous(memory_format=torch.channels_last) and labels.dtype == torch.float32
