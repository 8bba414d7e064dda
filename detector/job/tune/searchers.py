"""The Tune searchers over Optuna studies, and their state as data.

``SparsitySearcher`` runs every sparsity's search in one experiment, one study each; ``ParetoSearcher``
runs one multi-objective study over the sparsity and the training parameters. Both keep their studies in an
Optuna storage and write their own state (which Tune trial is which Optuna trial, the samplers' random
states) as JSON: nothing is pickled, and a resumed search goes on with the same studies, drawing what an
uninterrupted one would have drawn.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

import detector.job.tune.private_api as private_api

log = logging.getLogger(__name__)

SEARCHER_STATE_VERSION = 1


def optuna_storage(url: str) -> Any:
    """An Optuna storage from a URL: a journal file (``journal:///path``, or a plain path) or any RDB URL
    (``sqlite:///...``, ``postgresql://...``). ``optuna-dashboard URL`` shows the studies in it.

    A journal is read whole before it is opened: Optuna's file backend opens it for appending, and a new
    record after a cut one would make the damage permanent (``detector.job.repair``)."""
    if url.startswith("journal://"):
        url = url[len("journal://"):]
    if "://" not in url:
        from detector.job.repair import check_journal

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        check_journal(Path(url))
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


# The search the driver runs now: its storage (the run folder's journal, or search.storage), its Tune
# experiment's folder, and whether Tune restores the experiment. Tune pickles a searcher with its experiment
# (tuner.pkl), and the one that ``Tuner.restore`` brings back held the storage URL of the folder it was created
# in: a copied or moved run folder would resume the studies of the old folder (or start empty ones at the old
# path). A restored searcher opens this storage instead, and names its state file in this experiment folder
# (Tune reads a copy of it in Ray's session folder).
_DRIVEN: dict[str, tuple[str, str, bool]] = {}


@contextlib.contextmanager
def driving(searcher: Searcher | None, experiment: str, *, restoring: bool) -> Iterator[None]:
    """While the block runs, a restored searcher of ``searcher``'s kind opens ``searcher``'s storage: the
    one the current driver computed from the current run folder; ``experiment``: the Tune experiment's
    folder; ``restoring``: whether the block restores it (``Tuner.restore``). ``None`` or a searcher without a
    storage changes nothing."""
    url = getattr(searcher, "storage_url", None)
    kind = getattr(searcher, "kind", "")
    if not url:
        yield
        return
    _DRIVEN[kind] = (url, experiment, restoring)
    try:
        yield
    finally:
        _DRIVEN.pop(kind, None)


class StudySearcher(Searcher):
    """What both searchers share: the search space (converted once, so each study gets a resolved space),
    TPE studies in one storage, routing a trial's completion to the study that proposed it, and the state
    file (its frame; each searcher says what goes in it).

    A subclass names its ``kind`` and ``keeps`` (how its state's error message names its studies), and
    implements ``_study_of``, ``_state``, ``_check_state`` and ``_load_state``. Tune pickles a searcher with
    its experiment (``tuner.pkl``): the attribute names here are part of what a resumed run reads back.
    """

    kind = ""
    keeps = "the studies were"

    def __init__(self, *, space: dict[str, Any], metric: str | list[str], mode: str | list[str], seed: int,
                 tpe_startup_trials: int, storage: str | None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = OptunaSearch.convert_search_space(space)
        self.seed = seed
        self.tpe_startup_trials = tpe_startup_trials
        self.storage_url = storage

    def _storage(self) -> Any:
        return optuna_storage(self.storage_url) if self.storage_url else None

    def _new_study(self, name: str, *, seed: int, metric: str | list[str], mode: str | list[str],
                   storage: Any) -> OptunaSearch:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.tpe_startup_trials)
        return OptunaSearch(space=dict(self.space), metric=metric, mode=mode, sampler=sampler, study_name=name,
                            storage=storage)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # The search space and metric come from the constructor; Tune's param_space stays empty.
        return True

    def _study_of(self, trial_id: str) -> OptunaSearch | None:
        """The study that proposed ``trial_id`` (None: a trial this searcher did not hand out)."""
        raise NotImplementedError

    def _asked(self, trial_id: str) -> OptunaSearch | None:
        """The study that proposed ``trial_id`` if it still holds that Optuna trial: a journal cut back by
        ``detector repair`` may have lost the records of the last trials asked for."""
        study = self._study_of(trial_id)
        if study is None or trial_id in private_api.trial_map(study):
            return study
        log.warning("study %s: no Optuna trial for Tune trial %s (its records were cut off the journal by a repair); "
                    "its result is not told to the study", private_api.study(study).study_name, trial_id)
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        study = self._asked(trial_id)
        if study is None:
            return
        if result and result.get("trial_failed"):
            # A trial that diverged is a failed Optuna trial, not a result of NaN.
            result, error = None, True
        study.on_trial_complete(trial_id, result, error=error)

    # -- state, as data --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_state(self, checkpoint_path: str, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` when the saved state is another search than this one."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state as JSON (Tune names the file ``searcher-state-*.pkl``; it holds JSON)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"format": "detector-searcher", "version": SEARCHER_STATE_VERSION, "kind": self.kind,
                       **self._state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        storage, experiment, _ = _DRIVEN.get(self.kind, (self.storage_url, "", True))
        named = str(Path(experiment) / Path(checkpoint_path).name) if experiment else checkpoint_path
        try:
            state = _read_searcher_state(checkpoint_path, named)
            self._check_state(named, state)
            if not storage:
                raise ValueError(f"{named}: {self.keeps} kept in memory only; nothing to resume from")
        except ValueError as e:
            self.unrestored = str(e)  # Tune logs a failed restore and starts over: suggest refuses (below)
            raise
        # the saved URL is where the studies were when the experiment began, perhaps another folder's
        self.storage_url = storage
        self._load_state(state)
        self.unrestored = None

    # Tune pickles the searcher with its experiment (tuner.pkl), studies and all; the studies hold the
    # storage of the folder the search began in. Read back by a driver that restores the experiment, a
    # searcher opens its studies in ``restore`` only, from the current folder's storage, and until then
    # suggests nothing: where Tune failed to restore the experiment it would start it over, asking the old
    # studies (maybe another run folder's) for new trials. Read back anywhere else, it is a new search sent
    # whole to where Tune's loop runs (through Ray Client, the cluster): it opens its studies at once.
    unrestored: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("studies", "study")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k not in ("studies", "study")})
        if _DRIVEN.get(self.kind, ("", "", False))[2]:
            self.unrestored = ("Tune could not restore the search's saved state (its log above says why); the "
                               "search is not started over in studies that hold trials already: start a new "
                               "--out folder")
        else:
            self.unrestored = None
            self._open_studies()

    def _open_studies(self) -> None:
        """Open the studies from ``storage_url`` (a new search's: empty, or as this searcher left them)."""
        raise NotImplementedError

    def _check_restored(self) -> None:
        if self.unrestored:
            raise ValueError(self.unrestored)


class SparsitySearcher(StudySearcher):
    """One Optuna study per sparsity inside a single Tune experiment.

    ``suggest`` picks the sparsity with the fewest trials handed out so far (round-robin), asks that
    sparsity's ``OptunaSearch`` for parameters and adds ``sparsity`` (and the trial's number within its
    search, ``trial``) to the trial's config. Results and completions go back to the study that proposed the
    trial, so each study only ever sees its own trials, exactly as if the four searches ran as four
    separate experiments.

    Every study lives in an Optuna storage (``storage``: a journal file on the run folder, or an RDB URL),
    and the searcher's own state is saved as JSON: which Tune trial is which Optuna trial of which study, and
    the samplers' random states. Nothing is pickled, and a resumed search goes on with the same studies.

    >>> from ray import tune
    >>> s = SparsitySearcher([0.1, 0.2], trials_per_sparsity=2,
    ...                      space={"lr": tune.loguniform(1e-6, 1e-4)}, metric="val_accuracy", seed=0)
    >>> s.suggest("t1")["sparsity"], s.suggest("t2")["sparsity"]
    (0.1, 0.2)
    """

    kind = "sparsity"

    def __init__(
        self,
        sparsities: Sequence[float],
        *,
        trials_per_sparsity: int,
        space: dict[str, Any],
        metric: str,
        mode: str = "max",
        seed: int = 0,
        tpe_startup_trials: int = 10,
        storage: str | None = None,
        study_prefix: str = "",
    ) -> None:
        super().__init__(space=space, metric=metric, mode=mode, seed=seed, tpe_startup_trials=tpe_startup_trials,
                         storage=storage)
        self.sparsities = [float(s) for s in sparsities]
        self.trials_per_sparsity = trials_per_sparsity
        self.study_prefix = study_prefix
        self.trial_sparsity: dict[str, float] = {}
        self.trial_number: dict[str, int] = {}  # Tune trial -> its number within its sparsity's search
        self.studies = self._make_studies()

    def study_name(self, sparsity: float) -> str:
        return f"{self.study_prefix}sparsity-{sparsity:g}"

    def _open_studies(self) -> None:
        self.studies = self._make_studies()

    def _make_studies(self) -> dict[float, OptunaSearch]:
        storage = self._storage()
        return {s: self._new_study(self.study_name(s), seed=self.seed + i, metric=self._metric, mode=self._mode,
                                   storage=storage)
                for i, s in enumerate(self.sparsities)}

    def _launched(self, sparsity: float) -> int:
        return sum(1 for s in self.trial_sparsity.values() if s == sparsity)

    def suggest(self, trial_id: str) -> dict | None:
        self._check_restored()
        if trial_id in self.trial_sparsity:
            sparsity = self.trial_sparsity[trial_id]
        else:
            open_ = [s for s in self.sparsities if self._launched(s) < self.trials_per_sparsity]
            if not open_:
                return Searcher.FINISHED
            sparsity = min(open_, key=lambda s: (self._launched(s), self.sparsities.index(s)))
            self.trial_sparsity[trial_id] = sparsity
            self.trial_number[trial_id] = self._launched(sparsity)
        params = self.studies[sparsity].suggest(trial_id)
        return {**params, "sparsity": sparsity, "trial": self.trial_number[trial_id]}

    def _study_of(self, trial_id: str) -> OptunaSearch | None:
        sparsity = self.trial_sparsity.get(trial_id)
        return None if sparsity is None else self.studies[sparsity]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        study = self._study_of(trial_id)
        if study is not None and trial_id in private_api.trial_map(study) and not result.get("trial_failed"):
            study.on_trial_result(trial_id, result)

    def _state(self) -> dict[str, Any]:
        return {"sparsities": self.sparsities, "trials_per_sparsity": self.trials_per_sparsity,
                "metric": self._metric, "mode": self._mode, "storage": self.storage_url,
                "trial_sparsity": self.trial_sparsity, "trial_number": self.trial_number,
                "studies": {f"{s:g}": study_state(st) for s, st in self.studies.items()}}

    def _check_state(self, checkpoint_path: str, state: dict[str, Any]) -> None:
        if state.get("kind", "sparsity") != "sparsity" or state["sparsities"] != self.sparsities:
            raise ValueError(
                f"{checkpoint_path}: the saved search is over sparsities {state['sparsities']}, "
                f"the config asks for {self.sparsities}; use a new --out folder for a different search"
            )

    def _load_state(self, state: dict[str, Any]) -> None:
        self.trial_sparsity = {str(k): float(v) for k, v in state["trial_sparsity"].items()}
        self.trial_number = {str(k): int(v) for k, v in state.get("trial_number", {}).items()}
        self.studies = self._make_studies()  # the same studies, loaded from the storage
        for s, st in self.studies.items():
            restore_study(st, state["studies"][f"{s:g}"])


class ParetoSearcher(StudySearcher):
    """One multi-objective Optuna study (TPE) over the sparsity and the training parameters, for
    ``search.mode: pareto``; its storage and JSON state work as ``SparsitySearcher``'s."""

    kind = "pareto"
    keeps = "the study was"

    def __init__(self, *, trials: int, space: dict[str, Any], objectives: Sequence[str], seed: int = 0,
                 tpe_startup_trials: int = 10, storage: str | None = None, study_name: str = "pareto") -> None:
        from detector.job.pareto import directions

        super().__init__(space=space, metric=list(objectives), mode=directions(objectives), seed=seed,
                         tpe_startup_trials=tpe_startup_trials, storage=storage)
        self.trials = trials
        self.objectives = list(objectives)
        self.name = study_name
        self.trial_number: dict[str, int] = {}
        self.study = self._make_study()

    def _open_studies(self) -> None:
        self.study = self._make_study()

    def _make_study(self) -> OptunaSearch:
        return self._new_study(self.name, seed=self.seed, metric=self.objectives, mode=list(self._mode),
                               storage=self._storage())

    def suggest(self, trial_id: str) -> dict | None:
        self._check_restored()
        if trial_id not in self.trial_number:
            if len(self.trial_number) >= self.trials:
                return Searcher.FINISHED
            self.trial_number[trial_id] = len(self.trial_number) + 1
        params = self.study.suggest(trial_id)
        return {**params, "sparsity": round(float(params["sparsity"]), 6), "trial": self.trial_number[trial_id]}

    def _study_of(self, trial_id: str) -> OptunaSearch | None:
        return self.study if trial_id in self.trial_number else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # Optuna's multi-objective studies take final values only

    def _state(self) -> dict[str, Any]:
        return {"objectives": self.objectives, "trials": self.trials, "storage": self.storage_url,
                "trial_number": self.trial_number, "study": study_state(self.study)}

    def _check_state(self, checkpoint_path: str, state: dict[str, Any]) -> None:
        if state.get("kind") != "pareto" or state["objectives"] != self.objectives:
            raise ValueError(f"{checkpoint_path}: not a Pareto search over {self.objectives}; use a new --out folder")

    def _load_state(self, state: dict[str, Any]) -> None:
        self.trial_number = {str(k): int(v) for k, v in state["trial_number"].items()}
        self.study = self._make_study()
        restore_study(self.study, state["study"])


def _read_searcher_state(checkpoint_path: str, named: str) -> dict[str, Any]:
    """The state in ``checkpoint_path`` (Tune's copy of the file ``named``, which errors name)."""
    try:
        with open(checkpoint_path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{named}: not the JSON state this searcher writes ({e}): damaged, or from an older "
                         "version; the search cannot resume from it: start a new --out folder") from None
    if not isinstance(state, dict) or state.get("format") != "detector-searcher":
        raise ValueError(f"{named}: not a detector searcher state; start a new --out folder")
    return state


def study_state(search: OptunaSearch) -> dict[str, Any]:
    """One OptunaSearch's state beside its storage, as data: which Tune trial is which Optuna trial, and the
    sampler's random states."""
    return {"study": private_api.study(search).study_name,
            "optuna_trials": {tid: tr.number for tid, tr in private_api.trial_map(search).items()},
            "completed": sorted(private_api.completed(search)), "rng": _rng_state(search)}


def restore_study(search: OptunaSearch, saved: dict[str, Any]) -> None:
    """Give ``search`` (its study just loaded from the storage) the state ``study_state`` saved."""
    study = private_api.study(search)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    trials = {tid: private_api.trial_handle(study, by_number[n])
              for tid, n in saved["optuna_trials"].items() if n in by_number}
    private_api.set_trial_state(search, trials, set(saved["completed"]))
    _set_rng_state(search, saved.get("rng"))
    # An Optuna trial asked for just before the driver died, never handed to Tune: not a result. One whose
    # Tune trial was told complete, still running in the storage: its result was cut off the journal by a
    # repair (``detector.job.repair``), and Tune will not report it again.
    known = set(saved["optuna_trials"].values())
    told = {n for tid, n in saved["optuna_trials"].items() if tid in set(saved["completed"])}
    for t in by_number.values():
        if t.state == optuna.trial.TrialState.RUNNING and (t.number not in known or t.number in told):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            log.warning("study %s: trial %d %s; marked failed", study.study_name, t.number,
                        "lost its result to a journal repair" if t.number in told
                        else "was asked for but never ran (driver stopped)")


def _rng_state(search: OptunaSearch) -> dict[str, Any]:
    """The TPE sampler's random states as data: a resumed search must not draw its first values again."""
    states = {}
    for key, rng in private_api.sampler_rngs(search).items():
        kind, keys, pos, has_gauss, cached = rng.get_state()
        states[key] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return states


def _set_rng_state(search: OptunaSearch, states: dict[str, Any] | None) -> None:
    if not states:
        return
    for key, rng in private_api.sampler_rngs(search).items():
        kind, keys, pos, has_gauss, cached = states[key]
        rng.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
