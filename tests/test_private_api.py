"""Every private attribute of Optuna, OptunaSearch and Ray that the job reads (``detector.job.tune.private_api``)
is where it reads it. An upgrade that moves one fails here, naming it, before a resumed search meets it."""

from __future__ import annotations

import os

import numpy as np
import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from detector.job.tune import private_api
from detector.job.tune.private_api import PrivateApiMoved


def search_with_a_finished_trial() -> OptunaSearch:
    space = OptunaSearch.convert_search_space({"lr": tune.loguniform(1e-6, 1e-4)})
    search = OptunaSearch(space=space, metric="val_accuracy", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    search.suggest("t0")
    search.on_trial_complete("t0", {"val_accuracy": 0.5, "training_iteration": 1})
    return search


def test_optuna_searchs_state_is_where_it_is_read():
    search = search_with_a_finished_trial()
    study = private_api.study(search)
    assert isinstance(study, optuna.Study)
    trials = private_api.trial_map(search)
    assert list(trials) == ["t0"] and isinstance(trials["t0"], optuna.trial.Trial)
    assert private_api.completed(search) == {"t0"}
    rngs = private_api.sampler_rngs(search)
    assert list(rngs) == ["tpe", "random"] and all(isinstance(r, np.random.RandomState) for r in rngs.values())
    (frozen,) = study.get_trials(deepcopy=False)
    assert private_api.trial_handle(study, frozen).number == frozen.number
    private_api.set_trial_state(search, {}, set())
    assert private_api.trial_map(search) == {} and private_api.completed(search) == set()


def test_rays_private_flags_are_where_they_are_read(monkeypatch):
    enabled, variable = private_api.train_v2()
    assert isinstance(enabled, bool) and variable == "RAY_TRAIN_V2_ENABLED"
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with private_api.single_node_ray():
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == before


def _drop(obj, path):
    """Delete the last attribute of ``path`` on ``obj``, as a release that renamed it would."""
    *parents, last = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    if last in vars(obj):
        delattr(obj, last)
    else:  # a property: shadow it on a subclass that raises, as if it were gone
        def missing(self):
            raise AttributeError(last)

        obj.__class__ = type(type(obj).__name__, (type(obj),), {last: property(missing)})


@pytest.mark.parametrize("path, named, read", [
    ("_ot_study", "OptunaSearch._ot_study", private_api.study),
    ("_ot_trials", "OptunaSearch._ot_trials", private_api.trial_map),
    ("_completed_trials", "OptunaSearch._completed_trials", private_api.completed),
    ("_sampler", "OptunaSearch._sampler", private_api.sampler_rngs),
    ("_sampler._rng.rng", "TPESampler._rng.rng", private_api.sampler_rngs),
    ("_sampler._random_sampler._rng.rng", "TPESampler._random_sampler._rng.rng", private_api.sampler_rngs),
    # writing one that moved would only add an attribute that nothing reads
    ("_completed_trials", "OptunaSearch._completed_trials", lambda s: private_api.set_trial_state(s, {}, set())),
])
def test_a_moved_attribute_fails_by_name(path, named, read):
    search = search_with_a_finished_trial()
    _drop(search, path)
    with pytest.raises(PrivateApiMoved, match=rf"^{named.replace('.', '[.]')} is gone"):
        read(search)


def test_a_moved_optuna_trial_id_fails_by_name():
    study = private_api.study(search_with_a_finished_trial())
    frozen = study.get_trials(deepcopy=True)[0]
    del frozen._trial_id
    with pytest.raises(PrivateApiMoved, match=r"FrozenTrial\._trial_id is gone"):
        private_api.trial_handle(study, frozen)


def test_a_moved_module_fails_by_name():
    with pytest.raises(PrivateApiMoved, match=r"the module ray\._private\.no_such_module is gone"):
        private_api._module("ray._private.no_such_module")


def test_tunes_saved_trainable_name_is_where_it_is_read(tmp_path):
    def detector_search(config):
        pass

    tune.Tuner(detector_search, run_config=tune.RunConfig(name="search", storage_path=str(tmp_path)))  # saves tuner.pkl
    assert private_api.saved_trainable_name(str(tmp_path / "search")) == "detector_search"


class Planted:
    """A pickle that runs code when loaded: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tunes_saved_trainable_name_is_read_without_running_what_the_file_holds(tmp_path):
    import pickle

    (tmp_path / "search").mkdir()
    state = {"searcher": Planted(tmp_path / "PWNED"), "__trainable_name": "detector_search@run"}
    (tmp_path / "search" / "tuner.pkl").write_bytes(pickle.dumps(state))
    assert private_api.saved_trainable_name(str(tmp_path / "search")) == "detector_search@run"
    (tmp_path / "search" / "tuner.pkl").write_bytes(pickle.dumps(Planted(tmp_path / "PWNED")))
    assert private_api.saved_trainable_name(str(tmp_path / "search")) is None
    assert not (tmp_path / "PWNED").exists()


def test_tunes_staging_folder_is_named_by_this_process_in_the_block():
    from ray.tune import utils

    second = utils.date_str
    with private_api.staging_of_this_process():
        from ray.tune.utils import date_str  # as Tune's StorageContext imports it when an experiment starts

        assert date_str().endswith(f"_{os.getpid()}") and date_str().startswith(second()[:10])
    assert utils.date_str is second
