"""The run folder: the one owner of every path a run writes or reads.

::

    RUN/experiment.yaml                   the validated config (written first)
    RUN/driver.json, RUN/.driver.lock     the lease of the one driver working on the run (detector.job.lease)
    RUN/status/run.json                   the run's state: which stage, live / stopped / failed / finished
    RUN/status/<stage>.json               every trial of a Tune stage, live (state, epochs, metrics)
    RUN/models/baseline.pt, prune-10.pt   final models (+ .json: fit summary); dense-ft.pt: the control
    RUN/search/results.json               every search trial, best parameters per sparsity
    RUN/search/optuna.journal             the searches' Optuna studies (unless search.storage names a database)
    RUN/search/optuna.journal.damaged-*   a damaged journal as `detector repair` found it (detector.job.repair)
    RUN/finetune/results.json             the fine-tune trials
    RUN/eval/<model>.json                 metrics and efficiency (+ .predictions.json: per image)
    RUN/tensorboard/...                   one TensorBoard run per trial and fine-tune
    RUN/tune/<stage>/                     Ray Tune's experiments (or <storage>/<run name>/<stage>/)
    RUN/report/                           report.md, report.json, CSV tables, figures
    RUN/samples/                          a few test images to try `detector predict` on (the demo's)

Stages, the Ray module, ``detector status`` and the report all ask here; nothing else joins these names.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from detector.paths import is_uri, uri_join

CONFIG_FILE = "experiment.yaml"
PREDICTIONS_SUFFIX = ".predictions.json"
TUNE_STAGES = ("baseline", "search", "finetune", "evaluate")


def _is_experiment(name: str) -> bool:
    try:
        tune_stage(name)
        return True
    except ValueError:
        return False


def untrusted_files(root: Path) -> list[str]:
    """Files and folders under ``root`` (itself included) that this user does not own, or that group or
    others may write: whoever wrote them could have planted code in what gets unpickled from there."""
    uid = os.getuid()
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for path in [dirpath, *(os.path.join(dirpath, n) for n in filenames)]:
            st = os.lstat(path)
            if st.st_uid != uid:
                bad.append(f"{path} is owned by uid {st.st_uid}")
            elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(st.st_mode):
                bad.append(f"{path} is writable by {'group' if st.st_mode & stat.S_IWGRP else 'others'}")
    return bad


BASELINE = "baseline"  # the dense model the baseline stage trains; every other model starts from its weights
CONTROL = "dense-ft"  # the equal-budget dense control: sparsity 0 through the same search and fine-tune
_MODEL_NAME = re.compile(r"(baseline|dense-ft|prune-\d+(\.\d+)?)")


def model_name(sparsity: float) -> str:
    """The model a search and fine-tune at ``sparsity`` make: ``dense-ft`` (the control) for 0, ``prune-10``
    ... for a pruned one (``prune-82.5`` for 0.825). The baseline is ``BASELINE``."""
    return CONTROL if sparsity == 0 else f"prune-{100 * sparsity:g}"


def check_model_name(name: str) -> str:
    """``name`` if it names a model (``baseline``, ``dense-ft``, ``prune-<percent>``): a name becomes a file
    name, so one read from a file must not reach outside ``models/`` or ``eval/``."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a model name (baseline, dense-ft, prune-<percent>)")
    return name


def tune_stage(name: str) -> str:
    """The stage a Tune experiment belongs to: ``search`` for ``search`` and a frontier's ``search-r2``."""
    stage = name.split("-r", 1)[0]
    if stage not in TUNE_STAGES or (name != stage and not name[len(stage) + 2:].isdigit()):
        raise ValueError(f"no Tune experiment {name!r}: stages are {', '.join(TUNE_STAGES)} (or search-rN, "
                         "finetune-rN: a frontier search's rounds)")
    return stage


def sparsity_label(sparsity: float) -> str:
    """``s40`` for 0.4 (``s12.5`` for 0.125): short, and sorts like the sparsities it names."""
    return f"s{100 * sparsity:g}"


