"""Planning: the real layouts give the paper's splits (Table 1), and CSV/list problems are reported."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from conftest import image_bytes, make_celebdf, make_faces140k, write_file
from detector import FAKE, REAL
from detector.data.sources import (
    CelebDFSource,
    Faces140kSource,
    FolderSource,
    SourceError,
    SynthBusterSource,
    assign_splits,
    plan_sources,
    split_sizes,
)


def counts(plan) -> dict[tuple[str, str], int]:
    return dict(collections.Counter((t.split, "real" if t.label == REAL else "fake") for t in plan.tasks))


@pytest.mark.parametrize("n,expected", [
    (590, (472, 59, 59)),  # Celeb-real: Table 1's 472 train / 59 val real
    (5639, (4511, 564, 564)),  # Celeb-synthesis: 4,511 / 564 fake
    (1000, (800, 100, 100)),  # one SynthBuster generator; x 9 = 7,200 / 900 / 900
    (0, (0, 0, 0)), (1, (1, 0, 0)), (5, (4, 1, 0)), (15, (12, 2, 1)),
])
def test_split_sizes_round_half_up(n, expected):
    assert split_sizes(n) == expected


def test_assign_splits_is_seeded_and_ignores_listing_order():
    keys = [f"video{i}.mp4" for i in range(50)]
    a = assign_splits(keys, seed=3, salt="x")
    assert a == assign_splits(list(reversed(keys)), seed=3, salt="x")
    assert a != assign_splits(keys, seed=4, salt="x")
    assert collections.Counter(a.values()) == {"train": 40, "val": 5, "test": 5}


def test_celebdf_paper_split_is_table_1_at_the_real_counts(tmp_path):
    # planning only lists files, so empty placeholders stand in for the 6,229 videos here; the import
    # test decodes real clips at these counts
    for folder, n in (("Celeb-real", 590), ("Celeb-synthesis", 5639), ("YouTube-real", 300)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            (tmp_path / folder / f"{i:05d}.mp4").touch()
    plan = CelebDFSource(tmp_path).plan(seed=0)
    assert counts(plan) == {("train", "real"): 472, ("train", "fake"): 4511, ("val", "real"): 59,
                            ("val", "fake"): 564, ("test", "real"): 59, ("test", "fake"): 564}
    assert all(t.group == t.original_path for t in plan.tasks)  # one group per video: frames stay together
    assert any(n.path == "YouTube-real" for n in plan.notes)  # left out as in the paper, and said so
    with_youtube = CelebDFSource(tmp_path, include_youtube=True).plan(seed=0)
    assert counts(with_youtube)[("train", "real")] == 472 + 240


def test_celebdf_official_test_list(tmp_path):
    root = make_celebdf(tmp_path / "celebdf", n_real=20, n_fake=30, n_youtube=10, test=(4, 6, 3))
    with open(root / "List_of_testing_videos.txt", "a") as f:
        f.write("1 Celeb-real/missing.mp4\n0 ../outside.mp4\n1 Celeb-synthesis/id1_id0_0001.mp4\nnonsense\n")
    plan = CelebDFSource(root, split="official").plan(seed=0)
    test = [t for t in plan.tasks if t.split == "test"]
    assert len(test) == 4 + 6 + 3 - 1  # YouTube-real test videos are included; the conflicting one is not
    assert not any(t.original_path == "Celeb-synthesis/id1_id0_0001.mp4" for t in plan.tasks)
    rest_real = [t for t in plan.tasks if t.split != "test" and t.source == "celebdf" and t.label == REAL]
    assert len(rest_real) == 16 and sum(t.split == "val" for t in rest_real) == 2  # round(16 / 9)
    reasons = {r.path: r.reason for r in plan.rejected}
    assert "listed video does not exist" in reasons["Celeb-real/missing.mp4"]
    assert "outside the dataset root" in reasons["../outside.mp4"]
    assert "label conflict" in reasons["Celeb-synthesis/id1_id0_0001.mp4"]
    assert any("expected '<1|0> <relative path>'" in r.reason for r in plan.rejected)


def test_synthbuster_is_fake_only_80_10_10_per_generator(tmp_path):
    from detector.data.sources import SYNTHBUSTER_GENERATORS

    for gen in SYNTHBUSTER_GENERATORS:
        (tmp_path / gen).mkdir()
        for i in range(1000):
            (tmp_path / gen / f"{i:04d}.png").touch()
    (tmp_path / "real_RAISE_1k").mkdir()
    plan = SynthBusterSource(tmp_path).plan(seed=0)
    assert counts(plan) == {("train", "fake"): 7200, ("val", "fake"): 900, ("test", "fake"): 900}
    per_gen = collections.Counter((t.generator, t.split) for t in plan.tasks)
    assert all(per_gen[(g, "train")] == 800 and per_gen[(g, "val")] == 100 for g in SYNTHBUSTER_GENERATORS)
    assert any(n.path == "real_RAISE_1k" for n in plan.notes)


def test_faces140k_official_split_and_csv_cross_check(tmp_path):
    root = make_faces140k(tmp_path, {"train": 4, "valid": 2, "test": 2})
    plan = Faces140kSource(root).plan(seed=0)
    assert counts(plan) == {(s, c): n for s, n in (("train", 4), ("val", 2), ("test", 2)) for c in ("real", "fake")}
    assert not plan.rejected and not plan.notes
    # disagreements: a missing file, a path escaping the root, a label conflict, an unlisted file
    with open(root / "train.csv", "a") as f:
        f.write("90,x,gone,1,real,train/real/gone.jpg\n")
        f.write("91,x,evil,1,real,../../../etc/passwd\n")
    lines = (root / "valid.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",1,real,", ",0,fake,")  # valid/real/Rvalid0000.jpg now says fake
    (root / "valid.csv").write_text("\n".join(lines) + "\n")
    write_file(root / "real_vs_fake/real-vs-fake/test/fake/extra.jpg", image_bytes("JPEG"))
    plan = Faces140kSource(root).plan(seed=0)
    reasons = {r.path: r.reason for r in plan.rejected}
    assert "train.csv line 10: listed file does not exist" in reasons["real_vs_fake/real-vs-fake/train/real/gone.jpg"]
    assert "outside the dataset root" in reasons["../../../etc/passwd"]
    assert "label conflict: valid.csv line 2 says fake" in reasons["real_vs_fake/real-vs-fake/valid/real/Rvalid0000.jpg"]
    assert not any(t.original_path.endswith("Rvalid0000.jpg") for t in plan.tasks)
    assert [n.path for n in plan.notes] == ["real_vs_fake/real-vs-fake/test/fake/extra.jpg"]
    assert counts(plan)[("test", "fake")] == 3


def test_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    for cls in ("real", "fake"):
        for i in range(20):
            write_file(flat / cls / "sub" / f"{i}.png", image_bytes())
    (flat / "README.txt").write_text("hello")
    plan = FolderSource(flat).plan(seed=0)
    assert counts(plan) == {("train", "real"): 16, ("val", "real"): 2, ("test", "real"): 2,
                            ("train", "fake"): 16, ("val", "fake"): 2, ("test", "fake"): 2}
    assert [n.path for n in plan.notes] == ["README.txt"]
    split = tmp_path / "split"
    write_file(split / "train" / "real" / "a.png", image_bytes())
    write_file(split / "valid" / "fake" / "b.png", image_bytes())
    plan = FolderSource(split).plan(seed=0)
    assert sorted((t.split, t.label) for t in plan.tasks) == [("train", REAL), ("val", FAKE)]


@pytest.mark.parametrize("make,message", [
    (lambda p: FolderSource(p / "nope"), "image folder not found"),
    (lambda p: Faces140kSource(p), "real_vs_fake/real-vs-fake/ (the Kaggle layout) not found"),
    (lambda p: CelebDFSource(p), "missing Celeb-real, Celeb-synthesis"),
    (lambda p: SynthBusterSource(p), "none of the SynthBuster generator folders"),
    (lambda p: FolderSource(p), "expected real/ and fake/"),
])
def test_missing_folders_fail_before_any_work_naming_them(tmp_path, make, message):
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        plan_sources([make(tmp_path)], seed=0)
    assert str(tmp_path) in str(e.value)


def test_dangling_links_are_rejected_not_skipped(tmp_path):
    write_file(tmp_path / "real" / "ok.png", image_bytes())
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "fake" / "gone_dir").symlink_to(tmp_path / "nowhere")
    plan = FolderSource(Path(tmp_path)).plan(seed=0)
    assert {r.path: r.reason.split(" (")[0] for r in plan.rejected} == {
        "fake/gone.png": "dangling symbolic link", "fake/gone_dir": "dangling symbolic link"}
