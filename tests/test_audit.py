"""The shortcut audit: when file metadata alone tells real from fake, `detector prepare` and the manifest say so."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import image_bytes, write_file

from detector.cli import main as cli_main
from detector.data.audit import format_audit, jpeg_quality
from detector.data.prepare import prepare
from detector.data.sources import FolderSource


@pytest.mark.parametrize("quality", [30, 50, 75, 95])
def test_jpeg_quality_is_read_from_the_quantisation_tables(quality):
    assert jpeg_quality(image_bytes("JPEG", (16, 16), quality=quality)) == quality


def test_not_a_jpeg_has_no_quality():
    assert jpeg_quality(image_bytes("PNG")) is None and jpeg_quality(b"not an image") is None


def folder(root: Path, fmt_of, per_class: dict[str, int]) -> Path:
    """DIR/{train,val,test}/{real,fake}/ with ``fmt_of(class, i)`` ("JPEG" or "PNG") per image, all 16x16."""
    for split, n in per_class.items():
        for c, cls in enumerate(("real", "fake")):
            for i in range(n):
                fmt = fmt_of(cls, i)
                data = image_bytes(fmt, (16, 16), (i * 7 % 256, 90 * c, 50), **({"quality": 90} if fmt == "JPEG" else {}))
                write_file(root / split / cls / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", data)
    return root


COUNTS = {"train": 20, "val": 10, "test": 4}


def test_all_png_fakes_and_all_jpeg_reals_are_a_shortcut(tmp_path, capsys):
    raw = folder(tmp_path / "raw", lambda cls, i: "JPEG" if cls == "real" else "PNG", COUNTS)
    assert cli_main(["prepare", "--folder", str(raw), "--out", str(tmp_path / "data"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: shortcut: file metadata alone (format, width, height, JPEG quality) predicts the validation " \
           "labels with 100.0 % accuracy (chance: 50.0 %" in printed
    assert "train  folder       real       20  JPEG 100%; q90 [90-90]; 16x16 (100%, 1 sizes)" in printed
    assert "train  folder       fake       20  PNG 100%; -; 16x16 (100%, 1 sizes)" in printed
    import json

    audit = json.loads((tmp_path / "data" / "manifest.json").read_text())["audit"]
    assert audit["classifier"]["accuracy"] == 1.0 and audit["classifier"]["warn"] is True
    assert audit["warning"].startswith("shortcut:")


def test_mixed_formats_are_no_shortcut(tmp_path):
    # every class half JPEG, half PNG, all the same size and quality: the metadata says nothing about the label
    raw = folder(tmp_path / "raw", lambda cls, i: "JPEG" if i % 2 else "PNG", COUNTS)
    manifest = prepare(tmp_path / "data", sources=[FolderSource(raw)], workers=1, progress=False)
    audit = manifest["audit"]
    assert audit["warning"] is None and audit["classifier"]["warn"] is False
    assert audit["classifier"]["accuracy"] < audit["classifier"]["chance"] + audit["classifier"]["warn_margin"]
    assert "WARNING" not in format_audit(audit)
    groups = {(g["split"], g["class"]): g for g in audit["groups"]}
    assert groups[("train", "real")]["formats"] == {"JPEG": 10, "PNG": 10}


def test_an_audit_measured_later_equals_the_one_prepare_stored(demo_shards):
    import json

    from detector.data.audit import audit_dataset

    stored = json.loads((demo_shards / "manifest.json").read_text())["audit"]
    assert audit_dataset(str(demo_shards)) == stored  # deterministic: what the evaluate stage measures for old data
    assert {g["class"] for g in stored["groups"]} == {"real", "fake"} and stored["warning"] is None
