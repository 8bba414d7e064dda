"""The training loop's TensorBoard run: every epoch's metrics row, filed by name, and the run's hparams."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# Metrics that describe the input pipeline and the hardware, not the model: TensorBoard files them under perf/.
PERF_METRICS = ("images_per_s", "data_wait_s")
# In every epoch's row but not plotted per epoch: bookkeeping, or the running best (HParams shows it).
_UNPLOTTED = ("epoch", "best_val_accuracy", "best_epoch")


def tensorboard_tag(key: str) -> str:
    """A metric's TensorBoard tag, from its name: ``train_loss`` -> ``train/loss``, ``val_accuracy`` ->
    ``val/accuracy``, ``images_per_s`` -> ``perf/images_per_s``, ``lr`` -> ``lr``."""
    prefix, _, rest = key.partition("_")
    if prefix in ("train", "val") and rest:
        return f"{prefix}/{rest}"
    return f"perf/{key}" if key in PERF_METRICS else key


class TensorBoardLog:
    """One TensorBoard run per fit: every epoch's metrics, and the run's hparams at the end (or nothing
    when ``tb_dir`` is None)."""

    def __init__(self, tb_dir: str | Path | None) -> None:
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tb_dir))

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
        """The run's hparams with its val accuracy at the last epoch (a search's objective) and at the best."""
        if self.writer is None or not hparams or not history:
            return
        self.writer.add_hparams(
            {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()},
            {"hparam/val_accuracy": history[-1]["val_accuracy"], "hparam/best_val_accuracy": best,
             "hparam/best_epoch": best_epoch},
            run_name=".",
        )
