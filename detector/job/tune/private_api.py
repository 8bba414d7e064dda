"""Every use of Optuna's, ``OptunaSearch``'s and Ray's private state in the job, and nowhere else.

Saving a search as data (``detector.job.tune.searchers``) needs what ``OptunaSearch`` and Optuna keep to
themselves: which Tune trial is which Optuna trial, which trials are complete, the TPE sampler's random
states, an Optuna trial's storage id. Connecting keeps an embedded Ray on the loopback through one of Ray's
private flags, and a data-parallel trial asks Ray Train's internals whether V2 is on. No release promises
any of these: each is read here through ``_attr``, which names what moved, and tests/test_private_api.py reads
every one on the pinned versions, so an upgrade that moves one fails there, by name, instead of in the middle
of a resumed search.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import optuna
import ray
from ray.tune.search.optuna import OptunaSearch


class PrivateApiMoved(RuntimeError):
    """A private attribute or module the job reads is gone: Optuna or Ray was upgraded past what
    ``detector.job.tune.private_api`` was written for."""


def _moved(what: str) -> PrivateApiMoved:
    return PrivateApiMoved(
        f"{what} is gone in this release (optuna {optuna.__version__}, ray {ray.__version__}); "
        "detector/job/tune/private_api.py reads it: update it for this release, or install the versions "
        "pyproject.toml pins")


def _owner(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, ModuleType) else type(obj).__name__


def _attr(obj: Any, path: str) -> Any:
    """``obj.<path>`` (dotted), or ``PrivateApiMoved`` naming the owner and the whole path."""
    value = obj
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise _moved(f"{_owner(obj)}.{path}") from None
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    _attr(obj, name)  # setattr alone would create a moved attribute silently, and nothing would read it
    setattr(obj, name, value)


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise _moved(f"the module {name}") from None


# -- OptunaSearch and Optuna ---------------------------------------------------------------------------

def study(search: OptunaSearch) -> optuna.Study:
    """The Optuna study behind an ``OptunaSearch``."""
    return _attr(search, "_ot_study")


def trial_map(search: OptunaSearch) -> dict[str, optuna.trial.Trial]:
    """Tune trial id -> the Optuna trial ``search`` asked its study for."""
    return _attr(search, "_ot_trials")


def completed(search: OptunaSearch) -> set[str]:
    """The Tune trial ids whose results ``search`` has told its study."""
    return _attr(search, "_completed_trials")


def set_trial_state(search: OptunaSearch, trials: dict[str, optuna.trial.Trial], done: set[str]) -> None:
    """Give a new ``search`` the ``trial_map`` and ``completed`` trials of the one it resumes."""
    _set(search, "_ot_trials", trials)
    _set(search, "_completed_trials", done)


def sampler_rngs(search: OptunaSearch) -> dict[str, Any]:
    """The TPE sampler's ``numpy.random.RandomState``s, by name: its own (``tpe``) and that of the random
    sampler it uses for its start-up trials (``random``)."""
    sampler = _attr(search, "_sampler")
    return {"tpe": _attr(sampler, "_rng.rng"), "random": _attr(sampler, "_random_sampler._rng.rng")}


def trial_handle(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live ``optuna.trial.Trial`` (what ``tell`` takes) for a trial read back from the storage."""
    return optuna.trial.Trial(study_, _attr(trial, "_trial_id"))


# -- Ray ---------------------------------------------------------------------------------------------------