def trial_label(sparsity: float, trial: int | None) -> str:
    """``s40-t3``: the 3rd trial of the 40 % search; the name of a trial in Tune, TensorBoard and status."""
    return f"{sparsity_label(sparsity)}-t{trial}"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    # -- the config ------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    # -- the driver and the run's live state (plain JSON, read by `detector status`) -------------------
    @property
    def lease(self) -> Path:
        return self.root / "driver.json"

    @property
    def lock(self) -> Path:
        return self.root / ".driver.lock"

    @property
    def run_status(self) -> Path:
        return self.root / "status" / "run.json"

    def stage_status(self, experiment: str) -> Path:
        tune_stage(experiment)
        return self.root / "status" / f"{experiment}.json"

    def stage_statuses(self) -> list[str]:
        """The Tune experiments with a status table, in the order they ran (a frontier's rounds in turn)."""
        found = [p.stem for p in (self.root / "status").glob("*.json") if p.stem != "run"]
        def order(name: str) -> tuple[int, int]:
            stage, _, r = name.partition("-r")
            return (TUNE_STAGES.index(stage) if stage in TUNE_STAGES else 99, int(r) if r.isdigit() else 0)
        return sorted((n for n in found if _is_experiment(n)), key=order)

    # -- models ----------------------------------------------------------------------------------------
    def model(self, name: str) -> Path:
        """The final model of a stage, by name: ``BASELINE``, or a fine-tune's (``model_name(sparsity)``)."""
        return self.root / "models" / f"{check_model_name(name)}.pt"

    def model_summary(self, name: str) -> Path:
        return self.model(name).with_suffix(".json")

    def has_model(self, name: str) -> bool:
        """Whether model ``name`` is done: its weights and its summary, which is written after them (a
        stage cut between the two writes made no model)."""
        return self.model(name).exists() and self.model_summary(name).exists()

    # -- stage results ---------------------------------------------------------------------------------
    @property
    def search_results(self) -> Path:
        return self.root / "search" / "results.json"

    @property
    def optuna_journal(self) -> Path:
        """Where the Optuna studies of the search live by default: ``optuna-dashboard RUN/search/optuna.journal``."""
        return self.root / "search" / "optuna.journal"

    @property
    def frontier(self) -> Path:
        """The frontier search's rule, rounds, probes and answer (search.mode: frontier)."""
        return self.root / "search" / "frontier.json"

    def round_results(self, round_: int) -> Path:
        return self.root / "search" / f"round-{round_}.json"

    @property
    def finetune_results(self) -> Path:
        return self.root / "finetune" / "results.json"

    def evaluation(self, name: str) -> Path:
        return self.root / "eval" / f"{check_model_name(name)}.json"

    def predictions(self, name: str) -> Path:
        return self.root / "eval" / f"{check_model_name(name)}{PREDICTIONS_SUFFIX}"

    def evaluation_files(self) -> list[Path]:
        """Every model's evaluation in the run (not the per-image predictions beside them), sorted."""
        folder = self.root / "eval"
        return sorted(p for p in folder.glob("*.json") if not p.name.endswith(PREDICTIONS_SUFFIX))

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def samples(self) -> Path:
        """Image files to try ``detector predict`` on, their labels in their names (the demo writes them)."""
        return self.root / "samples"

    # -- TensorBoard -----------------------------------------------------------------------------------
    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def tensorboard_run(self, stage: str, sparsity: float = 0.0, trial: int | None = None) -> Path:
        """One TensorBoard run, named by what it is: ``baseline``, ``search/s40-t3`` (the 3rd trial of the
        40 % search) or ``finetune/s40`` (``s0``: the dense control's, as its trials are named in Tune and
        ``detector status``). ``tensorboard --logdir RUN/tensorboard`` shows these names."""
        if stage == "baseline":
            return self.tensorboard / "baseline"
        if stage == "search":
            return self.tensorboard / "search" / trial_label(sparsity, trial)
        if stage == "finetune":
            return self.tensorboard / "finetune" / sparsity_label(sparsity)
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
