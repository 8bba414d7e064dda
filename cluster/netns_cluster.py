"""A multi-host Ray cluster on this machine: a head and N workers, each a "host" of its own (root only).

Each host has its own network namespace with its own address (a veth pair on a bridge of this cluster), its
own hostname, its own ``/tmp`` and ``/dev/shm`` (a mount namespace), and Ray's default ports, as pods on
different machines have. Hosts share only what pods of a real cluster share: the paths given as
``--share`` (the run folders' volume standing in for the PVC, the data, the code and its venv as the image
would hold them). Nodes start with the ``ray start`` arguments that KubeRay builds from the pod templates in
``k8s/base/raycluster.yaml`` (``kuberay_start_args``). Faults are made as a cluster meets them:

    python cluster/netns_cluster.py up --root /srv/ncl --workers 2 --share /srv/runs --state /srv/ncl.json
    export RAY_ADDRESS=http://10.236.0.2:8265 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...   # printed by `up`
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/run.py ... --address auto
    python cluster/netns_cluster.py cut --state /srv/ncl.json worker-1        # its link down; it runs on
    python cluster/netns_cluster.py reconnect --state /srv/ncl.json worker-1
    python cluster/netns_cluster.py kill --state /srv/ncl.json head           # every process on the host
    python cluster/netns_cluster.py down --state /srv/ncl.json

``down`` stops exactly the processes inside the cluster's own namespaces, then removes the namespaces and
the bridge. Nothing here talks to an address outside the namespaces it made.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RAYCLUSTER = REPO / "k8s" / "base" / "raycluster.yaml"
# Subnets 10.236.<n>.0/24; the allocation lock keeps two clusters started at once (two test workers) apart.
SUBNET_BASE = "10.236"
ALLOC_LOCK = Path("/run/detector-netns.lock")
GCS_PORT, DASHBOARD_PORT = 6379, 8265  # Ray's defaults, as on a KubeRay head


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", Path(__file__).with_name("local_cluster.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("local_cluster", module)
    spec.loader.exec_module(module)
    return module


_local = _load_local_cluster()
ClusterError = _local.ClusterError


@dataclass(frozen=True)
class Host:
    name: str  # "head", "worker-1", ...
    hostname: str  # what the host's processes see: "<cluster>-head", as a pod's name
    netns: str
    address: str
    link: str  # the root side of its veth: set down, the host is cut off and runs on
    root: str  # the host's own disk: its /tmp and the `ray start` log


@dataclass(frozen=True)
class NetnsCluster:
    name: str
    bridge: str
    gateway: str  # the bridge's address: where the caller (the operator's shell) reaches the hosts from
    hosts: tuple[Host, ...]
    shared: tuple[str, ...]
    token_path: str
    cpus_per_worker: int

    @property
    def head(self) -> Host:
        return self.hosts[0]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise ClusterError(f"cluster {self.name} has no host {name!r}: {', '.join(h.name for h in self.hosts)}")

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    def env(self) -> dict[str, str]:
        """What `ray job submit` / JobSubmissionClient need to reach and authenticate to the head."""
        return {"RAY_ADDRESS": self.dashboard_url, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def token(self) -> str:
        return Path(self.token_path).read_text().strip()


def kuberay_start_args(role: str, *, head_address: str = "", num_cpus: int = 0, num_gpus: int = 0) -> list[str]:
    """The `ray start` arguments KubeRay gives a pod of ``role`` ("head" or "worker"): its fixed ones, then the
    group's ``rayStartParams`` from k8s/base/raycluster.yaml; num-cpus/num-gpus, which KubeRay reads from the
    container's limits, are this host's unless the template sets them."""
    spec = next(d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d and d.get("kind") == "RayCluster")["spec"]
    if role == "head":
        params = dict(spec["headGroupSpec"].get("rayStartParams") or {})
        fixed = ["--head", f"--port={GCS_PORT}", "--dashboard-host=0.0.0.0"]
    else:
        params = dict(spec["workerGroupSpecs"][0].get("rayStartParams") or {})
        fixed = [f"--address={head_address}"]
    params.setdefault("num-cpus", str(num_cpus))
    params.setdefault("num-gpus", str(num_gpus))
    fixed += ["--block", "--metrics-export-port=8080", "--dashboard-agent-listen-port=52365"]
    return fixed + [f"--{key}={value}" for key, value in sorted(params.items())]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _free_subnet() -> int:
    used = _ip("-o", "-4", "addr").stdout
    for n in range(256):
        if f" {SUBNET_BASE}.{n}." not in used:
            return n
    raise ClusterError(f"no free subnet {SUBNET_BASE}.N.0/24 left")


def _make_network(name: str, n_hosts: int) -> tuple[str, str, list[tuple[str, str, str]]]:
    """The bridge (with the gateway address) and one namespace per host, each with its veth on the bridge."""
    with open(ALLOC_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        net = _free_subnet()
        bridge, gateway = f"{name}-br", f"{SUBNET_BASE}.{net}.1"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
    ends = []
    for i in range(n_hosts):
        netns, link, address = f"{name}-h{i}", f"{name}-v{i}", f"{SUBNET_BASE}.{net}.{i + 2}"
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", link, "master", bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        ends.append((netns, link, address))
    return bridge, gateway, ends


# Run as the host's first process: its hostname, then its own /tmp (with the shared paths that live under
# /tmp bound back in at their own paths) and /dev/shm, then the command.
_HOST_INIT = """set -e
hostname "$1"; private="$2"; shift 2
while [ "$1" != -- ]; do rel="${1#/tmp}"; mkdir -p "$private$rel"; mount --bind "$1" "$private$rel"; shift; done; shift
mount --rbind "$private" /tmp
mount -t tmpfs -o size=2g tmpfs /dev/shm
exec "$@"
"""


def host_command(cluster: NetnsCluster, host: Host, argv: list[str]) -> list[str]:
    """``argv`` as run on ``host``: in its network, mount and hostname namespaces."""
    private = str(Path(host.root) / "tmp")
    under_tmp = [p for p in cluster.shared if Path(p).is_relative_to("/tmp")]
    return ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", _HOST_INIT, "host-init", host.hostname, private, *under_tmp,
            "--", *argv]


def _host_env(cluster: NetnsCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token(), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


@dataclass(frozen=True)
class NodeProcess:
    host: str
    pid: int
    start_ticks: int
    log: str


def start_node(cluster: NetnsCluster, host: Host) -> NodeProcess:
    """``ray start --block`` on ``host`` (the head or a worker joining it), as KubeRay's pod command."""
    if host.name == "head":
        args = kuberay_start_args("head", num_cpus=0)
    else:
        args = kuberay_start_args("worker", head_address=cluster.gcs_address, num_cpus=cluster.cpus_per_worker)
    args += [f"--node-ip-address={host.address}", "--object-store-memory=100000000", "--disable-usage-stats"]
    log = Path(host.root) / f"ray-start-{time.strftime('%H%M%S')}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(host_command(cluster, host, [_local._ray_executable(), "start", *args]),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_host_env(cluster), cwd=REPO, start_new_session=True)
    stat = _local._proc_stat(proc.pid)
    if stat is None:
        raise ClusterError(f"{host.name}: `ray start` exited at once; see {log}")
    return NodeProcess(host=host.name, pid=proc.pid, start_ticks=stat[3], log=str(log))


