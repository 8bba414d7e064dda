"""Atomic writes: a file appears whole under its name or not at all, with the mode open() would give it."""

from __future__ import annotations

import os
import stat

import pytest

from detector.io import atomic_open, atomic_write_text, create_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_file_gets_the_mode_of_the_umask_not_mkstemps_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "models" / "baseline.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "models" / "baseline.json").stat().st_mode) == mode


def test_a_secret_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "auth_token", "s3cr3t", private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "auth_token").stat().st_mode) == 0o600


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    (tmp_path / "report.md").write_text("the previous report")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(tmp_path / "report.md", "w") as f:
            f.write("half of the new one")
            raise RuntimeError("disk full")
    assert (tmp_path / "report.md").read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_create_text_never_replaces_a_file_another_process_made(tmp_path):
    token = tmp_path / ".ray" / "auth_token"
    assert create_text(token, "first", private=True)
    assert not create_text(token, "second", private=True)  # a second first run keeps the first token
    assert token.read_text() == "first" and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert sorted(p.name for p in token.parent.iterdir()) == ["auth_token"]  # no temporary left
