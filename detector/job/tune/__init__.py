"""The job on Ray Tune: the one package that imports Ray.

Every stage runs as a Tune experiment, so that each piece of training lands on a worker with the resources
it asked for (the head of a shared cluster takes no trials), restarts from its last checkpoint when its
worker dies, and resumes when the driver dies:

- ``baseline``: one trial that trains the baseline;
- ``search``: all sparsities' Optuna searches in ONE experiment. Tune does not support several experiments
  on one cluster at once (its FAQ on multi-tenancy), and an experiment has one searcher for all its trials
  (ray-project/ray#21329), so a ``SparsitySearcher`` keeps one Optuna study (through ``OptunaSearch``) per
  sparsity and hands out trials round-robin; the four searches then share the cluster and run concurrently
  (with ``search.control``, the dense control's search at sparsity 0 is a fifth beside them);
- ``finetune``: one trial per sparsity with its best parameters (0: the control, ``dense-ft``);
- ``evaluate``: one trial per model, named by it (``baseline``, ``dense-ft``, ``prune-40``).

The work itself is done by ``detector.job.stages`` (Ray-free); the trainables only translate between Tune
(config, checkpoints, reports) and those functions. The modules, one job each:

- ``searchers``: the Optuna searchers and their state as data;
- ``schedulers``: ASHA for the search, the dense control's trials in rungs of their own;
- ``trainables``: what a trial runs (in its own process, or as the driver of a Ray Train run), by stage;
- ``live_status``: the live trial table of a running experiment, and stopping it;
- ``trial_rows``: a trial's name and rows (status table, search results), each built in one place;
- ``experiments``: running (or resuming) a stage's experiment, and what each stage returns;
- ``cluster``: connecting to Ray, and the environment Tune runs with;
- ``private_api``: every read of Optuna's or Ray's private state.

Importing this package changes nothing in the process: Tune's settings are applied by ``connect`` and
``run_experiment``.
"""

from detector.job.tune.cluster import ClusterInfo, connect, env_default, private_token, shutdown
from detector.job.tune.experiments import (
    run_baseline,
    run_evaluate,
    run_experiment,
    run_finetune,
    run_pareto,
    run_search,
    search_pending,
)
from detector.job.tune.live_status import LiveStatus
from detector.job.tune.live_status import StageSink as _Sink
from detector.job.tune.searchers import ParetoSearcher, SparsitySearcher, optuna_storage
from detector.job.tune.trainables import StageContext, replaced_trainables, trainable
from detector.job.tune.trial_rows import trial_name as _trial_label
from detector.job.tune.trial_rows import trial_row

# LiveStatus, _Sink, _trial_label and the searchers are also here because Tune's saved state (tuner.pkl)
# names what it pickled by module, and a run folder started before this package was split says
# ``detector.job.tune.<name>``: these keep such a run resumable.

__all__ = [
    "ClusterInfo",
    "LiveStatus",
    "ParetoSearcher",
    "SparsitySearcher",
    "StageContext",
    "connect",
    "env_default",
    "optuna_storage",
    "private_token",
    "replaced_trainables",
    "run_baseline",
    "run_evaluate",
    "run_experiment",
    "run_finetune",
    "run_pareto",
    "run_search",
    "search_pending",
    "shutdown",
    "trainable",
    "trial_row",
]
