"""The `detector` command's manners: a version that says what is installed, and a reader that stops early
(`detector status RUN --watch 1 | head`) ends the command quietly instead of in a traceback."""

import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import REPO
from detector.cli import main


def test_version_names_the_package_torch_and_ray_without_importing_them(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == (f"detector {version('detector')} (torch {version('torch')}, "
                                               f"ray {version('ray')})")
    out = subprocess.run([sys.executable, "-c", "import sys; from detector.cli import main\n"
                          "try:\n    main(['--version'])\nexcept SystemExit:\n"
                          "    print('torch' in sys.modules, 'ray' in sys.modules)"],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "False False", out


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "jobs" / "configs" / "demo.yaml", run / "experiment.yaml")
    # --watch prints the status again and again, for ever: only the closed pipe can end it
    proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "status", str(run), "--watch", "0.01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does once it has its line
    try:
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert first.decode().startswith(f"run {run}: ")
    assert status == 141, err  # as a shell reports a process that SIGPIPE ended
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
