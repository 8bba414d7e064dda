"""bench/gpu_check.py, the one command that proves the GPU paths, run here as its CPU dry run: it must work
on a machine without Ray or Optuna, so these tests run it with both made impossible to import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"

# Loaded at start-up by every Python process that has this folder on PYTHONPATH, the check's step processes too.
BLOCKER = '''
import sys


class BlockRayAndOptuna:
    """As on a GPU machine with only torch, torchvision, pyarrow and tensorboard: no Ray, no Optuna."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "optuna"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, BlockRayAndOptuna())
'''


@pytest.fixture
def no_ray_env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("OUT", None)
    for module in ("ray", "optuna"):
        blocked = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr, f"{module} is still importable"
    return env


def gpu_check(env: dict[str, str], out: Path, *args: str, timeout: float) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert (out / "gpu_check.json").exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_cpu_dry_run_runs_every_step_without_ray_or_optuna(no_ray_env, tmp_path):
    out = tmp_path / "out"
    status, doc = gpu_check(no_ray_env, out, "--device", "cpu", "--tiny", timeout=840)
    steps = {s["name"]: s for s in doc["steps"]}
    assert doc["complete"] and status == 0, json.dumps(doc, indent=1)
    for s in steps.values():
        assert s["status"] == "ok" or (s["status"] == "not run" and s["reason"]), s
    must_run = ["environment", "prepare", "train_baseline", "train_pruned", "evaluate", "efficiency", "predict",
                "allreduce", "ddp_fit", "train_step", "pixels", "train_step_pixels"]
    assert [n for n in must_run if steps[n]["status"] != "ok"] == []
    # what a CPU cannot run, or what needs Ray or Optuna, says so
    assert "CUDA is not available" in steps["semistructured"]["reason"]
    assert "Ray and Optuna" in steps["tune_job"]["reason"]
    assert steps["environment"]["results"]["installed_but_not_used"] == []  # the blocker hid them
    # the figures are the library's own: a pruned model that kept its masks, scored images, a timed step
    assert steps["train_pruned"]["results"]["sparsity"] == pytest.approx(0.4, abs=0.01)
    assert len(steps["train_pruned"]["results"]["history"]) == 2
    assert steps["predict"]["results"]["scored"] == 4
    assert steps["allreduce"]["results"]["backend"] == "gloo"
    # the data-parallel fine-tune on two gloo ranks, without Ray: its masks held
    ddp = steps["ddp_fit"]["results"]
    assert (ddp["backend"], ddp["world_size"]) == ("gloo", 2) and ddp["sparsity"] == pytest.approx(0.4, abs=0.01)
    assert {r["input"] for r in steps["train_step"]["results"]["rows"]} == {"synthetic", "loader (0 workers)"}
    assert all(r["latency_ms"] > 0 for r in steps["efficiency"]["results"]["rows"])
    md = (out / "gpu_check.md").read_text()
    assert "INCOMPLETE" not in md and all(f"| {name} " in md for name in steps)
    assert "===== train_pruned" in (out / "gpu_check.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is missing: needs a machine without CUDA")
@pytest.mark.timeout(300)
def test_a_missing_gpu_is_reported_and_the_steps_that_need_it_are_not_run(no_ray_env, tmp_path):
    status, doc = gpu_check(no_ray_env, tmp_path / "out", "--device", "cuda", "--tiny", timeout=240)
    steps = {s["name"]: s for s in doc["steps"]}
    assert status == 1 and doc["complete"]
    assert steps["environment"]["status"] == "failed"
    assert "torch sees no CUDA device" in steps["environment"]["reason"]
    assert steps["prepare"] == {**steps["prepare"], "status": "not run",
                                "reason": "needs environment, which did not succeed"}
    assert steps["train_pruned"]["reason"] == "needs train_baseline, which did not succeed"
    assert all(s["status"] != "ok" for s in doc["steps"])
