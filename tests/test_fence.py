"""Only the newest attempt of a trial writes: an attempt cut off with its node, and restarted elsewhere by Tune,
is fenced off (detector.job.fence). The multi-host test (tests/test_multi_host.py) cuts a real node off."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from detector.job.fence import ATTEMPT_FILE, StaleAttempt, begin_attempt, read_attempt


def test_a_new_attempt_fences_the_old_one_off_and_removes_what_it_stored_past_the_restart(tmp_path):
    trial = tmp_path / "tune" / "search" / "410b7215"
    first = begin_attempt(trial, restored=None)
    for index in range(3):  # epochs 1-3 stored; Tune learnt of the first two only, then the node was cut off
        (trial / f"checkpoint_{index:06d}").mkdir()
        (trial / f"checkpoint_{index:06d}" / "state.pt").write_bytes(b"epoch %d" % (index + 1))
    first.check()  # still the newest

    second = begin_attempt(trial, restored=trial / "checkpoint_000001")

    assert sorted(p.name for p in trial.iterdir()) == [ATTEMPT_FILE, "checkpoint_000000", "checkpoint_000001"]
    second.check()
    with pytest.raises(StaleAttempt, match=rf"newer attempt of this trial .* \(pid {second.pid}\)"):
        first.check()
    assert read_attempt(trial).id == second.id


def test_an_attempt_that_starts_afresh_keeps_no_checkpoint_of_an_earlier_one(tmp_path):
    trial = tmp_path / "t"
    (trial / "checkpoint_000000").mkdir(parents=True)
    begin_attempt(trial, restored=None)
    assert not (trial / "checkpoint_000000").exists()


def test_an_attempt_in_another_process_learns_it_is_stale(tmp_path):
    """As on a cut-off node: the old attempt is another process, which finds out at its next write."""
    trial = tmp_path / "t"
    old = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from detector.job.fence import StaleAttempt, begin_attempt
        attempt = begin_attempt({str(trial)!r}, None)
        print("started", flush=True)
        sys.stdin.readline()  # until the new attempt has started
        try:
            attempt.check()
        except StaleAttempt as e:
            print("stale:", e)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert old.stdout.readline() == "started\n"
    begin_attempt(trial, restored=None)
    out, _ = old.communicate("\n", timeout=60)
    assert out.startswith("stale: ") and "stops without writing" in out