def rehome_search_state(experiment_dir: Path, storage_fs_path: str) -> bool:
    """Point the search generator's saved experiment at ``storage_fs_path``, where the experiment is restored
    from now; whether a file needed it.

    Tune pickles its ``Experiment`` with the search generator's state (``search_gen_state-*.json``), and the
    trials the generator creates after a restore take their storage from it. Tune moves the trials it
    restores to the experiment's new place itself (``TuneController._restore_trials``), but not this: the
    new trials of a copied run folder would be written into the folder it was copied from.
    """
    import ray.cloudpickle as cloudpickle

    from detector.io import atomic_write_bytes

    changed = False
    for path in sorted(experiment_dir.glob("search_gen_state-*.json")):
        state = cloudpickle.loads(path.read_bytes())
        experiment = state.get("experiment")
        if experiment is None:
            continue
        storages = {id(s): s for s in (_attr(experiment, "storage"), _attr(experiment, "spec").get("storage"))
                    if s is not None}
        stale = [s for s in storages.values() if _attr(s, "storage_fs_path") != storage_fs_path]
        for storage in stale:
            _set(storage, "storage_fs_path", storage_fs_path)
        if stale:
            atomic_write_bytes(path, cloudpickle.dumps(state))
            changed = True
    return changed


class _Inert:
    """What a pickle would build, built as nothing: no class is imported and no code runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        return _Inert


def saved_trainable_name(experiment_path: str) -> str | None:
    """The name of the trainable Tune saved with the experiment at ``experiment_path`` (in ``tuner.pkl``, a
    pickled dict): ``Tuner.restore`` refuses a trainable of another name, and the restored trials look theirs
    up by it. Read without building what the file holds: its searcher, unpickled outside
    ``searchers.driving``, would open the studies of the folder the experiment was made in."""
    internal = _module("ray.tune.impl.tuner_internal")
    fs, fs_path = _attr(_module("ray.train._internal.storage"), "get_fs_and_path")(experiment_path)
    with fs.open_input_file(f"{fs_path}/{_attr(internal, '_TUNER_PKL')}") as f:
        state = _InertUnpickler(io.BytesIO(f.readall())).load()
    name = state.get("__trainable_name") if isinstance(state, dict) else None
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def staging_of_this_process() -> Iterator[None]:
    """Tune's staging folders of the experiments started in the block named by this process as well.

    Tune stages an experiment's state (and its trials' working folders) in the node's Ray session, under
    ``artifacts/<the second the experiment started>/<experiment name>``, and copies that folder up to the
    experiment's storage. Two users' drivers on one head (two jobs of one cluster) that start a stage of the
    same name in the same second would share it: each would copy the other's experiment state into its own
    run folder. The second alone names it; here the driver's pid is added (``2026-12-07_11-02-03_4242``).
    """
    utils = _module("ray.tune.utils")
    second = _attr(utils, "date_str")  # what ray.train._internal.storage.StorageContext imports when made
    pid = os.getpid()
    utils.date_str = lambda: f"{second()}_{pid}"
    try:
        yield
    finally:
        utils.date_str = second


def train_v2() -> tuple[bool, str]:
    """Whether Ray Train's V2 API is on, and the environment variable that turns it off."""
    constants = _module("ray.train.v2._internal.constants")
    return bool(_attr(constants, "is_v2_enabled")()), _attr(constants, "V2_ENABLED_ENV_VAR")


def set_tune_verbosity(tuner: Any, verbose: int) -> None:
    """Tune's console ``verbose`` for a restored ``tuner``: ``Tuner.restore`` brings back the saved run's, and
    takes no ``RunConfig``. Through Ray Client the tuner lives on the cluster and keeps the saved one."""
    local = _attr(tuner, "_local_tuner")
    if local is not None:
        local.get_run_config().verbose = verbose


@contextlib.contextmanager
def single_node_ray() -> Iterator[None]:
    """Ray with multi-node clusters off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), for a ``ray.init`` that
    starts one: its servers then take 127.0.0.1 for the node's address.

    The processes ``ray.init`` starts read the variable at start (and the workers the raylet starts later
    inherit it); this process imported Ray already, so its own copy of the flag is set too, for the start
    only.
    """
    constants = _module("ray._private.ray_constants")
    name = _attr(constants, "ENABLE_RAY_CLUSTERS_ENV_VAR")
    saved_env, saved_flag = os.environ.get(name), _attr(constants, "ENABLE_RAY_CLUSTER")
    os.environ[name], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env
