"""Connecting to Ray (a running cluster, or an embedded one that only this user can reach), and the
environment Tune runs with. Nothing here changes the process when it is imported: Tune's settings are
applied when a driver connects or starts an experiment (``apply_tune_defaults``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ray

import detector.job.tune.private_api as private_api
from detector.job.experiment import TRAINING_STAGES, ExperimentConfig
from detector.job.tune.progress import VERBOSE_ENV

log = logging.getLogger(__name__)

# Tune's settings for this job, unless the user set them. Tune reads them where its loop runs, when an
# experiment starts; through Ray Client that is on the cluster, so they travel with the connection.
TUNE_DEFAULTS = {
    # Tune's own TensorBoard logger would write a second copy of every scalar beside ours (detector.train
    # writes one TensorBoard run per trial under RUN/tensorboard); CSV and JSON stay, the ResultGrid needs them.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # The driver handles SIGINT itself (detector.job.stop): the whole job stops, not only the running experiment.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Every trial checkpoints every epoch and keeps one checkpoint, which forces an experiment snapshot each
    # time; with several trials per minute Tune warns that snapshots come often. They are cheap here (small
    # JSON state): the warning says nothing a user can act on.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's older console output, whose verbose=0 is silent (the newer one prints a boxed table at each
    # experiment's start whatever the verbosity) and whose CLIReporter takes the columns to show: the run shows
    # its own progress (detector.job.tune.progress), and Tune's tables with `detector -v`.
    "RAY_AIR_NEW_OUTPUT": "0",
}


def apply_tune_defaults() -> None:
    """Set ``TUNE_DEFAULTS`` in this process's environment where the user has not set them (they stay, as
    Ray's own settings do: a Ray this call starts passes them on to its processes)."""
    for name, value in TUNE_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def env_default(name: str, value: str) -> Iterator[None]:
    """Set an environment variable unless the user did, for one experiment only: a later experiment in
    the same process (a notebook, the test suite) must not inherit this one's value."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    embedded: bool


def private_token() -> Path | None:
    """Make the token an embedded Ray authenticates with readable by this user only; its path, or None
    where token authentication is off or the token comes from the environment.

    Ray 2.60, starting a local cluster without a token, writes ``~/.ray/auth_token`` with a plain
    ``open()``: 0644 under the usual umask, so every user of a shared host could read it and run code on
    the cluster. The token is written here first instead, 0600 from the start (Ray then finds and uses
    it), and an existing one of ours is made 0600.
    """
    import secrets

    from detector.io import create_text

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not create_text(path, secrets.token_hex(32), private=True):  # Ray's own format: 256 random bits
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            log.warning("%s was readable by others (mode %o); made it 0600", path, st.st_mode & 0o777)
            os.chmod(path, 0o600)
    return path


def _start_embedded(exp: ExperimentConfig, job_config: Any) -> Any:
    """Start an embedded Ray whose servers (GCS, raylet, object manager, workers, agents) listen on
    127.0.0.1 only, with a token only this user can read.

    Ray binds them to the node's address, and takes 127.0.0.1 for it only where multi-node clusters are
    off (``private_api.single_node_ray``, its default on macOS and Windows); on Linux it picks the machine's
    network address, and the GCS and raylet then listen on every interface. tests/test_embedded_ray.py
    checks the listening addresses, so a Ray release that changes this shows.
    """
    private_token()
    with private_api.single_node_ray():
        return ray.init(
            # "local": always a new in-process cluster, never one that `ray start` left on this machine
            address="local",
            num_cpus=exp.resources.local_num_cpus or None,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            job_config=job_config,
        )


def _client_init(address: str, env: dict[str, str], attempts: int = 3) -> Any:
    """``ray.init`` through Ray Client, tried again when the head's proxy could not start this client's
    server: Ray's proxier reports ``Initialization failure from server`` when that process exits while it
    starts (seen on a loaded 2-core machine: psutil's ZombieProcess), and a new connection gets a new one.
    A failed attempt has already disconnected (``ray.util.client``), so the next one starts clean."""
    for attempt in range(1, attempts):
        try:
            return ray.init(address=address, runtime_env={"env_vars": env})
        except ConnectionAbortedError as e:
            log.warning("Ray Client: the head could not start a server for this driver (attempt %d of %d): "
                        "%s; trying again", attempt, attempts, str(e).splitlines()[0])
            time.sleep(2.0 * attempt)
    return ray.init(address=address, runtime_env={"env_vars": env})


def connect(address: str | None, exp: ExperimentConfig, *, job_name: str = "detector") -> ClusterInfo:
    """Join a running cluster (``address``: "auto", "ray://HOST:10001", or RAY_ADDRESS set, as under
    ``ray job submit``), or start an embedded local Ray sized by ``resources.local_num_cpus``, on the
    loopback only and with a token only this user can read."""
    apply_tune_defaults()
    # `embedded`: this call starts Ray, so the pipeline shuts it down at the end (a Ray the caller started,
    # or a cluster, is left alone).
    embedded = address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    # The Ray dashboard's Jobs table names a job by its metadata's job_name.
    job_config = ray.job_config.JobConfig(metadata={"job_name": job_name})
    if ray.is_initialized():
        ctx = None
    elif embedded:
        ctx = _start_embedded(exp, job_config)
    elif address and address.startswith("ray://"):
        # Through Ray Client the Tune driver runs on the cluster, not here: Tune's settings travel with it
        # (and -v's, for the trials' processes).
        env = {k: v for k, v in os.environ.items() if k.startswith("TUNE_") or k in TUNE_DEFAULTS or k == VERBOSE_ENV}
        env.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(len(exp.search.sparsities)))
        # (Ray Client cannot carry a JobConfig: the job keeps the client's default name)
        ctx = _client_init(address, env)
    else:
        ctx = ray.init(address=address, job_config=job_config)
    resources = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    dashboard = None
    if ctx is not None and getattr(ctx, "dashboard_url", None):
        dashboard = ctx.dashboard_url if "://" in ctx.dashboard_url else f"http://{ctx.dashboard_url}"
    _check_gpus(exp, resources, embedded)
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address, dashboard_url=dashboard, resources=resources,
        embedded=embedded,
    )


def _check_gpus(exp: ExperimentConfig, resources: dict[str, float], embedded: bool) -> None:
    """Refuse GPU trials on an embedded Ray without a GPU (they would wait forever); on a cluster, say that
    they wait for the autoscaler."""
    stage, gpus = max(((s, exp.resources.stage(s).gpus_per_trial) for s in (*TRAINING_STAGES, "evaluate")),
                      key=lambda x: x[1])
    if gpus > 0 and resources.get("GPU", 0.0) < gpus:
        if embedded:
            from detector.config import ConfigError

            key = exp.resources.key(stage, "gpus_per_trial")
            raise ConfigError(
                f"{key}={gpus:g} but this machine's Ray has no GPU; "
                f"run with --set {key}=0 (and a small cpus_per_trial) on a CPU machine"
            )
        log.warning("the cluster has %s GPU(s) now; trials wait for GPU workers (autoscaler)",
                    resources.get("GPU", 0.0))


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
