"""The embedded Ray of `detector run` (no --address) on a shared host: its token is readable by this user
only, and nothing of it listens beyond the loopback.

Before, Ray wrote ~/.ray/auth_token 0644 (in a 0755 ~/.ray): any local user could read it and run code on
the cluster; and its GCS and raylet listened on every interface of the machine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from process_helpers import is_loopback


# Runs in a process of its own with HOME set to a fresh folder: what `detector run` does to connect,
# then what listens, while the cluster is up.
_PROBE = """
import json, os, sys
sys.path.insert(0, {tests!r})
from process_helpers import listening_sockets, process_tree
from detector.job import tune
from detector.job.experiment import ExperimentConfig, ResourcesSection
info = tune.connect(None, ExperimentConfig(resources=ResourcesSection(gpus_per_trial=0, local_num_cpus=1)))
try:
    print(json.dumps({{"embedded": info.embedded, "gcs": info.address, "dashboard": info.dashboard_url,
                      "listening": listening_sockets(process_tree(os.getpid()))}}))
finally:
    tune.shutdown()
"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["HOME"] = str(home)
    done = subprocess.run([sys.executable, "-c", _PROBE.format(tests=str(Path(__file__).parent))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return home, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.ray
def test_the_embedded_rays_token_is_readable_by_its_user_only(embedded):
    home, probe = embedded
    assert probe["embedded"]
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text().strip()) == 64  # the token Ray used: ours, not one it wrote beside it


@pytest.mark.ray
def test_nothing_of_the_embedded_ray_listens_beyond_the_loopback(embedded):
    _, probe = embedded
    listening = probe["listening"]
    ports = {port for _, port, _ in listening}
    gcs_host, gcs_port = probe["gcs"].rsplit(":", 1)
    assert is_loopback(gcs_host) and int(gcs_port) in ports  # the GCS is among what was seen
    assert probe["dashboard"].startswith("http://127.0.0.1:")
    assert len(listening) >= 4  # GCS, raylet (two servers), dashboard, agents, the driver's worker
    assert [s for s in listening if not is_loopback(s[0])] == []


def test_an_existing_token_readable_by_others_is_made_private(tmp_path, monkeypatch):
    from detector.job.tune import private_token

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("a" * 64)
    token.chmod(0o644)  # as Ray 2.60 writes it
    assert private_token() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "a" * 64
