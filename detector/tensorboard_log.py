"""The training loop's TensorBoard run: every epoch's metrics row, filed by name, and the run's hparams.

Tags fall in two groups, ``train/`` (the training pass: loss, accuracy, lr, throughput, data wait) and
``val/``, so that TensorBoard, which sorts groups by name and opens the first ones, opens on the curves. The
HParams view's metrics are tags of the ``val/`` group itself (no ``hparam/`` group sorting before them):
``val/accuracy`` (its last epoch: a search's objective), ``val/best_accuracy`` (one point, at the best epoch)
and ``val/best_epoch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# Metrics that describe the input pipeline and the hardware, not the model (filed with the training pass).
PERF_METRICS = ("images_per_s", "data_wait_s")
# In every epoch's row but not plotted per epoch: bookkeeping, or the running best (written once, at the end).
_UNPLOTTED = ("epoch", "best_val_accuracy", "best_epoch")
# The HParams view's metrics, in its column order.
HPARAM_METRICS = ("val/accuracy", "val/best_accuracy", "val/best_epoch")


def tensorboard_tag(key: str) -> str:
    """A metric's TensorBoard tag, from its name: ``val_accuracy`` -> ``val/accuracy``; every other metric of an
    epoch row describes its training pass: ``train_loss`` -> ``train/loss``, ``lr`` -> ``train/lr``,
    ``images_per_s`` -> ``train/images_per_s``."""
    prefix, _, rest = key.partition("_")
    if prefix in ("train", "val") and rest:
        return f"{prefix}/{rest}"
    return f"train/{key}"


class TensorBoardLog:
    """One TensorBoard run per fit: every epoch's metrics, and the run's hparams at the end (or nothing
    when ``tb_dir`` is None).

    ``purge_step``: the first epoch a resumed fit writes. The run may already hold that epoch and later ones
    (written before the checkpoint it resumes from was saved); TensorBoard drops them from the run, so each
    epoch is plotted once.
    """

    def __init__(self, tb_dir: str | Path | None, *, purge_step: int | None = None) -> None:
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tb_dir), purge_step=purge_step)

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()

    def epoch(self, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key not in _UNPLOTTED:
                self.writer.add_scalar(tensorboard_tag(key), value, int(metrics["epoch"]))
        self.writer.flush()

    def hparams(self, hparams: Mapping[str, Any], history: list[dict[str, float]], *, best: float,
                best_epoch: int) -> None:
        """The run's hparams, with its val accuracy at the last epoch (already plotted), at the best epoch, and
        which epoch that was."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if self.writer is None or not hparams or not history:
            return
        # SummaryWriter.add_hparams would also write every metric again as a scalar at step 0; the summaries
        # alone name the metrics, and TensorBoard reads their values from the run's own scalars.
        summaries = hparams_summary(
            {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()},
            dict.fromkeys(HPARAM_METRICS, 0.0))
        for summary in summaries:
            self.writer.file_writer.add_summary(summary)
        self.writer.add_scalar("val/best_accuracy", best, best_epoch)
        self.writer.add_scalar("val/best_epoch", best_epoch, int(history[-1]["epoch"]))
        self.writer.flush()