def wait_for_nodes(cluster: NetnsCluster, count: int, timeout_s: float = 180.0) -> None:
    """Until the head's state API reports ``count`` alive nodes."""
    deadline = time.monotonic() + timeout_s
    while _local.alive_node_count(cluster.dashboard_url, cluster.token()) < count:
        if time.monotonic() > deadline:
            logs = ", ".join(str(p) for h in cluster.hosts for p in Path(h.root).glob("ray-start-*.log"))
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {count} alive nodes; logs: {logs}")
        time.sleep(1)


def up(root: str | Path, *, workers: int = 2, cpus_per_worker: int = 1, shared: tuple[str | Path, ...] = (),
       name: str | None = None, state_path: str | Path | None = None, timeout_s: float = 180.0) -> NetnsCluster:
    """Make the hosts, start the head and the workers, wait until all are alive; write the state file.

    ``root``: a folder of this machine for the hosts' own disks and the token. ``shared``: the paths every
    host sees as this machine does (the code, its venv and the repository are added). On any failure
    everything made so far is removed before the error is raised.
    """
    if os.geteuid() != 0:
        raise ClusterError("network namespaces need root: run as root (CI does)")
    name = name or f"dn{secrets.token_hex(2)}"
    if len(name) > 8:
        raise ClusterError(f"cluster name {name!r}: at most 8 characters (Linux allows 15 in a link name)")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    os.chmod(token_path, 0o600)
    paths = {str(Path(p).resolve()) for p in (*shared, REPO, sys.prefix)}
    cluster = NetnsCluster(name=name, bridge=f"{name}-br", gateway="", hosts=(), shared=tuple(sorted(paths)),
                           token_path=str(token_path), cpus_per_worker=cpus_per_worker)
    try:
        bridge, gateway, ends = _make_network(name, workers + 1)
        hosts = tuple(
            Host(name=role, hostname=f"{name}-{role}", netns=netns, address=address, link=link,
                 root=str(root / role))
            for role, (netns, link, address) in zip(["head", *[f"worker-{i}" for i in range(1, workers + 1)]], ends))
        for host in hosts:
            (Path(host.root) / "tmp").mkdir(parents=True, exist_ok=True)
        cluster = NetnsCluster(name=name, bridge=bridge, gateway=gateway, hosts=hosts, shared=cluster.shared,
                               token_path=str(token_path), cpus_per_worker=cpus_per_worker)
        start_node(cluster, cluster.head)
        _wait_port(cluster.head.address, GCS_PORT, timeout_s)
        for host in hosts[1:]:
            start_node(cluster, host)
        wait_for_nodes(cluster, len(hosts), timeout_s)
    except BaseException:
        down(cluster)
        raise
    if state_path:
        Path(state_path).write_text(json.dumps(asdict(cluster), indent=1))
    return cluster


