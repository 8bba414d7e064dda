"""What TensorBoard shows of a fit, read back with TensorBoard's own reader: the curves in two groups (train/
and val/, nothing sorting before them), the HParams view's metrics among them, and each epoch once even when
a trial restarts from a checkpoint older than its last logged epoch."""

import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.data import DataLoader, TensorDataset

from detector.model import build_model
from detector.tensorboard_log import HPARAM_METRICS, TensorBoardLog, tensorboard_tag
from detector.train import TrainConfig, fit
from detector.trial_dir import TrialDir

CFG = TrainConfig(arch="resnet18", image_size=16, batch_size=8, lr=1e-3, num_workers=0, channels_last=False,
                  seed=0, max_epochs=3, patience=10, max_train_batches=2)


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.arange(32) % 2
    return (DataLoader(TensorDataset(x[:24], y[:24]), batch_size=8),
            DataLoader(TensorDataset(x[24:], y[24:]), batch_size=8))


def read(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


@pytest.mark.parametrize("key, tag", [("train_loss", "train/loss"), ("val_accuracy", "val/accuracy"),
                                      ("lr", "train/lr"), ("images_per_s", "train/images_per_s"),
                                      ("current_sparsity", "train/current_sparsity")])
def test_every_metric_of_an_epoch_is_filed_under_train_or_val(key, tag):
    assert tensorboard_tag(key) == tag


def test_the_curves_come_first_and_hparams_finds_its_metrics_among_them(tmp_path):
    fit(build_model("resnet18", seed=0), *loaders(), CFG, out_dir=tmp_path / "fit", tb_dir=tmp_path / "tb",
        hparams={"sparsity": 0.4, "optimizer": "adam", "lr": 1e-3})
    acc = read(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    # TensorBoard groups tags by their prefix, sorts the groups by name and opens the first ones
    assert sorted({t.split("/")[0] for t in tags}) == ["train", "val"]
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy"} <= set(tags)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert [h.name for h in experiment.hparam_infos] == ["sparsity", "optimizer", "lr"]
    for tag in HPARAM_METRICS:  # the view reads each metric's last value from the run's scalars
        assert acc.Scalars(tag), tag
    assert [e.step for e in acc.Scalars("val/accuracy")] == [1, 2, 3]  # written once, not again at step 0
    best = acc.Scalars("val/best_accuracy")
    assert len(best) == 1 and best[0].value == max(e.value for e in acc.Scalars("val/accuracy"))


def test_a_trial_restarted_from_an_older_checkpoint_logs_each_epoch_once(tmp_path):
    """Ray restores a trial from its last reported checkpoint; when the trial was killed after logging an
    epoch but before that epoch's checkpoint was kept, the restarted trial runs the epoch again."""
    trial = TrialDir(tmp_path / "fit")
    kept = tmp_path / "epoch-2-state.pt"

    class Killed(Exception):
        pass

    def lose_epoch_3_checkpoint(metrics, ckpt_dir):
        if metrics["epoch"] == 2:
            shutil.copy(trial.state, kept)
        if metrics["epoch"] == 3:  # logged to TensorBoard; its checkpoint is lost with the worker
            shutil.copy(kept, trial.state)
            raise Killed

    with pytest.raises(Killed):
        fit(build_model("resnet18", seed=0), *loaders(), CFG, out_dir=trial.root, tb_dir=tmp_path / "tb",
            on_epoch=lose_epoch_3_checkpoint)
    assert [e.step for e in read(tmp_path / "tb").Scalars("train/loss")] == [1, 2, 3]
    rerun = []
    fit(build_model("resnet18", seed=0), *loaders(), CFG, out_dir=trial.root, tb_dir=tmp_path / "tb",
        on_epoch=lambda m, d: rerun.append(m["epoch"]))
    assert rerun == [3]
    acc = read(tmp_path / "tb")
    for tag in ("train/loss", "val/accuracy"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag


def test_without_a_writer_nothing_is_written(tmp_path):
    with TensorBoardLog(None) as tb:
        tb.epoch({"epoch": 1, "train_loss": 0.5})
        tb.hparams({"lr": 0.1}, [{"epoch": 1, "val_accuracy": 0.5}], best=0.5, best_epoch=1)
    assert list(tmp_path.iterdir()) == []
