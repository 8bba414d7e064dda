"""Symbolic links in a source folder: followed only out of the source and only when asked; never a way to
import /etc, nor to import one file twice under two labels.

Before, a link to /etc made ``prepare --folder`` read all of /etc into the manifest, and a link inside the
folder imported one image twice: as real in train and as fake in val.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import image_bytes, make_synthbuster, write_file

from detector.cli import main as cli
from detector.data.sources import FolderSource, SynthBusterSource


def folder_dataset(root: Path, n: int = 5) -> Path:
    for c, cls in enumerate(("real", "fake")):
        for i in range(n):
            write_file(root / cls / f"{cls}{i}.png", image_bytes("PNG", (8, 8), (10 * i, 100 * c, 7)))
    return root


def prepare(*args: str, out: Path, capsys) -> dict:
    assert cli(["prepare", "--out", str(out), "--workers", "1", *args]) == 0, capsys.readouterr().err
    return json.loads((out / "manifest.json").read_text())


def rejected(manifest: dict) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in manifest["rejected"]}


def rows(manifest: dict) -> int:
    return sum(c["real"] + c["fake"] for c in manifest["totals"].values())


def test_a_link_to_a_folder_outside_is_rejected_not_read_unless_asked(tmp_path, capsys):
    source = folder_dataset(tmp_path / "mine")
    elsewhere = tmp_path / "someone-elses"
    for i in range(3):
        write_file(elsewhere / f"private{i}.png", image_bytes("PNG", (8, 8), (1, 2, 3 + i)))
    (source / "real" / "more").symlink_to(elsewhere)

    manifest = prepare("--folder", str(source), out=tmp_path / "data", capsys=capsys)
    assert rows(manifest) == 10
    assert rejected(manifest) == {"real/more": f"symbolic link to {elsewhere}, outside the source folder {source}: "
                                               "not read (--follow-outside-links follows such links)"}

    followed = prepare("--folder", str(source), "--follow-outside-links", out=tmp_path / "data2", capsys=capsys)
    assert rows(followed) == 13 and followed["rejected"] == []
    assert followed["options"]["sources"]["folder"]["follow_outside_links"] is True


def test_a_link_to_etc_is_one_rejection_and_nothing_of_etc_is_listed(tmp_path):
    source = folder_dataset(tmp_path / "mine")
    (source / "fake" / "etc").symlink_to("/etc")
    plan = FolderSource(source).plan(seed=0)
    assert [(r.path, r.reason.split(":")[0]) for r in plan.rejected] == [
        ("fake/etc", "symbolic link to /etc, outside the source folder " + str(source))]
    assert not [t for t in plan.tasks if t.original_path.startswith("fake/etc")]


def test_a_linked_file_pointing_at_another_class_is_imported_once_under_its_own_label(tmp_path, capsys):
    source = folder_dataset(tmp_path / "mine")
    (source / "real" / "looks-real.png").symlink_to(source / "fake" / "fake3.png")
    (source / "real" / "copy.png").symlink_to("real0.png")  # the same folder: a second name for one file

    manifest = prepare("--folder", str(source), out=tmp_path / "data", capsys=capsys)
    assert rejected(manifest) == {
        "real/looks-real.png": "symbolic link to fake/fake3.png, another folder of the source: a file is imported "
                               "once, with the label and split of the folder it is in",
        "real/copy.png": "symbolic link to real/real0.png in the same folder, imported under its own path",
    }
    assert rows(manifest) == 10
    assert manifest["duplicates"]["across_splits_count"] == manifest["duplicates"]["within_split_count"] == 0
    assert sum(c["fake"] for c in manifest["totals"].values()) == 5


def test_a_class_folder_that_is_a_link_follows_the_same_rule(tmp_path):
    source = tmp_path / "mine"
    folder_dataset(tmp_path / "disk")
    write_file(source / "fake" / "f.png", image_bytes())
    (source / "real").symlink_to(tmp_path / "disk" / "real")  # a class folder kept on another disk
    plan = FolderSource(source).plan(seed=0)
    assert [r.path for r in plan.rejected] == ["real"] and "outside the source folder" in plan.rejected[0].reason
    assert len(FolderSource(source, follow_outside_links=True).plan(seed=0).tasks) == 6

    (source / "real").unlink()
    (source / "real").symlink_to(source / "fake")  # real/ is fake/ under another name
    plan = FolderSource(source, follow_outside_links=True).plan(seed=0)
    assert [t.label for t in plan.tasks] == [0]
    assert "another folder of the source" in plan.rejected[0].reason


def test_every_source_lists_its_files_by_the_same_rule(tmp_path):
    root = make_synthbuster(tmp_path / "synthbuster", per_generator=2)
    (root / "dalle2" / "passwd.png").symlink_to("/etc/passwd")
    plan = SynthBusterSource(root).plan(seed=0)
    assert [r.path for r in plan.rejected] == ["dalle2/passwd.png"]
    assert "outside the source folder" in plan.rejected[0].reason