def _wait_port(address: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _local._port_open(address, port):
        if time.monotonic() > deadline:
            raise ClusterError(f"nothing listens on {address}:{port} after {timeout_s:.0f} s")
        time.sleep(0.5)


def cut(cluster: NetnsCluster, name: str) -> None:
    """Take ``name``'s link down: the host runs on, and nobody reaches it (nor it anybody)."""
    _ip("link", "set", cluster.host(name).link, "down")


def reconnect(cluster: NetnsCluster, name: str) -> None:
    _ip("link", "set", cluster.host(name).link, "up")


def host_pids(host: Host) -> list[int]:
    """Every process that lives in the host's network namespace."""
    done = _ip("netns", "pids", host.netns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_host(cluster: NetnsCluster, name: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process on host ``name`` (SIGKILL: the host is lost); returns their pids."""
    pids = host_pids(cluster.host(name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def _stop_hosts(hosts: tuple[Host, ...], timeout_s: float) -> list[int]:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for host in reversed(hosts):
            for pid in host_pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 2
        while any(host_pids(h) for h in hosts) and time.monotonic() < deadline:
            time.sleep(0.25)
    return [pid for h in hosts for pid in host_pids(h)]


def down(cluster: NetnsCluster, timeout_s: float = 30.0) -> None:
    """Stop every process in the cluster's namespaces, then remove the namespaces, their links and the bridge."""
    left = _stop_hosts(cluster.hosts, timeout_s)
    for i in range(len(cluster.hosts) or 64):
        _ip("link", "delete", f"{cluster.name}-v{i}", check=False)  # both ends of the veth pair
        _ip("netns", "delete", f"{cluster.name}-h{i}", check=False)
    _ip("link", "delete", cluster.bridge, check=False)
    if left:
        raise ClusterError(f"processes {left} of cluster {cluster.name} are still alive after SIGKILL")


def load(state_path: str | Path) -> NetnsCluster:
    path = Path(state_path)
    try:
        raw = json.loads(path.read_text())
        hosts = tuple(Host(**h) for h in raw.pop("hosts"))
        return NetnsCluster(**{**raw, "hosts": hosts, "shared": tuple(raw["shared"])})
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such state file (was the cluster started with `up --state {path}`?)")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClusterError(f"{path}: not a state file written by `up`: {e}") from e


def _host_command(args: argparse.Namespace) -> None:
    """down, cut, reconnect, kill or start, on the cluster of ``--state``."""
    cluster = load(args.state)
    if args.command == "down":
        down(cluster)
        Path(args.state).unlink()
    elif args.command == "cut":
        cut(cluster, args.host)
    elif args.command == "reconnect":
        reconnect(cluster, args.host)
    elif args.command == "kill":
        print(f"killed {len(kill_host(cluster, args.host))} processes on {args.host}")
    else:
        print(f"started pid {start_node(cluster, cluster.host(args.host)).pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="make the hosts and start Ray on them; print the addresses")
    p_up.add_argument("--root", required=True, help="a folder for the hosts' own disks and the token")
    p_up.add_argument("--workers", type=int, default=2)
    p_up.add_argument("--cpus-per-worker", type=int, default=1)
    p_up.add_argument("--share", action="append", default=[], help="a path every host sees (repeatable)")
    p_up.add_argument("--state", required=True)
    for command in ("down", "cut", "reconnect", "kill", "start"):
        p = sub.add_parser(command)
        p.add_argument("--state", required=True)
        if command != "down":
            p.add_argument("host")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cluster = up(args.root, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         shared=tuple(args.share), state_path=args.state)
            print("hosts: " + " ".join(f"{h.name}={h.address}" for h in cluster.hosts))
            print(f"dashboard: {cluster.dashboard_url}")
            print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in cluster.env().items()))
        else:
            _host_command(args)
    except ClusterError as e:
        sys.exit(f"error: {e}")  # one line on stderr, exit status 1
    return 0


if __name__ == "__main__":
    main()
