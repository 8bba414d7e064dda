"""Shared fixtures. Data fixtures build each public dataset's real folder layout in miniature."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data.sources import CELEBDF_TEST_LIST, FACES140K_IMAGES, SYNTHBUSTER_GENERATORS

# One thread per process, set before any test module imports torch (and inherited by the CLIs, Ray workers
# and ranks the tests start). The tensors here are tiny, so a second thread gains nothing; on 2 cores shared
# by two pytest workers and the processes they start, a torch op's threads wait at every barrier for a
# sibling that is not scheduled: tests/test_train.py::test_a_tiny_run_learns took 3-4 s with one thread and
# 3-39 s with two (2026-12-07, the 2-core VM under load). bench/gpu_check.py --tiny does the same.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# The optional real-photo sample (176 JPEGs, 1024 px; not in the repo): its location is this one setting,
# a path relative to the repository root unless absolute.
REALORFAKE_ENV = "DETECTOR_REALORFAKE_SAMPLES"
REALORFAKE_DEFAULT = "../shared/samples/realorfake"


def cluster_script(name: str):
    """cluster/<name>.py (a script, not a package module), imported for its functions."""
    spec = importlib.util.spec_from_file_location(name, REPO / "cluster" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def local_cluster_module():
    return cluster_script("local_cluster")


def pytest_configure(config):
    # pytest-xdist's --dist loadfile hands out the modules with the most tests first (--loadscope-reorder, on
    # by default since xdist 3.6), which undoes the order below: the slow modules, a few tests each, started
    # last, and the run ended with them.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Modules with slow tests run first. `make test` runs the suite on two workers, a module to a worker
    (`-n 2 --dist loadfile`): begun first, the long modules end about when the short ones do, instead of
    one worker waiting alone for a long module it picked up last. Within each group, file order."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


def realorfake_location() -> Path:
    return (REPO / os.environ.get(REALORFAKE_ENV, REALORFAKE_DEFAULT)).resolve()


@pytest.fixture
def realorfake() -> Path:
    """The real-photo sample's folder; its tests skip without it, except under CI=true, where they fail."""
    folder = realorfake_location()
    if not folder.is_dir():
        reason = (f"optional real-photo sample not found at {folder} "
                  f"(set {REALORFAKE_ENV} to its folder; default {REALORFAKE_DEFAULT} beside the repository)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return folder


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 8), color=(200, 30, 30), mode: str = "RGB",
                **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **save)
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_video(path: Path, frames: int = 3, size: int = 16, mark: int = 0) -> Path:
    """A tiny MPEG-4 clip whose frame i is grey level 40 * i mod 256, with ``mark``'s bits as 4x4 white blocks
    along the top rows (so every clip of a fixture decodes to different frames)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            a = np.full((size, size, 3), 40 * i % 256, np.uint8)
            for bit in range(16):
                if mark >> bit & 1:
                    y, x = divmod(bit, size // 4)
                    a[4 * y:4 * y + 4, 4 * x:4 * x + 4] = 255
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_faces140k(root: Path, counts: dict[str, int]) -> Path:
    """Kaggle layout with ``counts[split]`` images per class; CSVs as published (label 1 = real)."""
    images = root / FACES140K_IMAGES
    for s, (split, n) in enumerate(counts.items()):
        lines = [",original_path,id,label,label_str,path"]
        for c, (cls, label) in enumerate((("real", 1), ("fake", 0))):
            for i in range(n):
                name = f"{cls[0].upper()}{split}{i:04d}"
                write_file(images / split / cls / f"{name}.jpg",
                           image_bytes("JPEG", (16, 16), (i % 256, 120 * c, 40 * s), quality=95))
                lines.append(f"{len(lines) - 1},/kaggle/input/x/{name}.png,{name},{label},{cls},{split}/{cls}/{name}.jpg")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def make_synthbuster(root: Path, per_generator: int, size: int = 4) -> Path:
    for g, gen in enumerate(SYNTHBUSTER_GENERATORS):
        for i in range(per_generator):
            write_file(root / gen / f"{i:04d}.png", image_bytes("PNG", (size, size), (g * 20, i % 256, i // 256)))
    (root / "prompts.csv").write_text("image name,prompt\n")
    return root


def make_celebdf(root: Path, n_real: int, n_fake: int, n_youtube: int = 0, test: tuple[int, int, int] = (0, 0, 0)) -> Path:
    """Celeb-DF v2 layout; ``test`` = how many (Celeb-real, Celeb-synthesis, YouTube-real) videos the
    official test list names."""
    folders = (("Celeb-real", n_real, "id{i}_{i:04d}.mp4"), ("Celeb-synthesis", n_fake, "id{i}_id0_{i:04d}.mp4"),
               ("YouTube-real", n_youtube, "{i:05d}.mp4"))
    listed = []
    offset = 0
    for (folder, n, pattern), k in zip(folders, test):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_video(root / folder / pattern.format(i=i), mark=offset + i)
            if i < k:
                listed.append(f"{0 if folder == 'Celeb-synthesis' else 1} {folder}/{pattern.format(i=i)}")
        offset += n
    (root / CELEBDF_TEST_LIST).write_text("\n".join(listed) + "\n")
    return root


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """A small demo dataset cut into several shards and row groups, so the loader's partitioning is exercised."""
    from detector.data.demo import DemoConfig
    from detector.data.prepare import ImportOptions, prepare

    out = tmp_path_factory.mktemp("demo") / "data"
    prepare(out, demo=DemoConfig(image_size=16, train=53, val=12, test=10),
            options=ImportOptions(shard_rows=20, row_group_rows=6), workers=1, progress=False)
    return out
