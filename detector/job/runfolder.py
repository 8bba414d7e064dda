"""The run folder: the one owner of every path a run writes or reads.

::

    RUN/experiment.yaml                   the validated config (written first)
    RUN/models/baseline.pt, prune-10.pt   final models (+ .json: fit summary)
    RUN/search/results.json               every search trial, best parameters per sparsity
    RUN/finetune/results.json             the fine-tune trials
    RUN/eval/<model>.json                 metrics and efficiency (+ .predictions.json: per image)
    RUN/tensorboard/...                   one TensorBoard run per trial and fine-tune
    RUN/tune/<stage>/                     Ray Tune's experiments (or <storage>/<run name>/<stage>/)
    RUN/report/                           report.md, report.json, CSV tables, figures

Stages, the Ray module, ``detector status`` and the report all ask here; nothing else joins these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.paths import is_uri, uri_join

CONFIG_FILE = "experiment.yaml"
PREDICTIONS_SUFFIX = ".predictions.json"
TUNE_STAGES = ("baseline", "search", "finetune", "evaluate")


def model_name(sparsity: float) -> str:
    """``baseline`` for the dense model, ``prune-10`` ... for a pruned one."""
    return "baseline" if sparsity == 0 else f"prune-{round(sparsity * 100):d}"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    # -- the config ------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    # -- models ----------------------------------------------------------------------------------------
    def model(self, sparsity: float) -> Path:
        """The final model of a stage: the baseline (sparsity 0) or a fine-tuned pruned model."""
        return self.root / "models" / f"{model_name(sparsity)}.pt"

    def model_summary(self, sparsity: float) -> Path:
        return self.model(sparsity).with_suffix(".json")

    # -- stage results ---------------------------------------------------------------------------------
    @property
    def search_results(self) -> Path:
        return self.root / "search" / "results.json"

    @property
    def finetune_results(self) -> Path:
        return self.root / "finetune" / "results.json"

    def evaluation(self, sparsity: float) -> Path:
        return self.root / "eval" / f"{model_name(sparsity)}.json"

    def predictions(self, sparsity: float) -> Path:
        return self.root / "eval" / f"{model_name(sparsity)}{PREDICTIONS_SUFFIX}"

    def evaluation_files(self) -> list[Path]:
        """Every model's evaluation in the run (not the per-image predictions beside them), sorted."""
        folder = self.root / "eval"
        return sorted(p for p in folder.glob("*.json") if not p.name.endswith(PREDICTIONS_SUFFIX))

    @property
    def report(self) -> Path:
        return self.root / "report"

    # -- TensorBoard -----------------------------------------------------------------------------------
    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def tensorboard_run(self, stage: str, sparsity: float = 0.0, trial: str | None = None) -> Path:
        """One TensorBoard run: ``baseline``, ``search/s0.1-<trial>`` or ``finetune/s0.1``."""
        if stage == "baseline":
            return self.tensorboard / "baseline"
        if stage == "search":
            return self.tensorboard / "search" / f"s{sparsity:g}-{trial}"
        if stage == "finetune":
            return self.tensorboard / "finetune" / f"s{sparsity:g}"
        raise ValueError(f"no TensorBoard runs for stage {stage!r}")

    # -- Ray Tune's storage ----------------------------------------------------------------------------
    def tune_root(self, storage: str | None) -> str:
        """Where Tune keeps this run's experiments: ``RUN/tune``, or ``<storage>/<run folder name>``."""
        if storage:
            return uri_join(storage, self.root.name)
        return str((self.root / "tune").resolve())

    def tune_experiment(self, stage: str, storage: str | None) -> str:
        return uri_join(self.tune_root(storage), stage)

    # -- data ------------------------------------------------------------------------------------------
    def resolve(self, path: str) -> str:
        """A data location from the config: a URI or absolute path as given, a relative one inside the run."""
        if is_uri(path) or Path(path).is_absolute():
            return path
        return str((self.root / path).resolve())

    def produced(self) -> list[str]:
        """The output folders that exist: a run folder with any of them has results under its config."""
        return [d for d in ("tune", "models", "search", "eval") if (self.root / d).exists()]
