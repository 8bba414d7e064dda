"""Where images come from: one class per public layout, each turning a folder into a list of tasks.

A source only *plans*: it lists files, reads CSVs and test lists, assigns every file (or video) its split
and label, and reports what it cannot use. Reading and decoding happen later, in parallel
(:mod:`detector.data.prepare`). Planning is cheap and deterministic: the same folder and seed give the
same tasks in the same order on every machine.

Splitting rule (the paper's "manual 80/10/10"): per class, and per generator for SynthBuster, the sorted
items are shuffled with a seeded RNG; the first ``n_train = round(0.8 n)`` go to train, the next
``n_val = round(0.1 n)`` to val, the rest to test (``round`` is half-up, done in integers). For Celeb-DF the
items are videos, so the frames of one video never land in two splits.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from detector import FAKE, REAL
from detector.data.demo import DemoConfig, demo_label

SPLITS = ("train", "val", "test")
SOURCE_NAMES = ("faces140k", "celebdf", "synthbuster", "folder", "demo")
CLASS_DIRS = {"real": REAL, "fake": FAKE}
LABEL_NAMES = {REAL: "real", FAKE: "fake"}

SYNTHBUSTER_GENERATORS = (
    "dalle2", "dalle3", "firefly", "glide", "midjourney-v5",
    "stable-diffusion-1-3", "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl",
)
SYNTHBUSTER_RAISE = "real_RAISE_1k"
FACES140K_IMAGES = PurePosixPath("real_vs_fake/real-vs-fake")
FACES140K_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # folder / CSV name -> our split
CELEBDF_FOLDERS = {"Celeb-real": REAL, "Celeb-synthesis": FAKE, "YouTube-real": REAL}
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
_CONFLICT = -1
FOLDER_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class SourceError(ValueError):
    """A source folder is missing or is not in the expected layout; the message names the path."""


@dataclass(frozen=True)
class Task:
    """One unit of import work: a file (one row), a video (``frames`` rows) or a demo image."""

    source: str
    split: str
    label: int
    kind: str  # "file", "video" or "demo"
    path: str  # absolute path to read; "" for demo images
    original_path: str  # posix path relative to the source root, as shown to users
    generator: str = ""
    group: str = ""  # rows sharing a group (a video, a 140k id) always share a split
    frames: int = 1  # video: how many frames to take
    index: int = 0  # demo: image index within its split
    seed: int = 0  # demo: generation seed
    image_size: int = 0  # demo: image size


@dataclass(frozen=True)
class Rejection:
    source: str
    path: str
    reason: str


@dataclass(frozen=True)
class Note:
    """Something worth knowing that is not a rejected file (e.g. a CSV and its folder disagree)."""

    source: str
    path: str
    message: str


@dataclass
class SourcePlan:
    tasks: list[Task] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def split_sizes(n: int) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) = (round(0.8 n), round(0.1 n), rest), rounding half up.

    >>> split_sizes(590), split_sizes(5639), split_sizes(1000)
    ((472, 59, 59), (4511, 564, 564), (800, 100, 100))
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_train = (8 * n + 5) // 10
    n_val = min((n + 5) // 10, n - n_train)
    return n_train, n_val, n - n_train - n_val


def assign_splits(keys: Iterable[str], *, seed: int, salt: str,
                  sizes: tuple[int, int, int] | None = None) -> dict[str, str]:
    """Map each key to "train", "val" or "test": sorted, shuffled by ``(seed, salt)``, cut by ``sizes``.

    ``sizes`` defaults to :func:`split_sizes` of the number of keys. The result does not depend on the
    order of ``keys`` (file systems list folders in arbitrary order), only on the set, seed and salt.

    >>> sorted(assign_splits([f"v{i}" for i in range(10)], seed=0, salt="x").values()).count("train")
    8
    """
    ordered = sorted(set(keys))
    # a string seed is hashed with SHA-512 by `random`, so it is stable across runs and machines
    random.Random(f"{seed}:{salt}").shuffle(ordered)
    n_train, n_val, n_test = sizes if sizes is not None else split_sizes(len(ordered))
    if n_train + n_val + n_test != len(ordered):
        raise ValueError(f"sizes {sizes} do not add up to {len(ordered)} items")
    return {k: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, k in enumerate(ordered)}


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise SourceError(f"{path}: {what} not found" + (" (it is a file)" if path.exists() else ""))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_rejection(target: str, folder: str | None, root: str, follow_outside: bool) -> str | None:
    """Why a symbolic link whose real target is ``target`` is not followed, or None to follow it.

    ``folder``: the real folder being listed (None for the listed folder itself); ``root``: the source's
    real root. The rule is in docs/data.md, "Symbolic links".
    """
    if folder is not None and _within(target, folder):
        # the target is listed under its own path: following the link would import the same bytes twice
        return f"symbolic link to {_rel(Path(target), Path(root))} in the same folder, imported under its own path"
    if _within(target, root):
        return (f"symbolic link to {_rel(Path(target), Path(root))}, another folder of the source: a file is "
                "imported once, with the label and split of the folder it is in")
    if not follow_outside:
        return (f"symbolic link to {target}, outside the source folder {root}: not read "
                "(--follow-outside-links follows such links)")
    return None


def list_files(folder: Path, root: Path, source: str, plan: SourcePlan, *,
               follow_outside_links: bool = False) -> list[Path]:
    """Every non-hidden file under ``folder``, sorted; a rejection with its reason for each one that
    cannot be used.

    Symbolic links (to files or folders) are followed only when they lead outside the source ``root``
    and ``follow_outside_links`` is set. A link to anything inside the root is rejected: its target is
    imported under its own path, with the label and split of its own folder (so one file is never
    imported twice, or under two labels). A link outside the root is rejected, and not read, by default
    (a link to /etc must not import /etc). Dangling links become rejections, not silent gaps. Names
    starting with "." are skipped (``.DS_Store``, editor swap files, our own temporary files).
    """
    real_root = os.path.realpath(root)
    real_folder = os.path.realpath(folder)
    if real_folder != os.path.normpath(os.path.join(real_root, os.path.relpath(folder, root))):
        # the listed folder itself is reached through a link
        reason = _link_rejection(real_folder, None, real_root, follow_outside_links)
        if reason is not None:
            plan.rejected.append(Rejection(source, _rel(folder, root), f"folder: {reason}"))
            return []
    found: dict[str, Path] = {}  # real path -> the path it is imported under
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # followed outside links may lead back up their own tree: never loop
            dirnames[:] = []
            continue
        seen.add(real)
        entries = [(name, True) for name in dirnames] + [(name, False) for name in filenames]
        dirnames[:] = []
        for name, is_dir in sorted(entries):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                if not p.exists():
                    plan.rejected.append(Rejection(source, _rel(p, root), f"dangling symbolic link (target "
                                                   f"{os.readlink(p)} does not exist)"))
                    continue
                reason = _link_rejection(os.path.realpath(p), real_folder, real_root, follow_outside_links)
                if reason is not None:
                    plan.rejected.append(Rejection(source, _rel(p, root), reason))
                    continue
            if is_dir:
                dirnames.append(name)
            elif not p.is_file():
                plan.rejected.append(Rejection(source, _rel(p, root), "not a regular file"))
            elif (real_file := os.path.realpath(p)) in found:  # two followed links to one outside file
                plan.rejected.append(Rejection(source, _rel(p, root), f"the same file as "
                                               f"{_rel(found[real_file], root)}, imported once"))
            else:
                found[real_file] = p
    return sorted(found.values())


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it stays inside ``root`` (no absolute path, no ``..`` escape), else None."""
    if not relative or PurePosixPath(relative).is_absolute() or Path(relative).is_absolute():
        return None
    candidate = Path(os.path.normpath(root / relative))
    root_n = Path(os.path.normpath(root))
    if candidate != root_n and root_n not in candidate.parents:
        return None
    return candidate


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faces140kSource:
    """Kaggle "140k Real and Fake Faces" (xhlulu): official split, train -> train, valid -> val, test -> test.

    The folder tree decides which images exist and their label; the CSVs are cross-checked against it.
    A CSV row that points to a missing file or outside the dataset is rejected; a file whose CSV label
    contradicts its folder is rejected (neither label can be trusted); a file no CSV lists, or listed
    under another split's CSV, is imported by its folder and reported as a note.
    """

    root: Path
    # follow symbolic links that lead outside root (docs/data.md, "Symbolic links")
    follow_outside_links: bool = False
    name: str = "faces140k"

    def check(self) -> None:
        _require_dir(self.root, "140k Real and Fake Faces folder")
        images = self.root / FACES140K_IMAGES
        _require_dir(images, f"{FACES140K_IMAGES}/ (the Kaggle layout)")
        missing = [f"{FACES140K_IMAGES}/{s}/{c}" for s in FACES140K_SPLITS for c in CLASS_DIRS
                   if not (images / s / c).is_dir()]
        if missing:
            raise SourceError(f"{self.root}: missing folder(s) {', '.join(missing)}")

    def plan(self, seed: int) -> SourcePlan:
        self.check()
        plan = SourcePlan()
        images = self.root / FACES140K_IMAGES
        listed: dict[str, tuple[str, int, str]] = {}  # relative path -> (csv name, label, id)
        conflicts: set[str] = set()
        for csv_split, our_split in FACES140K_SPLITS.items():
            self._read_csv(csv_split, images, plan, listed, conflicts)
        csv_present = {s: (self.root / f"{s}.csv").is_file() for s in FACES140K_SPLITS}
        have_csv = any(csv_present.values())
        for folder_split, our_split in FACES140K_SPLITS.items():
            for class_dir, label in CLASS_DIRS.items():
                for p in list_files(images / folder_split / class_dir, self.root, self.name, plan,
                                    follow_outside_links=self.follow_outside_links):
                    rel = _rel(p, images)
                    if rel in conflicts:
                        continue
                    entry = listed.get(rel)
                    if entry is None and csv_present[folder_split]:
                        plan.notes.append(Note(self.name, _rel(p, self.root), "in the folders but listed in no CSV; "
                                               "imported with the split and label of its folder"))
                    group = entry[2] if entry and entry[2] else p.stem
                    plan.tasks.append(Task(self.name, our_split, label, "file", str(p), _rel(p, self.root),
                                           group=group))
        for split_name, present in csv_present.items():
            if have_csv and not present:
                plan.notes.append(Note(self.name, f"{split_name}.csv", "CSV missing: that split is taken from "
                                       "its folder only"))
        if not have_csv:
            plan.notes.append(Note(self.name, ".", "no train.csv/valid.csv/test.csv: split and labels taken "
                                   "from the folders only"))
        return plan

    def _read_csv(self, csv_split: str, images: Path, plan: SourcePlan,
                  listed: dict[str, tuple[str, int, str]], conflicts: set[str]) -> None:
        csv_path = self.root / f"{csv_split}.csv"
        name = csv_path.name
        if not csv_path.is_file():
            return
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing_cols = {"label", "path"} - set(reader.fieldnames or [])
            if missing_cols:
                raise SourceError(f"{csv_path}: missing column(s) {', '.join(sorted(missing_cols))}; expected the "
                                  "header ',original_path,id,label,label_str,path'")
            for line, row in enumerate(reader, start=2):
                where = f"{name} line {line}"
                rel = (row.get("path") or "").strip()
                target = _inside(images, rel)
                if target is None:
                    plan.rejected.append(Rejection(self.name, rel or where,
                                                   f"{where}: path {rel!r} points outside the dataset root"))
                    continue
                rel = _rel(target, images)
                if not target.is_file():
                    plan.rejected.append(Rejection(self.name, f"{FACES140K_IMAGES}/{rel}",
                                                   f"{where}: listed file does not exist"))
                    continue
                label_text = (row.get("label") or "").strip()
                if label_text not in ("0", "1"):
                    plan.rejected.append(Rejection(self.name, f"{FACES140K_IMAGES}/{rel}",
                                                   f"{where}: label {label_text!r} is not 1 (real) or 0 (fake)"))
                    conflicts.add(rel)
                    continue
                label = REAL if label_text == "1" else FAKE  # the CSV's 1 = real is our REAL = 1
                parts = PurePosixPath(rel).parts
                folder_split = parts[0] if parts else ""
                folder_label = CLASS_DIRS.get(parts[1]) if len(parts) > 2 else None
                if folder_split not in FACES140K_SPLITS or folder_label is None:
                    plan.rejected.append(Rejection(self.name, f"{FACES140K_IMAGES}/{rel}",
                                                   f"{where}: not under {{train,valid,test}}/{{real,fake}}/"))
                    continue
                if label != folder_label:
                    plan.rejected.append(Rejection(
                        self.name, f"{FACES140K_IMAGES}/{rel}",
                        f"label conflict: {where} says {LABEL_NAMES[label]} ({label_text}), "
                        f"the folder says {LABEL_NAMES[folder_label]}"))
                    conflicts.add(rel)
                    continue
                label_str = (row.get("label_str") or "").strip()
                if label_str and label_str != LABEL_NAMES[label]:
                    plan.notes.append(Note(self.name, f"{FACES140K_IMAGES}/{rel}",
                                           f"{where}: label_str {label_str!r} disagrees with label {label_text}"))
                if folder_split != csv_split:
                    plan.notes.append(Note(self.name, f"{FACES140K_IMAGES}/{rel}",
                                           f"{where}: listed in {name} but stored under {folder_split}/; "
                                           "the folder's split is used"))
                if rel in listed:
                    plan.notes.append(Note(self.name, f"{FACES140K_IMAGES}/{rel}",
                                           f"{where}: listed again (first in {listed[rel][0]})"))
                    continue
                listed[rel] = (where, label, (row.get("id") or "").strip())


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CelebDFSource:
    """Celeb-DF v2: Celeb-real (real) and Celeb-synthesis (fake) videos, split by video.

    ``split="paper"``: per folder, 80/10/10 by video (seeded), as in the paper; YouTube-real is left out
    unless ``include_youtube``. ``split="official"``: the videos of List_of_testing_videos.txt are the test
    set; the others are split train/val 8:1 per folder (``n_val = round(n / 9)``).
    ``frames_per_video`` frames are taken per video at evenly spaced positions (one: the middle frame).
    """

    root: Path
    frames_per_video: int = 1
    split: str = "paper"
    include_youtube: bool = False
    # follow symbolic links that lead outside root (docs/data.md, "Symbolic links")
    follow_outside_links: bool = False
    name: str = "celebdf"

    def check(self) -> None:
        _require_dir(self.root, "Celeb-DF v2 folder")
        if self.split not in ("paper", "official"):
            raise SourceError(f"celebdf split must be 'paper' or 'official', got {self.split!r}")
        if self.frames_per_video < 1:
            raise SourceError(f"frames per video must be >= 1, got {self.frames_per_video}")
        needed = ["Celeb-real", "Celeb-synthesis"] + (["YouTube-real"] if self.include_youtube else [])
        missing = [d for d in needed if not (self.root / d).is_dir()]
        if self.split == "official" and not (self.root / CELEBDF_TEST_LIST).is_file():
            missing.append(CELEBDF_TEST_LIST)
        if missing:
            raise SourceError(f"{self.root}: missing {', '.join(missing)} (the Celeb-DF v2 layout)")

    def plan(self, seed: int) -> SourcePlan:
        self.check()
        plan = SourcePlan()
        folders = ["Celeb-real", "Celeb-synthesis"] + (["YouTube-real"] if self.include_youtube else [])
        videos = {d: [_rel(p, self.root) for p in list_files(
            self.root / d, self.root, self.name, plan, follow_outside_links=self.follow_outside_links)]
            for d in folders}
        if not self.include_youtube and (self.root / "YouTube-real").is_dir():
            plan.notes.append(Note(self.name, "YouTube-real", "not imported (the paper uses Celeb-real and "
                                   "Celeb-synthesis only); --celebdf-youtube adds it as real"))
        test: dict[str, int] = self._read_test_list(plan) if self.split == "official" else {}
        for folder in folders:
            keys = [v for v in videos[folder] if v not in test]
            if self.split == "paper":
                assigned = assign_splits(keys, seed=seed, salt=f"celebdf:{folder}")
            else:
                n_val = (len(keys) * 2 + 9) // 18  # round(n / 9), half up, in integers
                assigned = assign_splits(keys, seed=seed, salt=f"celebdf:{folder}",
                                         sizes=(len(keys) - n_val, n_val, 0))
            for rel in videos[folder]:
                if test.get(rel) == _CONFLICT:
                    continue
                split = "test" if rel in test else assigned[rel]
                plan.tasks.append(self._task(rel, split, CELEBDF_FOLDERS[folder]))
        # official test videos from folders not imported otherwise (YouTube-real without the option)
        for rel, label in sorted(test.items()):
            if label != _CONFLICT and PurePosixPath(rel).parts[0] not in folders:
                plan.tasks.append(self._task(rel, "test", label))
        return plan

    def _task(self, rel: str, split: str, label: int) -> Task:
        return Task(self.name, split, label, "video", str(self.root / rel), rel, group=rel,
                    frames=self.frames_per_video)

    def _read_test_list(self, plan: SourcePlan) -> dict[str, int]:
        """Relative path -> label of the listed test videos (``_CONFLICT`` for rejected ones)."""
        test: dict[str, int] = {}
        lines = (self.root / CELEBDF_TEST_LIST).read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{CELEBDF_TEST_LIST} line {i}"
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                plan.rejected.append(Rejection(self.name, where, f"{where}: expected '<1|0> <relative path>', "
                                               f"got {line.strip()!r}"))
                continue
            label, rel = (REAL if parts[0] == "1" else FAKE), parts[1].strip()
            target = _inside(self.root, rel)
            if target is None:
                plan.rejected.append(Rejection(self.name, rel, f"{where}: path points outside the dataset root"))
                continue
            rel = _rel(target, self.root)
            folder = PurePosixPath(rel).parts[0]
            if folder not in CELEBDF_FOLDERS:
                plan.rejected.append(Rejection(self.name, rel, f"{where}: not in {', '.join(CELEBDF_FOLDERS)}"))
                continue
            if not target.is_file():
                plan.rejected.append(Rejection(self.name, rel, f"{where}: listed video does not exist"))
                continue
            if CELEBDF_FOLDERS[folder] != label:
                plan.rejected.append(Rejection(
                    self.name, rel, f"label conflict: {where} says {LABEL_NAMES[label]} ({parts[0]}), "
                    f"the folder {folder}/ says {LABEL_NAMES[CELEBDF_FOLDERS[folder]]}"))
                test[rel] = _CONFLICT  # rejected: kept out of every split
                continue
            test[rel] = label
        return test


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthBusterSource:
    """SynthBuster: fake-only, 80/10/10 per generator; the generator name is kept on every row.

    ``real_RAISE_1k/`` (the RAISE photos the generators were prompted from) is skipped as in the paper,
    unless ``include_raise``, which adds it as real with generator "raise".
    """

    root: Path
    include_raise: bool = False
    # follow symbolic links that lead outside root (docs/data.md, "Symbolic links")
    follow_outside_links: bool = False
    name: str = "synthbuster"

    def check(self) -> None:
        _require_dir(self.root, "SynthBuster folder")
        if not any((self.root / g).is_dir() for g in SYNTHBUSTER_GENERATORS):
            raise SourceError(f"{self.root}: none of the SynthBuster generator folders "
                              f"({', '.join(SYNTHBUSTER_GENERATORS)}) exists")
        if self.include_raise:
            _require_dir(self.root / SYNTHBUSTER_RAISE, f"{SYNTHBUSTER_RAISE}/ (asked for with --synthbuster-raise)")

    def plan(self, seed: int) -> SourcePlan:
        self.check()
        plan = SourcePlan()
        groups: list[tuple[str, int, str]] = [(g, FAKE, g) for g in SYNTHBUSTER_GENERATORS]
        if self.include_raise:
            groups.append((SYNTHBUSTER_RAISE, REAL, "raise"))
        for folder, label, generator in groups:
            if not (self.root / folder).is_dir():
                plan.notes.append(Note(self.name, folder, "generator folder missing: nothing imported for it"))
                continue
            files = [_rel(p, self.root) for p in list_files(
                self.root / folder, self.root, self.name, plan, follow_outside_links=self.follow_outside_links)]
            assigned = assign_splits(files, seed=seed, salt=f"synthbuster:{folder}")
            for rel in files:
                plan.tasks.append(Task(self.name, assigned[rel], label, "file", str(self.root / rel), rel,
                                       generator=generator, group=rel))
        known = set(SYNTHBUSTER_GENERATORS) | {SYNTHBUSTER_RAISE, "prompts.csv"}
        for entry in sorted(os.listdir(self.root)):
            if entry.startswith(".") or entry in known:
                continue
            plan.notes.append(Note(self.name, entry, "not a SynthBuster generator folder: ignored"))
        if (self.root / SYNTHBUSTER_RAISE).is_dir() and not self.include_raise:
            plan.notes.append(Note(self.name, SYNTHBUSTER_RAISE, "not imported (SynthBuster is fake-only in the "
                                   "paper); --synthbuster-raise adds it as real"))
        return plan


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderSource:
    """Users' own data: ``real/`` and ``fake/`` (split 80/10/10 seeded per class), or
    ``{train,val,test}/{real,fake}/`` (``valid``/``validation`` accepted for val), any depth below."""

    root: Path
    # follow symbolic links that lead outside root (docs/data.md, "Symbolic links")
    follow_outside_links: bool = False
    name: str = "folder"

    def _layout(self) -> dict[str, str] | None:
        """Split folder name -> split, or None for the flat real/fake layout."""
        splits = {d: FOLDER_SPLIT_ALIASES[d] for d in FOLDER_SPLIT_ALIASES if (self.root / d).is_dir()}
        return splits or None

    def check(self) -> None:
        _require_dir(self.root, "image folder")
        splits = self._layout()
        flat = [c for c in CLASS_DIRS if (self.root / c).is_dir()]
        if splits and flat:
            raise SourceError(f"{self.root}: has both split folders ({', '.join(splits)}) and class folders "
                              f"({', '.join(flat)}); use one layout")
        if splits:
            if len(set(splits.values())) != len(splits):
                raise SourceError(f"{self.root}: more than one folder for the same split: {', '.join(splits)}")
            for d in splits:
                if not any((self.root / d / c).is_dir() for c in CLASS_DIRS):
                    raise SourceError(f"{self.root / d}: expected real/ and/or fake/ inside")
        elif not flat:
            raise SourceError(f"{self.root}: expected real/ and fake/ (or train/, val/, test/ each with real/ "
                              "and fake/)")

    def plan(self, seed: int) -> SourcePlan:
        self.check()
        plan = SourcePlan()
        splits = self._layout()
        expected = set(splits or CLASS_DIRS)
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith(".") and entry not in expected:
                plan.notes.append(Note(self.name, entry, f"ignored: not one of {', '.join(sorted(expected))}"))
        for folder_split, split in (splits or {"": ""}).items():
            base = self.root / folder_split if folder_split else self.root
            for class_dir, label in CLASS_DIRS.items():
                if not (base / class_dir).is_dir():
                    continue
                files = [_rel(p, self.root) for p in list_files(
                    base / class_dir, self.root, self.name, plan, follow_outside_links=self.follow_outside_links)]
                assigned = (assign_splits(files, seed=seed, salt=f"folder:{class_dir}") if not split
                            else dict.fromkeys(files, split))
                for rel in files:
                    plan.tasks.append(Task(self.name, assigned[rel], label, "file", str(self.root / rel), rel,
                                           group=rel))
        return plan


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSource:
    """The built-in demo dataset (:mod:`detector.data.demo`), generated by the import workers."""

    config: DemoConfig = DemoConfig()
    name: str = "demo"

    def check(self) -> None:
        pass

    def plan(self, seed: int) -> SourcePlan:
        plan = SourcePlan()
        for split in SPLITS:
            for i in range(self.config.count(split)):
                plan.tasks.append(Task(self.name, split, demo_label(i), "demo", "", f"demo/{split}/{i:05d}.png",
                                       group=f"{split}/{i}", index=i, seed=seed,
                                       image_size=self.config.image_size))
        return plan


Source = Faces140kSource | CelebDFSource | SynthBusterSource | FolderSource | DemoSource


def plan_sources(sources: Sequence[Source], seed: int) -> SourcePlan:
    """Check every source first (so a missing folder fails before any work), then plan them all."""
    names = [s.name for s in sources]
    if not sources:
        raise SourceError("no source given: pass at least one of --faces140k, --celebdf, --synthbuster, "
                          "--folder, --demo")
    if len(set(names)) != len(names):
        raise SourceError(f"a source is given twice: {', '.join(names)}")
    for s in sources:
        s.check()
    total = SourcePlan()
    for s in sources:
        p = s.plan(seed)
        total.tasks += p.tasks
        total.rejected += p.rejected
        total.notes += p.notes
    return total
