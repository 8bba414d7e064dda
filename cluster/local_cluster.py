"""A local multi-node Ray cluster for development: a head and N workers on this machine.

Each node is one ``ray start --block`` process in a session of its own, with its own ports, and the whole
cluster has its own temp dir and its own auth token, so it never meets another Ray instance on the machine.
``up`` writes a state file with the nodes' process ids; ``down`` stops exactly those processes (and what
they started), never anything else: this script never runs ``ray stop``, which would stop every Ray on
the machine.

    python cluster/local_cluster.py up --workers 2 --cpus-per-worker 1
    # prints the addresses, the state file, and the environment `ray job submit` needs:
    export RAY_ADDRESS=http://127.0.0.1:PORT RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/.../auth_token
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/run.py --config jobs/configs/demo.yaml --out runs/demo --address auto
    python cluster/local_cluster.py down --state /tmp/.../cluster.json

The head takes no tasks by default (``--head-cpus 0``), as on Kubernetes: trials run on the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detector.io import atomic_write_json, atomic_write_text

HOST = "127.0.0.1"  # the dashboard, and where free ports are looked for
# Ray puts Unix sockets under <temp-dir>/<node>/session_<date>_<pid>/sockets/ (~75 characters) and Linux
# allows 107 characters in a socket path, so a longer temp dir fails later with an obscure error.
MAX_TEMP_DIR_CHARS = 32
# The ports of one node that Ray would otherwise take from fixed defaults (52365, 6379, 8265, 10001, ...).
NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)
HEAD_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port")


def node_ip(index: int) -> str:
    """The loopback address of node ``index`` (0 = head): 127.0.0.2, 127.0.0.3, ...

    Linux answers on all of 127/8. Not 127.0.0.1: Ray swaps that for the machine's network address, and
    the cluster must stay on the loopback. One address per node keeps the nodes apart as on real machines.
    """
    return f"127.0.0.{index + 2}"


class ClusterError(RuntimeError):
    """The local cluster could not be started or stopped; the message says which node and why."""


@dataclass(frozen=True)
class NodeProcess:
    name: str  # "head", "worker-1", ...
    pid: int  # the `ray start --block` process; it leads a session of its own (sid == pid)
    start_ticks: int  # /proc/<pid>/stat field 22: tells this process from a later one with the same pid
    log: str
    ports: dict[str, int]


@dataclass(frozen=True)
class LocalCluster:
    temp_dir: str
    gcs_address: str  # for `ray start --address` and `ray.init(address=...)`
    dashboard_url: str  # for `ray job submit` / JobSubmissionClient
    client_address: str  # ray://, for Ray Client
    token_path: str
    nodes: tuple[NodeProcess, ...]
    # Every process of the cluster's sessions when `up` returned (raylets, GCS, dashboard, agents):
    # `down` checks they are gone too.
    processes: dict[int, int] = field(default_factory=dict)  # pid -> start_ticks

    def env(self) -> dict[str, str]:
        """The environment that lets the Ray CLI and JobSubmissionClient reach and authenticate to it."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
        }

    def token(self) -> str:
        return Path(self.token_path).read_text().strip()


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on the loopback now (bound at once so the kernel gives n different ones)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start ticks) of a live process, or None if there is none (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state, ppid, sid, start = fields[0], int(fields[1]), int(fields[3]), int(fields[19])
    if state in ("Z", "X"):
        return None
    return state, ppid, sid, start


def is_running(pid: int, start_ticks: int) -> bool:
    """True while the process that had this pid and start time is alive (a reused pid does not count)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[3] == start_ticks


def _session_members(sids: set[int]) -> dict[int, int]:
    """pid -> start ticks of every live process in the given sessions."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[2] in sids:
                members[int(entry.name)] = stat[3]
    return members


def _ray_executable() -> str:
    # The `ray` beside this Python, so the nodes run the same Ray as the caller, venv or not.
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError(f"no `ray` executable beside {sys.executable} or on PATH: pip install 'ray[default]'")
    return found


def _node_env(token_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # Jobs run `python ...`: make that the caller's Python (the venv with the project installed).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    # A token in the caller's environment would override the file and split the cluster in two.
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _start_node(name: str, args: list[str], env: dict[str, str], log_dir: Path, ports: dict[str, int]) -> NodeProcess:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [_ray_executable(), "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # A session of its own: `down` can find everything this node started, and only that.
            start_new_session=True,
        )
    stat = _proc_stat(proc.pid)
    if stat is None:
        raise ClusterError(f"{name}: `ray start` exited at once; see {log}")
    return NodeProcess(name=name, pid=proc.pid, start_ticks=stat[3], log=str(log), ports=ports)


def _get_json(url: str, token: str, timeout: float = 5.0) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def alive_node_count(dashboard_url: str, token: str) -> int:
    """Nodes the cluster's state API reports alive (0 while the dashboard is not up yet)."""
    try:
        body = _get_json(f"{dashboard_url}/api/v0/nodes?limit=1000", token)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return 0
    nodes = body.get("data", {}).get("result", {}).get("result", [])
    return sum(1 for node in nodes if node.get("state") == "ALIVE")


def _check_started(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        if not is_running(node.pid, node.start_ticks):
            tail = Path(node.log).read_text(errors="replace")[-2000:]
            raise ClusterError(f"{node.name} (pid {node.pid}) exited while starting; end of {node.log}:\n{tail}")


def up(
    *,
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: int = 0,
    head_cpus: int = 0,
    object_store_mb: int = 100,
    temp_dir: str | Path | None = None,
    state_path: str | Path | None = None,
    timeout_s: float = 120.0,
) -> LocalCluster:
    """Start a head and ``workers`` worker nodes, wait until all are alive, and write the state file.

    On any failure the nodes already started are stopped before the error is raised.
    """
    if workers < 0:
        raise ClusterError(f"--workers must be >= 0, got {workers}")
    if object_store_mb < 80:
        raise ClusterError(f"--object-store-mb must be >= 80 (Ray's minimum is 75 MiB), got {object_store_mb}")
    temp = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))
    temp = temp.resolve()
    if len(str(temp)) > MAX_TEMP_DIR_CHARS:
        raise ClusterError(
            f"--temp-dir {temp} is {len(str(temp))} characters; Ray's socket paths under it would pass the "
            f"107-character limit of Unix sockets: use one of at most {MAX_TEMP_DIR_CHARS} (e.g. /tmp/dray-x)"
        )
    state = Path(state_path) if state_path else temp / "cluster.json"
    if state.exists():
        raise ClusterError(f"{state} exists: a cluster may be running; run `down --state {state}` first")
    log_dir = temp / "launcher-logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    token_path = temp / "auth_token"
    atomic_write_text(token_path, secrets.token_hex(32), private=True)
    env = _node_env(token_path)

    object_store = str(object_store_mb * 1024 * 1024)
    common = ["--object-store-memory", object_store, "--disable-usage-stats",
              "--min-worker-port", "0", "--max-worker-port", "0"]

    # All ports at once: probing again after a node started could get back a port that node has not
    # bound yet.
    n_head, n_node = len(HEAD_PORT_FLAGS) + len(NODE_PORT_FLAGS), len(NODE_PORT_FLAGS)
    ports = iter(_free_ports(n_head + workers * n_node))
    head_ports = {flag: next(ports) for flag in HEAD_PORT_FLAGS + NODE_PORT_FLAGS}
    worker_ports = [{flag: next(ports) for flag in NODE_PORT_FLAGS} for _ in range(workers)]
    gcs_address = f"{node_ip(0)}:{head_ports['port']}"
    dashboard_url = f"http://{HOST}:{head_ports['dashboard-port']}"
    nodes: list[NodeProcess] = []
    try:
        head_args = ["--head", "--node-ip-address", node_ip(0), "--temp-dir", str(temp / "head"),
                     "--num-cpus", str(head_cpus), "--num-gpus", "0",
                     "--include-dashboard", "true", "--dashboard-host", HOST, *common]
        head_args += [f"--{flag}={port}" for flag, port in head_ports.items()]
        nodes.append(_start_node("head", head_args, env, log_dir, head_ports))
        # Workers join through the GCS, so it must be listening first.
        _wait(lambda: _port_open(node_ip(0), head_ports["port"]), nodes, timeout_s, f"the head's GCS on {gcs_address}")

        for i, ports_i in enumerate(worker_ports, start=1):
            worker_args = ["--address", gcs_address, "--node-ip-address", node_ip(i),
                           "--temp-dir", str(temp / f"worker-{i}"), "--num-cpus", str(cpus_per_worker),
                           "--num-gpus", str(gpus_per_worker), *common]
            worker_args += [f"--{flag}={port}" for flag, port in ports_i.items()]
            nodes.append(_start_node(f"worker-{i}", worker_args, env, log_dir, ports_i))

        token = token_path.read_text().strip()
        _wait(lambda: alive_node_count(dashboard_url, token) >= workers + 1, nodes, timeout_s,
              f"{workers + 1} alive nodes on {dashboard_url}")
    except BaseException:
        _stop(nodes, {}, timeout_s=30)
        raise

    cluster = LocalCluster(
        temp_dir=str(temp),
        gcs_address=gcs_address,
        dashboard_url=dashboard_url,
        client_address=f"ray://{HOST}:{head_ports['ray-client-server-port']}",
        token_path=str(token_path),
        nodes=tuple(nodes),
        processes=_session_members({n.pid for n in nodes}),
    )
    atomic_write_json(state, asdict(cluster))
    return cluster


def _port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait(ready, nodes: list[NodeProcess], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        _check_started(nodes)
        if time.monotonic() > deadline:
            logs = ", ".join(n.log for n in nodes)
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs: {logs}")
        time.sleep(0.5)


def load(state_path: str | Path) -> LocalCluster:
    path = Path(state_path)
    try:
        raw = json.loads(path.read_text())
        nodes = tuple(NodeProcess(**n) for n in raw.pop("nodes"))
        processes = {int(pid): ticks for pid, ticks in raw.pop("processes").items()}
        return LocalCluster(**raw, nodes=nodes, processes=processes)
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such state file (was the cluster started with `up --state {path}`?)")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClusterError(f"{path}: not a state file written by `up`: {e}") from e


def _stop(nodes: list[NodeProcess] | tuple[NodeProcess, ...], processes: dict[int, int], timeout_s: float) -> list[int]:
    """Stop the nodes and what they started; returns the pids still alive afterwards (empty on success)."""
    sids = {n.pid for n in nodes}
    # Workers first, so the head does not spend the grace period reporting them dead.
    for node in reversed(nodes):
        if is_running(node.pid, node.start_ticks):
            os.kill(node.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM

    def remaining() -> dict[int, int]:
        ours = {pid: t for pid, t in processes.items() if is_running(pid, t)}
        ours.update({n.pid: n.start_ticks for n in nodes if is_running(n.pid, n.start_ticks)})
        # Processes started after `up` (Ray workers, job drivers) are found by session: a session id
        # is never reused while any process of the session lives, so these are all ours.
        ours.update(_session_members(sids))
        return ours

    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout_s / 2
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.25)
        left = remaining()
        if not left:
            return []
        for pid, ticks in left.items():
            if is_running(pid, ticks):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
    time.sleep(0.5)
    return sorted(remaining())


def down(state_path: str | Path, *, timeout_s: float = 30.0, remove_temp_dir: bool = False) -> None:
    """Stop exactly the processes recorded in the state file (and those they started), then remove it."""
    cluster = load(state_path)
    left = _stop(cluster.nodes, cluster.processes, timeout_s)
    if left:
        raise ClusterError(f"processes {left} of the cluster in {state_path} are still alive after SIGKILL")
    Path(state_path).unlink()
    if remove_temp_dir:
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a head and N workers; print the addresses and the state file")
    p_up.add_argument("--workers", type=int, default=2)
    p_up.add_argument("--cpus-per-worker", type=int, default=1)
    p_up.add_argument("--gpus-per-worker", type=int, default=0)
    p_up.add_argument("--head-cpus", type=int, default=0, help="0 (default): the head takes no tasks")
    p_up.add_argument("--object-store-mb", type=int, default=100, help="per node")
    p_up.add_argument("--temp-dir", help=f"Ray's temp dir (at most {MAX_TEMP_DIR_CHARS} characters); default: a new /tmp/dray-*")
    p_up.add_argument("--state", help="state file; default: <temp-dir>/cluster.json")
    p_up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the nodes")
    p_down = sub.add_parser("down", help="stop exactly the processes recorded in the state file")
    p_down.add_argument("--state", required=True)
    p_down.add_argument("--timeout", type=float, default=30.0)
    p_down.add_argument("--remove-temp-dir", action="store_true", help="also delete the temp dir and its logs")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            cluster = up(
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                gpus_per_worker=args.gpus_per_worker,
                head_cpus=args.head_cpus,
                object_store_mb=args.object_store_mb,
                temp_dir=args.temp_dir,
                state_path=args.state,
                timeout_s=args.timeout,
            )
            state = args.state or str(Path(cluster.temp_dir) / "cluster.json")
            print(f"address: {cluster.gcs_address}")
            print(f"dashboard: {cluster.dashboard_url}")
            print(f"client: {cluster.client_address}")
            print(f"nodes: " + " ".join(f"{n.name}={n.pid}" for n in cluster.nodes))
            print(f"state: {state}")
            print("export " + " ".join(f"{k}={v}" for k, v in cluster.env().items()))
        else:
            down(args.state, timeout_s=args.timeout, remove_temp_dir=args.remove_temp_dir)
            print(f"stopped the cluster of {args.state}")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
