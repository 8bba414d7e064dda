"""`detector run` refuses bad input at once, with a message that names what is wrong (no Ray started)."""

import subprocess
import sys
from pathlib import Path

import pytest

PAPER = str(Path(__file__).parents[1] / "jobs" / "configs" / "paper.yaml")


def detector(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--config", PAPER, "--set", "search.bogus=1"], "unknown key(s) search.bogus"),
        (["run", "--config", PAPER, "--stages", "baseline,bogus"], "unknown stage(s) ['bogus']"),
        (["run", "--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["run"], "--config is required"),
        (["run", "--resume"], "--resume needs --out"),
        (["run", "--resume", "--out", "nowhere"], "is nowhere a run folder"),
        (["run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards",
          "--set", "data.faces140k=/no/such/folder"], "/no/such/folder: 140k Real and Fake Faces folder not found"),
    ],
)
def test_bad_input_fails_with_a_message_naming_it(tmp_path, args, message):
    if "--out" not in args and "--resume" not in args:
        args = [*args, "--out", str(tmp_path / "run")]
    result = detector(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_start_does_not_lock_the_run_folder_to_its_config(tmp_path):
    out = str(tmp_path / "run")
    detector("run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards",
             "--set", "data.faces140k=/no/such/folder", "--out", out, cwd=tmp_path)
    again = detector("run", "--config", PAPER, "--stages", "prepare", "--set", "data.path=shards2",
                     "--set", "data.faces140k=/no/such/folder2", "--out", out, cwd=tmp_path)
    assert "/no/such/folder2" in again.stderr and "different config" not in again.stderr
